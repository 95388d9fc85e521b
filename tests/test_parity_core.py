"""The tensor ops, dense layers and softmax family against PyTorch beyond the happy path:
one row per case, forward and gradients, float32 and float64. 0-d and empty tensors,
negative dims, non-contiguous and broadcast inputs, every keyword.

A row is ``(id, shapes, torch_fn, mt_fn, options)``: ``mt_fn=None`` runs ``torch_fn`` on
the engine's tensors too (methods and operators share their names); ``options`` go to
``optest.check_op`` (``inputs=`` gives explicit arrays instead of random ones).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from optest import check_op, mt_backend  # noqa: F401  (mt_backend: autouse fixture)

import minitorch_cnn as mt
import minitorch_cnn.nn as nn
import minitorch_cnn.nn.functional as F

NAN, INF = float("nan"), float("inf")
TIES = [np.array([[1.0, 2.0, 3.0], [4.0, 2.0, 0.0]]), np.array([1.0, 5.0, 3.0])]


def MASK(x):
    """A (2, 3) boolean mask, as the framework of ``x`` takes it."""
    mask = np.array([[True, False, True], [False, False, True]])
    return torch.tensor(mask) if isinstance(x, torch.Tensor) else mt.tensor(mask)


REDUCTIONS = [
    ("sum_all", [(2, 3, 4)], lambda x: x.sum(), None, {}),
    ("sum_neg_dim", [(2, 3, 4)], lambda x: x.sum(-1), None, {}),
    ("sum_dims_keepdim", [(2, 3, 4)], lambda x: x.sum((0, -1), keepdim=True), None, {}),
    ("sum_list_of_dims", [(2, 3, 4)], lambda x: x.sum([2, 0]), None, {}),
    ("sum_no_dims_is_all", [(2, 3)], lambda x: x.sum(dim=[]), None, {}),
    ("mean_no_dims_is_all", [(2, 3)], lambda x: x.mean(dim=()), None, {}),
    ("sum_0d", [()], lambda x: x.sum(), None, {}),
    ("sum_0d_neg_dim", [()], lambda x: x.sum(-1), None, {}),
    ("sum_0d_dim_keepdim", [()], lambda x: x.sum(0, keepdim=True), None, {}),
    ("sum_empty", [(0, 3)], lambda x: x.sum(0), None, {}),
    ("sum_empty_all", [(0, 3)], lambda x: x.sum(), None, {}),
    ("sum_non_contiguous", [(3, 4)], lambda x: x.T.sum(1), None, {}),
    ("mean_all", [(2, 3, 4)], lambda x: x.mean(), None, {}),
    ("mean_neg_dim_keepdim", [(2, 3, 4)], lambda x: x.mean(-2, keepdim=True), None, {}),
    ("mean_dims", [(2, 3, 4)], lambda x: x.mean((0, 2)), None, {}),
    ("mean_0d_dim", [()], lambda x: x.mean(0), None, {}),
    ("mean_0d_neg_dim", [()], lambda x: x.mean(-1), None, {}),
    ("mean_empty_batch", [(0, 3)], lambda x: x.mean(1), None, {}),
    ("mean_over_empty_dim", [(3, 0)], lambda x: x.mean(1), None, {}),
    ("mean_empty_all", [(0, 3)], lambda x: x.mean(), None, {}),
    ("max_all", [(3, 4)], lambda x: x.max(), None, {}),
    ("max_dim", [(3, 4)], lambda x: x.max(1), None, {}),
    ("max_neg_dim_keepdim", [(2, 3, 4)], lambda x: x.max(-2, keepdim=True), None, {}),
    ("max_0d", [()], lambda x: x.max(), None, {}),
    ("max_0d_dim_keepdim", [()], lambda x: x.max(0, True), None, {}),
    ("max_0d_neg_dim", [()], lambda x: x.max(-1), None, {}),
    ("max_empty_batch", [(0, 3)], lambda x: x.max(1), None, {}),
    ("max_ties_all", None, lambda x: x.max(), None, {"inputs": TIES[:1]}),
    ("max_ties_dim", None, lambda x: x.max(0), None, {"inputs": TIES[:1]}),
    ("min_all", [(3, 4)], lambda x: x.min(), None, {}),
    ("min_dim_keepdim", [(3, 4)], lambda x: x.min(0, keepdim=True), None, {}),
    ("min_0d_dim", [()], lambda x: x.min(0), None, {}),
    ("min_ties_dim", None, lambda x: x.min(1), None, {"inputs": TIES[:1]}),
    ("max_non_contiguous", [(3, 4)], lambda x: x.T.max(0), None, {}),
    ("argmax_all", [(3, 4)], lambda x: x.argmax(), None, {"grad": False}),
    ("argmax_neg_dim_keepdim", [(2, 3, 4)], lambda x: x.argmax(-1, keepdim=True), None, {"grad": False}),
    ("argmax_0d_keepdim", [()], lambda x: x.argmax(0, keepdim=True), None, {"grad": False}),
    ("argmin_dim", [(3, 4)], lambda x: x.argmin(0), None, {"grad": False}),
    ("argmin_0d", [()], lambda x: x.argmin(-1), None, {"grad": False}),
]

ELEMENTWISE = [
    ("maximum", [(2, 3), (2, 3)], torch.maximum, mt.maximum, {}),
    ("maximum_broadcast", [(2, 1, 3), (4, 1)], torch.maximum, mt.maximum, {}),
    ("maximum_ties", None, torch.maximum, mt.maximum, {"inputs": TIES}),
    ("maximum_nan", None, torch.maximum, mt.maximum,
     {"inputs": [np.array([NAN, 1.0, 2.0, NAN]), np.array([0.0, NAN, 1.0, NAN])]}),
    ("minimum", [(2, 3), (3,)], torch.minimum, mt.minimum, {}),
    ("minimum_ties", None, torch.minimum, mt.minimum, {"inputs": TIES}),
    ("minimum_0d", [(), (3,)], torch.minimum, mt.minimum, {}),
    ("method_max_of_tensor", [(2, 3), (3,)], lambda a, b: a.max(b), None, {}),
    ("method_min_of_tensor", None, lambda a, b: a.min(b), None, {"inputs": TIES}),
    ("method_maximum", [(4,), (4,)], lambda a, b: a.maximum(b), None, {}),
    ("add_broadcast_non_contiguous", [(4, 3), (4,)], lambda a, b: a.T + b, None, {}),
    ("sub_scalar_left", [(3,)], lambda x: 1 - x, None, {}),
    ("mul_0d", [(), (2, 3)], lambda a, b: a * b, None, {}),
    ("div_broadcast", [(2, 3), (3,)], lambda a, b: a / b, None, {"low": [-2, 0.5], "high": [2, 2]}),
    ("neg_empty", [(0, 2)], lambda x: -x, None, {}),
    ("exp_0d", [()], lambda x: x.exp(), None, {}),
    ("log", [(3, 4)], lambda x: x.log(), None, {"low": 0.1}),
    ("pow_scalar_exponent", [(3, 4)], lambda x: x ** 2, None, {}),
    ("pow_scalar_exponent_zero", [(3,)], lambda x: x ** 0, None, {}),
    ("pow_tensor_exponent", [(3, 4), (4,)], lambda a, b: a ** b, None, {"low": [0.5, -1], "high": [2, 2]}),
    ("pow_base_zero", None, lambda a, b: a ** b, None,
     {"inputs": [np.array([0.0, 0.0, 0.0, 1.5, 2.0]), np.array([2.0, 0.0, 0.5, 0.0, 3.0])]}),
    ("rpow", [(3,)], lambda x: 2.0 ** x, None, {}),
    ("rpow_zero_base", [(4,)], lambda x: 0.0 ** x, None, {"low": 0.0}),
    ("getitem_neg_step", [(3, 4)], lambda x: x[-1, ::2], None, {}),
    ("masked_fill", [(2, 3)], lambda x: x.masked_fill(MASK(x), 5.0), None, {}),
    ("masked_fill_broadcast_row", [(2, 3)], lambda x: x.masked_fill(MASK(x)[0], -1.0), None, {}),
    ("masked_fill_inf_gradient", [(3,)], lambda x: (x.masked_fill(MASK(x)[0], 0.0) / 0.0).sum(), None, {}),
]

SHAPES = [
    ("permute_neg_dims", [(1, 2, 3, 4)], lambda x: x.permute(0, -2, -1, 1), None, {}),
    ("permute_tuple", [(2, 3, 4)], lambda x: x.permute((2, 0, 1)), None, {}),
    ("permute_0d", [()], lambda x: x.permute(()), None, {}),
    ("transpose_neg", [(2, 3, 4)], lambda x: x.transpose(-1, 0), None, {}),
    ("transpose_same_dim", [(2, 3)], lambda x: x.transpose(1, -1), None, {}),
    ("transpose_0d", [()], lambda x: x.transpose(0, 0), None, {}),
    ("transpose_0d_neg", [()], lambda x: x.transpose(-1, 0), None, {}),
    ("T", [(3, 4)], lambda x: x.T, None, {}),
    ("flatten_0d", [()], lambda x: x.flatten(), None, {}),
    ("flatten_empty_batch", [(0, 3, 4, 5)], lambda x: x.flatten(1), None, {}),
    ("flatten_empty_all", [(0, 3, 4, 5)], lambda x: x.flatten(), None, {}),
    ("flatten_middle", [(2, 3, 4, 5)], lambda x: x.flatten(1, -2), None, {}),
    ("flatten_neg_start", [(2, 3, 4)], lambda x: x.flatten(-2), None, {}),
    ("flatten_one_dim", [(2, 3, 4)], lambda x: x.flatten(1, 1), None, {}),
    ("flatten_non_contiguous", [(3, 4, 2)], lambda x: x.transpose(0, 2).flatten(), None, {}),
    ("reshape_empty", [(0, 3)], lambda x: x.reshape(3, 0), None, {}),
    ("view_inferred", [(2, 3, 4)], lambda x: x.view(-1, 4), None, {}),
    ("matmul_vector_vector", [(5,), (5,)], lambda a, b: a @ b, None, {}),
    ("matmul_vector_matrix", [(4,), (4, 3)], lambda a, b: a @ b, None, {}),
    ("matmul_matrix_vector", [(3, 4), (4,)], lambda a, b: a @ b, None, {}),
    ("matmul_vector_batch", [(4,), (2, 4, 3)], lambda a, b: a @ b, None, {}),
    ("matmul_batch_vector", [(2, 3, 4), (4,)], lambda a, b: a @ b, None, {}),
    ("matmul_broadcast_batches", [(2, 1, 3, 4), (5, 4, 2)], lambda a, b: a @ b, None, {}),
    ("matmul_empty_depth", [(3, 0), (0, 2)], lambda a, b: a @ b, None, {}),
    ("matmul_non_contiguous", [(4, 3), (2, 4)], lambda a, b: a.T @ b.T, None, {}),
]

LAYERS = [
    ("linear", [(3, 4), (5, 4), (5,)], TF.linear, F.linear, {}),
    ("linear_no_bias", [(3, 4), (5, 4)], TF.linear, F.linear, {}),
    ("linear_unbatched", [(4,), (5, 4), (5,)], TF.linear, F.linear, {}),
    ("linear_3d", [(2, 3, 4), (5, 4), (5,)], TF.linear, F.linear, {}),
    ("linear_zero_in_features", [(3, 0), (5, 0), (5,)], TF.linear, F.linear, {}),
    ("linear_empty_batch", [(0, 4), (5, 4), (5,)], TF.linear, F.linear, {}),
    ("linear_non_contiguous", [(4, 3), (5, 4)], lambda x, w: TF.linear(x.T, w),
     lambda x, w: F.linear(x.T, w), {}),
    ("linear_keywords", [(3, 4), (5, 4), (5,)], lambda x, w, b: TF.linear(input=x, weight=w, bias=b),
     lambda x, w, b: F.linear(input=x, weight=w, bias=b), {}),
    ("relu", [(2, 3, 4)], TF.relu, F.relu, {}),
    ("relu_0d", [()], TF.relu, F.relu, {}),
    ("relu_empty", [(0, 3)], TF.relu, F.relu, {}),
    ("relu_method_non_contiguous", [(3, 4)], lambda x: x.T.relu(), None, {}),
    ("relu_keyword", [(5,)], lambda x: TF.relu(input=x), lambda x: F.relu(input=x), {}),
    ("dropout_eval", [(3, 4)], lambda x: TF.dropout(input=x, p=0.3, training=False),
     lambda x: F.dropout(input=x, p=0.3, training=False), {}),
]


def _softmax_cases():
    cases = []
    for name in ("softmax", "log_softmax"):
        tf, mf = getattr(TF, name), getattr(F, name)
        for shape, dim in [((3, 5), 1), ((2, 3, 4), -1), ((2, 3, 4), 0), ((4,), 0), ((), 0), ((), -1),
                           ((5, 0, 0), 1), ((0, 3), 1), ((3, 0), 0)]:
            cases.append((f"{name}_{shape}_dim{dim}", [shape], lambda x, tf=tf, d=dim: tf(x, d),
                          lambda x, mf=mf, d=dim: mf(x, d), {}))
        cases += [
            (f"{name}_non_contiguous", [(4, 3)], lambda x, tf=tf: tf(x.T, dim=1),
             lambda x, mf=mf: mf(x.T, dim=1), {}),
            (f"{name}_keywords", [(3, 4)], lambda x, tf=tf: tf(input=x, dim=-1),
             lambda x, mf=mf: mf(input=x, dim=-1), {}),
            (f"{name}_huge_logits", None, lambda x, tf=tf: tf(x, 1), lambda x, mf=mf: mf(x, 1),
             {"inputs": [np.array([[1e4, -1e4, 0.0], [3e4, 3e4, -3e4]])]}),
        ]
    return cases


ALL = REDUCTIONS + ELEMENTWISE + SHAPES + LAYERS + _softmax_cases()
DTYPES = {"float32": (np.float32, 1e-5), "float64": (np.float64, 1e-10)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALL, ids=[c[0] for c in ALL])
def test_op_against_pytorch(case, dtype):
    _, shapes, torch_fn, mt_fn, options = case
    np_dtype, tol = DTYPES[dtype]
    options = dict(options)
    if "inputs" in options:
        options["inputs"] = [np.asarray(a, dtype=np_dtype) for a in options["inputs"]]
    check_op(shapes, torch_fn, mt_fn, dtype=np_dtype, atol=tol, rtol=tol, **options)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [1, -1])
def test_softmax_dtype_keyword(name, dim):
    """dtype= casts the input first: a float64 result, the gradient back in float32."""
    check_op([(3, 4)], lambda x: getattr(TF, name)(x, dim, dtype=torch.float64),
             lambda x: getattr(F, name)(x, dim, dtype=np.float64), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 3, 4), (2, 3, 4, 5)])
def test_softmax_implicit_dim_as_pytorch(name, shape):
    """dim=None: PyTorch's legacy choice (0 for 0-, 1- and 3-D inputs, else 1), with its warning."""
    with pytest.warns(UserWarning, match="Implicit dimension"):
        check_op([shape], lambda x: getattr(TF, name)(x), lambda x: getattr(F, name)(x))


