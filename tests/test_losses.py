"""nll_loss, cross_entropy and their modules against PyTorch, one row per case: every
keyword (weight, ignore_index, reduction, label_smoothing) and their combinations, on
(N, C), unbatched (C,) and spatial (N, C, d1, ...) inputs, with class-index or
class-probability targets; forward and gradients, float32 and float64.
"""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from optest import check_op, gradcheck, mt_backend  # noqa: F401  (mt_backend: autouse fixture)

import minitorch_cnn as mt
import minitorch_cnn.nn as nn
import minitorch_cnn.nn.functional as F

CLASSES = 4
# input shape -> target shape, for class-index targets
LAYOUTS = {"batch": ((5, CLASSES), (5,)), "unbatched": ((CLASSES,), ()),
           "spatial1": ((2, CLASSES, 3), (2, 3)), "spatial2": ((2, CLASSES, 3, 2), (2, 3, 2)),
           "empty_batch": ((0, CLASSES), (0,))}
WEIGHT = np.array([0.5, 2.0, 1.0, 1.5])
DTYPES = {"float32": (np.float32, 1e-5), "float64": (np.float64, 1e-10)}


def _targets(shape, seed):
    """Class indices that include class 1 (the ignore_index of some rows) where there is room."""
    t = np.random.default_rng(seed).integers(0, CLASSES, size=shape).astype(np.int64)
    if t.size:
        t.flat[0] = 1
    return t


def _call(framework, name, x, t, weight, dtype, **options):
    module = TF if framework is torch else F
    if weight is not None:
        weight = torch.tensor(weight.astype(dtype)) if framework is torch else mt.tensor(weight.astype(dtype))
    return getattr(module, name)(x, t, weight=weight, **options)


def _index_cases():
    cases = []
    for name, layout, weighted, ignore, reduction in itertools.product(
            ["nll_loss", "cross_entropy"], LAYOUTS, [False, True], [-100, 1], ["mean", "sum", "none"]):
        smoothings = [0.0, 0.25] if name == "cross_entropy" else [0.0]
        for smoothing in smoothings:
            cases.append((name, layout, weighted, ignore, reduction, smoothing))
    return cases


INDEX_CASES = _index_cases()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, layout, weighted, ignore_index, reduction, label_smoothing", INDEX_CASES,
                         ids=["-".join(map(str, c)) for c in INDEX_CASES])
def test_class_index_targets(name, layout, weighted, ignore_index, reduction, label_smoothing, dtype):
    np_dtype, tol = DTYPES[dtype]
    x_shape, t_shape = LAYOUTS[layout]
    x = np.random.default_rng(0).uniform(-2, 2, size=x_shape).astype(np_dtype)
    t = _targets(t_shape, seed=1)
    weight = WEIGHT if weighted else None
    options = {"ignore_index": ignore_index, "reduction": reduction}
    if label_smoothing:
        options["label_smoothing"] = label_smoothing

    def fn(framework):
        return lambda a, b: _call(framework, name, a, b, weight, np_dtype, **options)

    check_op(None, fn(torch), fn(mt), inputs=[x, t], atol=tol, rtol=tol)


