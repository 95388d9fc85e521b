"""nn.functional ops and Tensor operators: forward and gradients against PyTorch.

Tolerances (float32): atol=1e-4, rtol=1e-4 unless stated; conv2d (sums of up to
C_in*kH*kW terms forward, N*H_out*W_out terms for the weight gradient) uses
atol=1e-3, rtol=1e-4.  float64 cases use atol=1e-10, rtol=1e-10.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from optest import assert_close, check_op, mt_backend, to_numpy  # noqa: E402,F401  (mt_backend: autouse fixture)

import minitorch_cnn as mt  # noqa: E402
import minitorch_cnn.nn.functional as F  # noqa: E402


# --------------------------------------------------------------------------- conv2d
# (N, C_in, H, W, C_out, kernel, stride, padding, bias)
CONV_CASES = [
    (1, 1, 7, 5, 1, 1, 1, 0, True),
    (1, 1, 7, 5, 3, 2, 1, 0, False),
    (3, 1, 9, 9, 2, 3, 1, 1, True),
    (1, 3, 7, 5, 4, 3, 2, 0, True),
    (3, 3, 9, 9, 1, 4, 2, 2, True),
    (1, 2, 9, 9, 3, 5, 1, 2, False),
    (2, 4, 9, 9, 3, 1, 2, 0, False),
    (2, 3, 5, 5, 2, 5, 1, 0, True),            # kernel == input: 1x1 output
    (1, 2, 7, 5, 3, 3, 3, 2, True),            # stride 3, rows/cols left over
    (2, 3, 8, 6, 6, 2, 2, 1, True),            # even sizes
    (1, 1, 7, 7, 2, 2, 2, 0, True),            # last row/col unused: their gradient must be 0
    (3, 2, 7, 5, 3, (3, 2), 1, 0, True),       # non-square kernel
    (1, 2, 9, 9, 2, (3, 2), (2, 1), (1, 0), True),
    (3, 1, 7, 5, 2, 3, (1, 2), (0, 1), False),
    (1, 3, 7, 5, 5, (2, 4), 2, (2, 1), True),
    (1, 1, 28, 28, 8, 3, 2, 1, True),
    (3, 3, 28, 28, 4, 5, 1, 2, True),
]


def _conv_id(c):
    return "N{}_Cin{}_{}x{}_Cout{}_k{}_s{}_p{}_{}".format(*c[:8], "bias" if c[8] else "nobias").replace(" ", "")


@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_id)
def test_conv2d(case):
    n, cin, h, w, cout, k, s, p, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    shapes = [(n, cin, h, w), (cout, cin, kh, kw)] + ([(cout,)] if bias else [])
    check_op(shapes,
             lambda x, wt, *b: TF.conv2d(x, wt, b[0] if b else None, stride=s, padding=p),
             lambda x, wt, *b: F.conv2d(x, wt, b[0] if b else None, stride=s, padding=p),
             low=-1, high=1, atol=1e-3, rtol=1e-4)


def test_conv2d_bias_keyword_and_positional_stride_padding():
    check_op([(2, 2, 7, 5), (3, 2, 3, 3), (3,)],
             lambda x, w, b: TF.conv2d(x, w, bias=b, stride=(2, 1), padding=1),
             lambda x, w, b: F.conv2d(x, w, bias=b, stride=(2, 1), padding=1), low=-1, high=1, atol=1e-3)
    check_op([(2, 2, 7, 5), (3, 2, 3, 3), (3,)],
             lambda x, w, b: TF.conv2d(x, w, b, 2, 1),
             lambda x, w, b: F.conv2d(x, w, b, 2, 1), low=-1, high=1, atol=1e-3)


def test_conv2d_float64_stays_float64():
    check_op([(2, 3, 7, 5), (4, 3, 3, 2), (4,)],
             lambda x, w, b: TF.conv2d(x, w, b, stride=(1, 2), padding=(2, 1)),
             lambda x, w, b: F.conv2d(x, w, b, stride=(1, 2), padding=(2, 1)),
             dtype=np.float64, atol=1e-10, rtol=1e-10)


def test_conv2d_only_weight_requires_grad():
    # input without requires_grad (a data batch): only the weight/bias get gradients
    check_op([(3, 1, 9, 9), (2, 1, 3, 3), (2,)],
             lambda x, w, b: TF.conv2d(x, w, b, padding=1),
             lambda x, w, b: F.conv2d(x, w, b, padding=1),
             requires_grad=[False, True, True], atol=1e-3)


@pytest.mark.parametrize("requires_grad", [[True, False, True], [False, True, False]],
                         ids=["frozen_weight", "frozen_bias"])
def test_conv2d_weight_or_bias_frozen(requires_grad):
    # the bias gradient without the weight's, and the weight's without the bias's
    check_op([(3, 2, 9, 9), (4, 2, 3, 3), (4,)],
             lambda x, w, b: TF.conv2d(x, w, b, padding=1),
             lambda x, w, b: F.conv2d(x, w, b, padding=1),
             requires_grad=requires_grad, atol=1e-3)


# --------------------------------------------------------------------------- pooling
POOL_SHAPES = [(1, 1, 7, 5), (3, 2, 9, 9)]
POOL_GRID = [(shape, k, s, p) for shape in POOL_SHAPES for k in (2, 3) for s in (None, 1, 2) for p in (0, 1)]
POOL_EXTRA = [((2, 3, 9, 7), (3, 2), (2, 1), (1, 0)),
              ((2, 1, 8, 8), 2, (1, 2), (0, 1)),
              ((2, 3, 28, 28), 2, None, 0),
              ((1, 2, 28, 28), 3, 2, 1)]


def _pool_id(c):
    shape, k, s, p = c
    return f"{'x'.join(map(str, shape))}_k{k}_s{s}_p{p}".replace(" ", "")


@pytest.mark.parametrize("case", POOL_GRID + POOL_EXTRA, ids=_pool_id)
def test_max_pool2d(case):
    shape, k, s, p = case
    check_op([shape], lambda x: TF.max_pool2d(x, k, stride=s, padding=p),
             lambda x: F.max_pool2d(x, k, stride=s, padding=p))


@pytest.mark.parametrize("case", POOL_GRID + POOL_EXTRA, ids=_pool_id)
def test_avg_pool2d(case):
    shape, k, s, p = case
    # PyTorch's defaults: count_include_pad=True (padded zeros count in the divisor), floor mode
    check_op([shape], lambda x: TF.avg_pool2d(x, k, stride=s, padding=p),
             lambda x: F.avg_pool2d(x, k, stride=s, padding=p))


@pytest.mark.parametrize("k,s", [(2, 2), (2, 1), (3, 1), (3, 2)])
def test_max_pool2d_ties_gradient_goes_to_first_maximum(k, s):
    # many zeros and repeated small integers: ties in nearly every window
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 3, size=(2, 2, 8, 7)) * (rng.random((2, 2, 8, 7)) < 0.3)).astype(np.float32)
    x[0, 0] = 0.0  # a whole channel of zeros
    check_op(None, lambda t: TF.max_pool2d(t, k, stride=s), lambda t: F.max_pool2d(t, k, stride=s), inputs=[x])


def test_max_pool2d_tie_by_hand():
    x = mt.tensor(np.zeros((1, 1, 2, 2), np.float32), requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [[[[1, 0], [0, 0]]]])
    x = mt.tensor(np.array([[[[0, 5, 1], [5, 5, 0], [0, 0, 5]]]], np.float32), requires_grad=True)
    F.max_pool2d(x, 2, stride=1).sum().backward()   # 4 overlapping windows, first max of each
    np.testing.assert_array_equal(to_numpy(x.grad), [[[[0, 2, 0], [1, 1, 0], [0, 0, 0]]]])


@pytest.mark.parametrize("k,s,p", [(2, 2, 1), (3, 1, 1), (3, 2, 1), (2, 1, 1)])
def test_max_pool2d_padding_is_minus_infinity(k, s, p):
    check_op([(2, 2, 7, 5)], lambda x: TF.max_pool2d(x, k, stride=s, padding=p),
             lambda x: F.max_pool2d(x, k, stride=s, padding=p), low=-3.0, high=-1.0)


def test_max_pool2d_padding_by_hand():
    x = mt.tensor(-np.ones((1, 1, 2, 2), np.float32))
    out = to_numpy(F.max_pool2d(x, 2, stride=2, padding=1))
    np.testing.assert_array_equal(out, -np.ones((1, 1, 2, 2)))  # not 0 from the padding


def test_avg_pool2d_padding_counts_in_divisor_by_hand():
    x = mt.tensor(np.ones((1, 1, 2, 2), np.float32))
    out = to_numpy(F.avg_pool2d(x, 2, stride=2, padding=1))
    np.testing.assert_allclose(out, np.full((1, 1, 2, 2), 0.25))


# --------------------------------------------------------------------------- linear, relu
@pytest.mark.parametrize("n,fin,fout,bias", [(1, 5, 3, True), (1, 1, 1, True), (4, 7, 2, False),
                                             (8, 16, 10, True), (1, 12, 4, False)])
def test_linear(n, fin, fout, bias):
    shapes = [(n, fin), (fout, fin)] + ([(fout,)] if bias else [])
    check_op(shapes, lambda x, w, *b: TF.linear(x, w, b[0] if b else None),
             lambda x, w, *b: F.linear(x, w, b[0] if b else None))


def test_linear_bias_keyword():
    check_op([(3, 4), (2, 4), (2,)], lambda x, w, b: TF.linear(x, w, bias=b), lambda x, w, b: F.linear(x, w, bias=b))


def test_linear_3d_input():
    check_op([(2, 3, 4), (5, 4), (5,)], TF.linear, F.linear)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 5)])
def test_relu(shape):
    rng = np.random.default_rng(0)
    x = (rng.integers(-2, 3, size=shape) * 0.5).astype(np.float32)  # many exact zeros: d/dx relu(0) = 0
    x.flat[0] = 0.0
    check_op(None, TF.relu, F.relu, inputs=[x])


def test_relu_of_a_conv_output_a_scalar_and_nan():
    """ReLU compares against zeros along the input's innermost axis in memory: batch-
    innermost conv outputs, 0-d tensors and NaN (which propagates, as in PyTorch)."""
    check_op([(5, 2, 6, 7), (3, 2, 3, 3)], lambda x, w: TF.relu(TF.conv2d(x, w)),
             lambda x, w: F.relu(F.conv2d(x, w)), low=-1, high=1, atol=1e-4)
    x = np.array([np.nan, -1.0, 0.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(to_numpy(F.relu(mt.tensor(x))), TF.relu(torch.tensor(x)).numpy())
    for value in (-3.0, 0.0, 4.5):
        assert float(to_numpy(F.relu(mt.tensor(np.float32(value))))) == max(value, 0.0)


# --------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("fn", ["dropout", "dropout2d"])
def test_dropout_identity_cases(fn):
    tfn, mfn = getattr(TF, fn), getattr(F, fn)
    for p, training in [(0.0, True), (0.5, False), (0.9, False)]:
        check_op([(4, 3, 5, 5)], lambda x: tfn(x, p=p, training=training), lambda x: mfn(x, p=p, training=training),
                 atol=0, rtol=0)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_training_statistics_and_gradient(p):
    mt.manual_seed(0)   # deterministic; the bounds hold with a wide margin for any seed
    rng = np.random.default_rng(0)
    xn = rng.uniform(0.5, 1.5, size=(200, 500)).astype(np.float32)   # no zeros in the input
    x = mt.tensor(xn, requires_grad=True)
    out = F.dropout(x, p=p, training=True)
    o = to_numpy(out)
    assert o.shape == xn.shape and o.dtype == np.float32
    zero = o == 0
    assert abs(zero.mean() - p) < 0.01, f"zeroed fraction {zero.mean():.4f}, expected {p}"
    np.testing.assert_allclose(o[~zero], xn[~zero] / (1 - p), rtol=1e-6)
    w = rng.standard_normal(xn.shape).astype(np.float32)
    (out * mt.tensor(w)).sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), np.where(zero, 0.0, w / (1 - p)), rtol=1e-6, atol=1e-7)


def test_dropout_default_p_is_half_and_masks_differ_between_calls():
    mt.manual_seed(0)   # deterministic; the bounds hold with a wide margin for any seed
    x = mt.ones(100, 100)
    a, b = to_numpy(F.dropout(x)), to_numpy(F.dropout(x))
    assert abs((a == 0).mean() - 0.5) < 0.03
    np.testing.assert_allclose(a[a != 0], 2.0)
    assert not np.array_equal(a, b), "two dropout calls drew the same mask"


def test_dropout_p_one_gives_zeros():
    mt.manual_seed(0)   # deterministic; the bounds hold with a wide margin for any seed
    x = mt.tensor(np.ones((10, 10), np.float32), requires_grad=True)
    out = F.dropout(x, p=1.0, training=True)
    np.testing.assert_array_equal(to_numpy(out), np.zeros((10, 10)))   # PyTorch: zeros, no NaN
    out.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), np.zeros((10, 10)))


def test_dropout_reproducible_with_manual_seed():
    x = mt.ones(50, 50)
    mt.manual_seed(123)
    a = to_numpy(F.dropout(x, 0.5))
    mt.manual_seed(123)
    b = to_numpy(F.dropout(x, 0.5))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("p", [0.3, 0.6])
def test_dropout2d_zeroes_whole_channels(p):
    mt.manual_seed(0)   # deterministic; the bounds hold with a wide margin for any seed
    rng = np.random.default_rng(0)
    xn = rng.uniform(0.5, 1.5, size=(40, 50, 3, 4)).astype(np.float32)
    x = mt.tensor(xn, requires_grad=True)
    out = F.dropout2d(x, p=p, training=True)
    o = to_numpy(out)
    assert o.shape == xn.shape
    zero = o == 0
    per_channel = zero.reshape(40, 50, -1)
    assert np.all(per_channel.all(-1) | ~per_channel.any(-1)), "a channel is only partly zeroed"
    dropped = per_channel.all(-1)
    assert abs(dropped.mean() - p) < 0.05, f"dropped channel fraction {dropped.mean():.3f}, expected {p}"
    np.testing.assert_allclose(o[~zero], xn[~zero] / (1 - p), rtol=1e-6)
    w = rng.standard_normal(xn.shape).astype(np.float32)
    (out * mt.tensor(w)).sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), np.where(zero, 0.0, w / (1 - p)), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- batch_norm
def _bn_buffers(c, seed=5):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, c).astype(np.float32), rng.uniform(0.5, 2.0, c).astype(np.float32)


def _bn_twins(shape, affine, **options):
    """Input shapes for check_op, the initial running buffers, each framework's copy of
    them, and batch_norm in each framework with ``options`` (training, momentum, eps)."""
    c = shape[1]
    rm0, rv0 = _bn_buffers(c)
    t_rm, t_rv = torch.tensor(rm0), torch.tensor(rv0)
    m_rm, m_rv = mt.tensor(rm0.copy()), mt.tensor(rv0.copy())

    def tfn(x, *wb):
        w, b = wb if wb else (None, None)
        return TF.batch_norm(x, t_rm, t_rv, w, b, **options)

    def mfn(x, *wb):
        w, b = wb if wb else (None, None)
        return F.batch_norm(x, m_rm, m_rv, w, b, **options)

    shapes = [shape] + ([(c,), (c,)] if affine else [])
    return shapes, (rm0, rv0), (t_rm, t_rv), (m_rm, m_rv), tfn, mfn


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (8, 4), (1, 2, 3, 3)], ids=["4d", "2d", "4d_batch1"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("momentum,eps", [(0.1, 1e-5), (0.3, 1e-3)])
def test_batch_norm_training(shape, affine, momentum, eps):
    shapes, _, (t_rm, t_rv), (m_rm, m_rv), tfn, mfn = _bn_twins(
        shape, affine, training=True, momentum=momentum, eps=eps)
    check_op(shapes, tfn, mfn, low=[-2, 0.5, -1] if affine else -2, high=[3, 1.5, 1] if affine else 3,
             atol=1e-4, rtol=1e-4, grad_atol=2e-4)
    assert_close(m_rm, t_rm, atol=1e-5, rtol=1e-5, what="running_mean")
    assert_close(m_rv, t_rv, atol=1e-5, rtol=1e-5, what="running_var")


def test_batch_norm_running_var_is_unbiased_by_hand():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)
    rm, rv = mt.zeros(2), mt.ones(2)
    F.batch_norm(mt.tensor(x), rm, rv, None, None, True)
    xs = x.transpose(1, 0, 2, 3).reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(to_numpy(rm), 0.1 * xs.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(rv), 0.9 + 0.1 * xs.var(1, ddof=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (8, 4)], ids=["4d", "2d"])
@pytest.mark.parametrize("affine,requires_grad", [
    (True, None), (False, None),
    # a frozen affine: no weight gradient, so the forward pass is one affine map
    (True, [True, False, False]),
    (True, [False, True, True]),
], ids=["affine", "no_affine", "frozen_affine", "frozen_input"])
def test_batch_norm_eval(shape, affine, requires_grad):
    shapes, (rm0, rv0), _, (m_rm, m_rv), tfn, mfn = _bn_twins(shape, affine, training=False)
    check_op(shapes, tfn, mfn, requires_grad=requires_grad)
    np.testing.assert_array_equal(to_numpy(m_rm), rm0, err_msg="eval mode changed running_mean")
    np.testing.assert_array_equal(to_numpy(m_rv), rv0, err_msg="eval mode changed running_var")


def test_batch_norm_training_without_running_stats():
    check_op([(4, 3, 2, 5), (3,), (3,)],
             lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True),
             lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True))


# --------------------------------------------------------------------------- softmax family
SOFTMAX_CASES = [((4, 7), 0), ((4, 7), 1), ((4, 7), -1), ((2, 3, 5), 0), ((2, 3, 5), 1), ((2, 3, 5), -1)]


@pytest.mark.parametrize("fn", ["log_softmax", "softmax"])
@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES, ids=[f"{s}_dim{d}".replace(" ", "") for s, d in SOFTMAX_CASES])
def test_softmax_family(fn, shape, dim):
    check_op([shape], lambda x: getattr(TF, fn)(x, dim=dim), lambda x: getattr(F, fn)(x, dim=dim))


@pytest.mark.parametrize("fn", ["log_softmax", "softmax"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_family_huge_logits(fn, dim):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 6)) * 1e4).astype(np.float32)
    x[0, :] = 1e4          # ties at a huge value
    x[:, 0] = -1e4
    m_out, _ = check_op(None, lambda t: getattr(TF, fn)(t, dim=dim), lambda t: getattr(F, fn)(t, dim=dim),
                        inputs=[x], atol=1e-3, rtol=1e-5)
    assert np.all(np.isfinite(to_numpy(m_out)))


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n,c", [(1, 5), (6, 5), (16, 10)])
@pytest.mark.parametrize("loss", ["nll_loss", "cross_entropy"])
def test_classification_losses(loss, n, c, reduction):
    rng = np.random.default_rng(n * 100 + c)
    x = rng.uniform(-3, 3, size=(n, c)).astype(np.float32)
    target = rng.integers(0, c, size=n).astype(np.int64)
    check_op(None, lambda a, t: getattr(TF, loss)(a, t, reduction=reduction),
             lambda a, t: getattr(F, loss)(a, t, reduction=reduction), inputs=[x, target])


def test_losses_default_reduction_is_mean():
    rng = np.random.default_rng(7)
    x = rng.uniform(-3, 3, size=(5, 4)).astype(np.float32)
    target = rng.integers(0, 4, size=5).astype(np.int64)
    check_op(None, TF.cross_entropy, F.cross_entropy, inputs=[x, target])
    check_op(None, TF.nll_loss, F.nll_loss, inputs=[x, target])


def test_cross_entropy_huge_logits():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((6, 5)) * 1e4).astype(np.float32)
    target = rng.integers(0, 5, size=6).astype(np.int64)
    for reduction in ("mean", "sum", "none"):
        m_out, _ = check_op(None, lambda a, t: TF.cross_entropy(a, t, reduction=reduction),
                            lambda a, t: F.cross_entropy(a, t, reduction=reduction), inputs=[x, target],
                            atol=1e-2, rtol=1e-5)
        assert np.all(np.isfinite(to_numpy(m_out)))


def test_nll_loss_after_log_softmax():
    check_op([(7, 4)], lambda x: TF.nll_loss(TF.log_softmax(x, dim=1), torch.tensor([0, 1, 2, 3, 0, 1, 2])),
             lambda x: F.nll_loss(F.log_softmax(x, dim=1), mt.tensor(np.array([0, 1, 2, 3, 0, 1, 2]))))


# --------------------------------------------------------------------------- Tensor operators
BINARY_CASES = [
    ("add", [(3, 4), (3, 4)], lambda a, b: a + b, {}),
    ("sub", [(3, 4), (3, 4)], lambda a, b: a - b, {}),
    ("mul", [(3, 4), (3, 4)], lambda a, b: a * b, {}),
    ("div", [(3, 4), (3, 4)], lambda a, b: a / b, dict(low=[-2, 0.5], high=[2, 2])),
    ("pow", [(3, 4), (3, 4)], lambda a, b: a ** b, dict(low=[0.5, -2], high=[2, 2])),
    ("matmul_2d", [(3, 4), (4, 5)], lambda a, b: a @ b, {}),
    ("matmul_batched", [(2, 3, 4), (2, 4, 5)], lambda a, b: a @ b, {}),
    ("matmul_broadcast_rhs", [(2, 3, 4), (4, 5)], lambda a, b: a @ b, {}),
    ("matmul_broadcast_batch", [(3, 1, 2, 4), (5, 4, 3)], lambda a, b: a @ b, {}),
    ("matmul_matrix_vector", [(3, 4), (4,)], lambda a, b: a @ b, {}),
    ("matmul_vector_matrix", [(4,), (4, 5)], lambda a, b: a @ b, {}),
    ("bcast_add_315_45", [(3, 1, 5), (4, 5)], lambda a, b: a + b, {}),
    ("bcast_mul_315_45", [(3, 1, 5), (4, 5)], lambda a, b: a * b, {}),
    ("bcast_sub_41_15", [(4, 1), (1, 5)], lambda a, b: a - b, {}),
    ("bcast_div_234_4", [(2, 3, 4), (4,)], lambda a, b: a / b, dict(low=[-2, 0.5], high=[2, 2])),
    ("bcast_add_1_34", [(1,), (3, 4)], lambda a, b: a + b, {}),
    ("bcast_mul_scalar_tensor", [(3, 4), ()], lambda a, b: a * b, {}),
    ("bcast_pow_231_3", [(2, 3, 1), (3,)], lambda a, b: a ** b, dict(low=[0.5, -1], high=[2, 2])),
]


@pytest.mark.parametrize("name,shapes,fn,kw", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_binary_ops(name, shapes, fn, kw):
    check_op(shapes, fn, **kw)


UNARY_CASES = [
    ("neg", lambda x: -x, {}),
    ("radd", lambda x: 2 + x, {}), ("add_scalar", lambda x: x + 2.5, {}),
    ("rsub", lambda x: 2 - x, {}), ("sub_scalar", lambda x: x - 2, {}),
    ("rmul", lambda x: 3 * x, {}), ("mul_scalar", lambda x: x * 0.5, {}),
    ("rdiv", lambda x: 4 / x, dict(low=0.5, high=2)), ("div_scalar", lambda x: x / 4, {}),
    ("pow2", lambda x: x ** 2, {}), ("pow3_negative_base", lambda x: x ** 3, {}),
    ("pow_half", lambda x: x ** 0.5, dict(low=0.5, high=2)), ("pow_minus1", lambda x: x ** -1, dict(low=0.5, high=2)),
    ("rpow", lambda x: 2 ** x, {}),
    ("exp", lambda x: x.exp(), {}), ("log", lambda x: x.log(), dict(low=0.1, high=3)),
    ("chain", lambda x: ((x * x + 1).log() * x.exp() - x / 3) ** 2, {}),
]


@pytest.mark.parametrize("name,fn,kw", UNARY_CASES, ids=[c[0] for c in UNARY_CASES])
def test_unary_and_scalar_ops(name, fn, kw):
    check_op([(3, 4)], fn, **kw)


def test_diamond_and_reuse_of_one_input():
    check_op([(3, 4)], lambda x: x * x + x / (x * x + 1))
    check_op([(3, 4), (4, 3)], lambda a, b: (a @ b) @ a + a)


INDEX_CASES = [
    ("int", lambda x: x[1]), ("neg_int", lambda x: x[-1]), ("slice", lambda x: x[1:3]),
    ("step", lambda x: x[:, ::2]), ("ellipsis", lambda x: x[..., 1]), ("mixed", lambda x: x[-1, 1:-1]),
    ("int_slice", lambda x: x[1:3, 2]), ("three_d", lambda x: x[0, 1:, ::3]),
    ("overlapping_uses", lambda x: x[1:3] * x[0:2] + x[3]),
]


@pytest.mark.parametrize("name,fn", INDEX_CASES, ids=[c[0] for c in INDEX_CASES])
def test_basic_indexing(name, fn):
    check_op([(4, 5, 6)], fn)


REDUCE_CASES = [
    ("sum_all", lambda x: x.sum()), ("sum_0", lambda x: x.sum(0)), ("sum_1_keep", lambda x: x.sum(1, keepdim=True)),
    ("sum_neg1", lambda x: x.sum(-1)), ("sum_dim_kw", lambda x: x.sum(dim=1)), ("sum_tuple", lambda x: x.sum(dim=(0, 2))),
    ("sum_keep_kw", lambda x: x.sum(dim=-1, keepdim=True)),
    ("mean_all", lambda x: x.mean()), ("mean_0", lambda x: x.mean(0)), ("mean_1_keep", lambda x: x.mean(1, keepdim=True)),
    ("mean_neg1", lambda x: x.mean(-1)), ("mean_tuple", lambda x: x.mean(dim=(1, 2))),
    ("max_dim1", lambda x: x.max(1)), ("max_dim0", lambda x: x.max(0)), ("max_dim_neg1", lambda x: x.max(-1)),
    ("max_dim_kw", lambda x: x.max(dim=2)), ("max_all", lambda x: x.max()),
]


@pytest.mark.parametrize("name,fn", REDUCE_CASES, ids=[c[0] for c in REDUCE_CASES])
def test_reductions(name, fn):
    check_op([(3, 4, 5)], fn)


def test_max_dim_returns_values_and_indices():
    x = mt.tensor(np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]], np.float32), requires_grad=True)
    values, indices = x.max(1)
    np.testing.assert_array_equal(to_numpy(values), [5.0, 7.0])
    np.testing.assert_array_equal(to_numpy(indices), [1, 0])
    assert np.issubdtype(to_numpy(indices).dtype, np.integer)
    values.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [[0, 1, 0], [1, 0, 0]])


ARGMAX_CASES = [("dim1", lambda x: x.argmax(1)), ("dim0", lambda x: x.argmax(0)), ("dim_neg1", lambda x: x.argmax(-1)),
                ("dim_kw", lambda x: x.argmax(dim=1)), ("flat", lambda x: x.argmax())]


@pytest.mark.parametrize("name,fn", ARGMAX_CASES, ids=[c[0] for c in ARGMAX_CASES])
def test_argmax(name, fn):
    check_op([(3, 4, 5)], fn, grad=False)


def test_argmax_ties_pick_first():
    x = np.array([[0, 3, 3, 1], [2, 2, 2, 2]], np.float32)
    check_op(None, lambda t: t.argmax(1), inputs=[x], grad=False)


SHAPE_CASES = [
    ("reshape", lambda x: x.reshape(4, 6)), ("reshape_minus1", lambda x: x.reshape(2, -1)),
    ("reshape_flat", lambda x: x.reshape(-1)), ("reshape_tuple", lambda x: x.reshape((6, 4))),
    ("view", lambda x: x.view(6, 4)), ("view_minus1", lambda x: x.view(-1)),
    ("flatten_default", lambda x: x.flatten()), ("flatten_1", lambda x: x.flatten(1)),
    ("flatten_kw", lambda x: x.flatten(start_dim=1)),
    ("transpose_01", lambda x: x.transpose(0, 1)), ("transpose_neg", lambda x: x.transpose(0, -1)),
    ("transpose_then_math", lambda x: x.transpose(1, 2) * 2 + x.transpose(1, 2).exp()),
    ("transpose_then_reshape", lambda x: x.transpose(0, 2).reshape(4, -1)),
]


@pytest.mark.parametrize("name,fn", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_shape_ops(name, fn):
    check_op([(2, 3, 4)], fn)


def test_shape_ops_4d():
    check_op([(2, 3, 4, 5)], lambda x: x.flatten(2))
    check_op([(2, 3, 4, 5)], lambda x: x.transpose(1, 3))
    check_op([(2, 3, 4, 5)], lambda x: x.flatten(1) @ x.flatten(1).transpose(0, 1))


# --------------------------------------------------------------------------- compositions
# The image ops may keep their own internal memory layout; results must compose with
# every other op (views, transposes, reuse, non-contiguous inputs) exactly like torch's.
def _small_cnn(ns_f, x, w1, b1, w2, b2, target):
    h = ns_f.max_pool2d(ns_f.relu(ns_f.conv2d(x, w1, b1, padding=1)), 2)
    return ns_f.cross_entropy(ns_f.linear(h.view(h.shape[0], -1), w2, b2), target)


def test_composition_small_cnn_with_view():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 4, size=3).astype(np.int64)
    arrays = [rng.uniform(-1, 1, s).astype(np.float32) for s in [(3, 2, 8, 6), (5, 2, 3, 3), (5,), (4, 60), (4,)]]
    check_op(None, lambda *a: _small_cnn(TF, *a), lambda *a: _small_cnn(F, *a), inputs=arrays + [target],
             atol=1e-5, grad_atol=1e-5)


COMPOSITION_CASES = [
    ("conv_output_reused", lambda f: lambda x, w: (lambda y: y * y + y.transpose(2, 3).transpose(2, 3) - y[:, :1])(
        f.conv2d(x, w, padding=1))),
    ("conv_then_flatten_matmul", lambda f: lambda x, w: (lambda y: y.flatten(1) @ y.flatten(1).transpose(0, 1))(
        f.conv2d(x, w))),
    ("conv_then_reshape_sum", lambda f: lambda x, w: f.conv2d(x, w, stride=2).reshape(-1, 3).sum(0)),
    ("transposed_input_to_conv", lambda f: lambda x, w: f.conv2d(x.transpose(2, 3), w, padding=(0, 1))),
    ("strided_slice_input_to_conv", lambda f: lambda x, w: f.conv2d(x[:, :, 1:, ::2], w)),
    ("conv_pool_index", lambda f: lambda x, w: f.max_pool2d(f.conv2d(x, w, padding=1), 2)[:, 1, :, 1:]),
    ("conv_avgpool_add_input", lambda f: lambda x, w: f.avg_pool2d(f.conv2d(x, w, padding=1), 2, stride=1) + x[:, :1, 1:, 1:]),
    ("pool_of_transposed", lambda f: lambda x, w: f.max_pool2d(x.transpose(0, 1), 3, stride=2, padding=1) * w.sum()),
    ("conv_softmax_channels", lambda f: lambda x, w: f.log_softmax(f.conv2d(x, w, padding=1), dim=1)),
    ("conv_mean_keepdim", lambda f: lambda x, w: (lambda y: y - y.mean((2, 3), keepdim=True))(f.conv2d(x, w))),
]


@pytest.mark.parametrize("name,make", COMPOSITION_CASES, ids=[c[0] for c in COMPOSITION_CASES])
def test_composition_with_image_ops(name, make):
    check_op([(2, 3, 8, 7), (3, 3, 3, 3)], make(TF), make(F), low=-1, high=1, atol=1e-4, grad_atol=1e-3)


def test_composition_conv_batchnorm_pool_flatten():
    rng = np.random.default_rng(4)
    rm0, rv0 = rng.uniform(-1, 1, 4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    t_buf, m_buf = (torch.tensor(rm0), torch.tensor(rv0)), (mt.tensor(rm0.copy()), mt.tensor(rv0.copy()))

    def net(f, buf):
        def fn(x, w, g, b):
            y = f.batch_norm(f.conv2d(x, w, stride=(1, 2), padding=1), buf[0], buf[1], g, b, training=True)
            return f.avg_pool2d(f.relu(y), 2).flatten(1)
        return fn

    check_op([(3, 2, 9, 9), (4, 2, 3, 3), (4,), (4,)], net(TF, t_buf), net(F, m_buf), low=[-1, -1, 0.5, -1],
             high=[1, 1, 1.5, 1], atol=1e-4, grad_atol=1e-3)
    assert_close(m_buf[0], t_buf[0], atol=1e-5, rtol=1e-5, what="running_mean")
    assert_close(m_buf[1], t_buf[1], atol=1e-5, rtol=1e-5, what="running_var")