def test_softmax_modules_take_input_keyword():
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    for mt_cls, torch_cls in [(nn.LogSoftmax, torch.nn.LogSoftmax), (nn.Softmax, torch.nn.Softmax)]:
        np.testing.assert_allclose(mt_cls(dim=1)(input=mt.tensor(x)).numpy(),
                                   torch_cls(dim=1)(input=torch.tensor(x)).numpy(), rtol=1e-6)


def test_linear_module_takes_input_keyword():
    layer = nn.Linear(4, 3)
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(layer(input=mt.tensor(x)).numpy(), twin(input=torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nn.ReLU()(input=mt.tensor(x)).numpy(), np.maximum(x, 0))
    assert nn.Dropout(0.5).eval()(input=mt.tensor(x)).shape == (2, 4)


# ---- defects of issue 16, each with its reproducer ------------------------------------
def test_permute_negative_dims_gradient_is_pytorchs():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    g = np.ones((1, 3, 4, 2), np.float32) * np.arange(2, dtype=np.float32)
    m = mt.tensor(x, requires_grad=True)
    m.permute(0, -2, -1, 1).backward(mt.tensor(g))
    t = torch.tensor(x, requires_grad=True)
    t.permute(0, -2, -1, 1).backward(torch.tensor(g))
    np.testing.assert_array_equal(m.grad.numpy(), t.grad.numpy())


def test_vector_dot_vector_backward():
    a = mt.tensor(np.ones(20, np.float32), requires_grad=True)
    (a @ a).backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.full(20, 2.0, np.float32))