PROB_LAYOUTS = {"batch": (5, CLASSES), "unbatched": (CLASSES,), "spatial": (2, CLASSES, 3), "empty_batch": (0, CLASSES)}
PROB_CASES = list(itertools.product(PROB_LAYOUTS, [False, True], ["mean", "sum", "none"], [0.0, 0.3]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, weighted, reduction, label_smoothing", PROB_CASES,
                         ids=["-".join(map(str, c)) for c in PROB_CASES])
def test_class_probability_targets(layout, weighted, reduction, label_smoothing, dtype):
    """Soft targets of the input's shape; the target's gradient is compared too."""
    np_dtype, tol = DTYPES[dtype]
    shape = PROB_LAYOUTS[layout]
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, size=shape).astype(np_dtype)
    logits = rng.uniform(-1, 1, size=shape)
    class_dim = 0 if len(shape) == 1 else 1
    p = np.exp(logits) / np.exp(logits).sum(axis=class_dim, keepdims=True) if logits.size else logits
    weight = WEIGHT if weighted else None

    def fn(framework):
        return lambda a, b: _call(framework, "cross_entropy", a, b, weight, np_dtype, reduction=reduction,
                                  label_smoothing=label_smoothing)

    check_op(None, fn(torch), fn(mt), inputs=[x, p.astype(np_dtype)], atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("weighted", [False, True])
def test_every_target_ignored_gives_nan_mean_and_zero_gradient(name, weighted):
    x = np.random.default_rng(0).uniform(-1, 1, size=(3, CLASSES)).astype(np.float32)
    t = np.full(3, 2, np.int64)
    weight = WEIGHT if weighted else None
    m_out, _ = check_op(None, lambda a, b: _call(torch, name, a, b, weight, np.float32, ignore_index=2),
                        lambda a, b: _call(mt, name, a, b, weight, np.float32, ignore_index=2), inputs=[x, t])
    assert np.isnan(m_out.item())


def test_class_weights_and_ignore_index_combine_in_the_mean_as_pytorch():
    """The mean divides by the summed weights of the counted targets: (2*1 + 1.5*3) / (2 + 1.5)."""
    logp = np.log(np.full((3, CLASSES), 0.25, np.float32)) * 0 - np.arange(CLASSES, dtype=np.float32)
    t = np.array([1, 3, 0], np.int64)
    loss = F.nll_loss(mt.tensor(logp), mt.tensor(t), weight=mt.tensor(WEIGHT.astype(np.float32)), ignore_index=0)
    assert loss.item() == pytest.approx((2.0 * 1 + 1.5 * 3) / (2.0 + 1.5))


def test_cross_entropy_gradcheck_with_every_option():
    rng = np.random.default_rng(5)
    x, t = rng.uniform(-1, 1, size=(2, CLASSES, 3)), _targets((2, 3), seed=6)
    weight = mt.tensor(WEIGHT, dtype=np.float64)
    gradcheck(lambda a, b: F.cross_entropy(a, b, weight=weight, ignore_index=1, label_smoothing=0.2,
                                           reduction="none"), [x, t])
    p = rng.uniform(0, 1, size=(2, CLASSES, 3))
    gradcheck(lambda a, b: F.cross_entropy(a, b, weight=weight, label_smoothing=0.2), [x, p])


# ---- the modules ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["CrossEntropyLoss", "NLLLoss"])
@pytest.mark.parametrize("options", [{}, {"weight": WEIGHT}, {"ignore_index": 1, "reduction": "sum"},
                                     {"weight": WEIGHT, "ignore_index": 3, "reduction": "none"},
                                     {"label_smoothing": 0.1}, {"weight": WEIGHT, "label_smoothing": 0.2}])
def test_loss_modules_as_pytorch(kind, options):
    if kind == "NLLLoss" and "label_smoothing" in options:
        pytest.skip("NLLLoss has no label_smoothing (as in PyTorch)")

    def build(framework):
        opts = dict(options)
        if "weight" in opts:
            opts["weight"] = framework.tensor(WEIGHT.astype(np.float32))
        return getattr(framework.nn, kind)(**opts)

    m_loss, t_loss = build(mt), build(torch)
    x = np.random.default_rng(0).uniform(-2, 2, size=(2, CLASSES, 3)).astype(np.float32)
    t = _targets((2, 3), seed=2)
    check_op(None, lambda a, b: t_loss(input=a, target=b), lambda a, b: m_loss(input=a, target=b), inputs=[x, t])
    assert sorted(m_loss.state_dict()) == sorted(t_loss.state_dict())


def test_loss_module_weight_is_a_buffer_that_moves_and_loads():
    loss = nn.CrossEntropyLoss(weight=WEIGHT.astype(np.float32))
    assert isinstance(loss.weight, mt.Tensor)
    np.testing.assert_array_equal(loss.state_dict()["weight"], WEIGHT.astype(np.float32))
    loss.load_state_dict({"weight": np.ones(CLASSES, np.float32)})
    np.testing.assert_array_equal(loss.weight.numpy(), np.ones(CLASSES))


# ---- bad input: one clear error each --------------------------------------------------
X = np.zeros((2, CLASSES), np.float32)


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.nll_loss(mt.tensor(X), mt.tensor(np.array([0, CLASSES]))), IndexError, "out of bounds"),
    (lambda: F.cross_entropy(mt.tensor(X), mt.tensor(np.array([-1, 0]))), IndexError, "out of bounds"),
    (lambda: F.nll_loss(mt.tensor(X), mt.tensor(np.array([0, 1, 2]))), ValueError, "target of shape"),
    (lambda: F.nll_loss(mt.tensor(X), mt.tensor(np.array([0.0, 1.0]))), ValueError, "integer class indices"),
    (lambda: F.nll_loss(mt.tensor(X), mt.tensor(np.array([0, 1])), weight=mt.ones(3)), ValueError,
     "one value per class"),
    (lambda: F.nll_loss(mt.tensor(X), mt.tensor(np.array([0, 1])), reduction="avg"), ValueError, "reduction"),
    (lambda: F.nll_loss(mt.tensor(1.0), mt.tensor(np.int64(0))), ValueError, "1 or more dims"),
    (lambda: F.cross_entropy(mt.tensor(1.0), mt.tensor(np.int64(0))), ValueError, "1 or more dims"),
    (lambda: F.cross_entropy(mt.tensor(X), mt.tensor(np.array([0, 1])), label_smoothing=1.5), ValueError,
     "label_smoothing"),
    (lambda: F.cross_entropy(mt.tensor(X), mt.tensor(X), ignore_index=1), ValueError, "ignore_index"),
    (lambda: F.cross_entropy(mt.tensor(X), mt.tensor(X.astype(np.int64))), ValueError, "floating point"),
])
def test_bad_loss_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
        mt.get_backend().synchronize()  # a GPU checks targets on the device: raised at the sync


def test_ignore_index_target_out_of_range_is_allowed():
    loss = F.nll_loss(mt.tensor(X), mt.tensor(np.array([-100, 1])))
    assert loss.item() == 0.0


def test_unbatched_cross_entropy_from_the_issue():
    loss = F.cross_entropy(mt.tensor(np.zeros(3, np.float32)), mt.tensor(np.int64(1)))
    assert loss.shape == () and loss.item() == pytest.approx(np.log(3))


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
def test_functional_losses_take_pytorchs_keywords(name):
    x = np.random.default_rng(7).uniform(-1, 1, size=(3, CLASSES)).astype(np.float32)
    t = np.array([0, 3, 1], np.int64)
    check_op(None, lambda a, b: getattr(TF, name)(input=a, target=b, weight=torch.tensor(WEIGHT.astype(np.float32)),
                                                  ignore_index=3, reduction="sum"),
             lambda a, b: getattr(F, name)(input=a, target=b, weight=mt.tensor(WEIGHT.astype(np.float32)),
                                           ignore_index=3, reduction="sum"), inputs=[x, t])