def test_0d_reductions_and_shapes():
    s = mt.tensor(3.0, requires_grad=True)
    s.sum(-1).backward()
    assert s.grad.item() == 1.0
    assert s.mean(0).item() == 3.0 and s.flatten().shape == (1,) and s.transpose(0, 0).shape == ()
    assert s.argmax(0, keepdim=True).shape == ()
    values, indices = s.max(0, True)
    assert values.shape == () and indices.shape == () and indices.item() == 0


def test_max_min_return_values_and_indices_by_name():
    x = mt.tensor([[1.0, 5.0], [7.0, 2.0]])
    assert x.max(1).values.tolist() == [5.0, 7.0] and x.max(1).indices.tolist() == [1, 0]
    assert x.min(0).values.tolist() == [1.0, 2.0] and x.min(0).indices.tolist() == [0, 1]


def test_elementwise_max_of_a_tensor():
    a, b = mt.tensor([1.0, 5.0]), mt.tensor([3.0, 2.0])
    assert a.max(b).tolist() == [3.0, 5.0] and a.min(b).tolist() == [1.0, 2.0]
    assert mt.maximum(a, b).tolist() == [3.0, 5.0] and mt.minimum(a, b).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("call", [lambda s: s.sum(1), lambda s: s.mean(-2), lambda s: s.flatten(0, 1),
                                  lambda s: s.transpose(0, 1), lambda s: s.argmax(2), lambda s: s.max(1)])
def test_0d_dims_out_of_range_raise_as_pytorch(call):
    with pytest.raises(IndexError, match="Dimension out of range"):
        call(mt.tensor(3.0))
    with pytest.raises(IndexError, match="Dimension out of range"):
        call(torch.tensor(3.0))


@pytest.mark.parametrize("call, error", [
    (lambda x: x.max(), RuntimeError),       # no identity: PyTorch wants a dim
    (lambda x: x.max(0), IndexError),        # the reduced dim is empty
    (lambda x: x.min(0), IndexError),
])
def test_extreme_of_nothing_raises_a_clear_error(call, error):
    with pytest.raises(error, match="empty"):
        call(mt.zeros(0, 3))


def test_sum_with_a_repeated_dim_raises():
    with pytest.raises(RuntimeError, match="more than once"):
        mt.zeros(2, 3).sum((1, -1))


def test_flatten_start_after_end_raises():
    with pytest.raises(ValueError, match="start_dim"):
        mt.zeros(2, 3, 4).flatten(2, 1)


def test_matmul_of_a_0d_operand_raises():
    with pytest.raises(RuntimeError, match="at least 1 dim"):
        mt.tensor(2.0) @ mt.zeros(3)


def test_pow_gradient_at_base_zero_is_pytorchs_zero():
    base, exponent = np.array([0.0, 0.0, 2.0], np.float32), np.array([2.0, 0.0, 0.0], np.float32)
    m = [mt.tensor(base, requires_grad=True), mt.tensor(exponent, requires_grad=True)]
    (m[0] ** m[1]).sum().backward()
    np.testing.assert_array_equal(m[0].grad.numpy(), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(m[1].grad.numpy(), [0.0, 0.0, np.log(2.0, dtype=np.float32)])


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4, 4)])
def test_relu_gradient_passes_through_nan_as_pytorch(shape):
    x = np.random.default_rng(0).uniform(-1, 1, size=shape).astype(np.float32)
    x.flat[::3] = NAN
    x.flat[1::5] = 0.0
    check_op(None, TF.relu, F.relu, inputs=[x])
    check_op(None, lambda t: t.relu(), inputs=[x])


def test_relu_of_nan_is_nan():
    assert np.isnan(F.relu(mt.tensor([NAN])).numpy()).all()


@pytest.mark.parametrize("data", [["a", "b"], np.array(["x"]), np.array([None, 1.0], dtype=object), "text"])
def test_tensor_of_strings_or_objects_raises_type_error(data):
    with pytest.raises(TypeError, match="only numbers and booleans"):
        mt.tensor(data)


@pytest.mark.parametrize("momentum", [None, 0.3])
def test_batch_norm_momentum_none_is_the_cumulative_average(momentum):
    mine, twin = nn.BatchNorm2d(3, momentum=momentum), torch.nn.BatchNorm2d(3, momentum=momentum)
    rng = np.random.default_rng(4)
    for step in range(4):
        x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32) * (step + 1) + step
        mine(mt.tensor(x))
        twin(torch.tensor(x))
    for key, value in twin.state_dict().items():
        np.testing.assert_allclose(mine.state_dict()[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    mine.eval(), twin.eval()
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(mine(mt.tensor(x)).numpy(), twin(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
