"""Analytic gradients against central finite differences, in float64, without PyTorch.

Every input is an ``mt.tensor(..., dtype=np.float64)``; the checked scalar is
``(op(*inputs) * W).sum()`` for fixed random ``W``; step eps=1e-6; tolerance
atol=1e-6, rtol=1e-5 (the truncation error is ~eps**2, the rounding error ~1e-10).
"""

import numpy as np
import pytest

from optest import gradcheck, mt_backend  # noqa: E402,F401  (mt_backend: autouse fixture)

import minitorch_cnn as mt  # noqa: E402
import minitorch_cnn.nn.functional as F  # noqa: E402


def rand(*shape, seed=0, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def distinct(*shape, seed=0):
    """Values without ties, at least 0.1 apart: max-pool is differentiable there."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).astype(np.float64) * 0.1 - n * 0.05).reshape(shape)


@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (1, 1, False), (2, 1, True), ((2, 1), (1, 0), True),
                                                 ((1, 2), (0, 2), False)])
def test_conv2d(stride, padding, bias):
    inputs = [rand(2, 2, 5, 4, seed=1), rand(3, 2, 3, 2, seed=2)] + ([rand(3, seed=3)] if bias else [])
    gradcheck(lambda x, w, *b: F.conv2d(x, w, b[0] if b else None, stride=stride, padding=padding), inputs)


@pytest.mark.parametrize("k,s,p", [(2, None, 0), (2, 1, 0), (3, 2, 1), (2, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_max_pool2d(k, s, p):
    gradcheck(lambda x: F.max_pool2d(x, k, stride=s, padding=p), [distinct(2, 2, 5, 5, seed=4)])


@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 1, 1), (3, 2, 1), ((2, 3), (2, 1), (1, 1))])
def test_avg_pool2d(k, s, p):
    gradcheck(lambda x: F.avg_pool2d(x, k, stride=s, padding=p), [rand(2, 2, 5, 5, seed=5)])


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    inputs = [rand(3, 4, seed=6), rand(5, 4, seed=7)] + ([rand(5, seed=8)] if bias else [])
    gradcheck(lambda x, w, *b: F.linear(x, w, b[0] if b else None), inputs)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 3)], ids=["4d", "2d"])
def test_batch_norm_training(shape):
    c = shape[1]

    def fn(x, w, b):  # fresh running buffers each call: their update doesn't change the output
        rm = mt.tensor(np.zeros(c), dtype=np.float64)
        rv = mt.tensor(np.ones(c), dtype=np.float64)
        return F.batch_norm(x, rm, rv, w, b, training=True)

    gradcheck(fn, [rand(*shape, seed=9, low=-2, high=3), rand(c, seed=10, low=0.5, high=1.5), rand(c, seed=11)])


def test_batch_norm_training_no_affine():
    gradcheck(lambda x: F.batch_norm(x, None, None, None, None, training=True), [rand(3, 2, 2, 3, seed=12)])


@pytest.mark.parametrize("fn", ["log_softmax", "softmax"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_family(fn, dim):
    gradcheck(lambda x: getattr(F, fn)(x, dim=dim), [rand(3, 4, 2, seed=13, low=-3, high=3)])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
def test_losses(loss, reduction):
    rng = np.random.default_rng(14)
    target = rng.integers(0, 5, size=6).astype(np.int64)
    gradcheck(lambda x, t: getattr(F, loss)(x, t, reduction=reduction), [rand(6, 5, seed=15, low=-3, high=3), target])


@pytest.mark.parametrize("options", [{"weight": True}, {"ignore_index": 1}, {"weight": True, "ignore_index": 4},
                                     {"label_smoothing": 0.3}, {"weight": True, "label_smoothing": 0.2,
                                                                "ignore_index": 0, "reduction": "sum"}])
@pytest.mark.parametrize("layout", [((6, 5), (6,)), ((5,), ()), ((2, 5, 3), (2, 3))], ids=["batch", "unbatched", "spatial"])
def test_cross_entropy_options(options, layout):
    (x_shape, t_shape), options = layout, dict(options)
    target = np.random.default_rng(25).integers(0, 5, size=t_shape).astype(np.int64)
    if options.pop("weight", False):
        options["weight"] = mt.tensor(rand(5, seed=26, low=0.5, high=2.0), dtype=np.float64)
    gradcheck(lambda x, t: F.cross_entropy(x, t, **options), [rand(*x_shape, seed=27, low=-3, high=3), target])
    if "label_smoothing" not in options:
        gradcheck(lambda x, t: F.nll_loss(x, t, **options), [rand(*x_shape, seed=28, low=-3, high=3), target])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_probability_targets(reduction):
    """Both the logits' and the soft target's gradients."""
    gradcheck(lambda x, p: F.cross_entropy(x, p, reduction=reduction, label_smoothing=0.1),
              [rand(2, 4, 3, seed=29, low=-3, high=3), rand(2, 4, 3, seed=30, low=0, high=1)])


def test_elementwise_extremes_and_masked_fill():
    mask = mt.tensor(np.array([[True, False, False, True]]))
    gradcheck(lambda a, b: mt.maximum(a, b) * 2 + a.min(b) + a.masked_fill(mask, 3.0),
              [distinct(3, 4, seed=31), distinct(4, seed=32) + 0.05])


def test_pow_with_a_tensor_exponent():
    gradcheck(lambda a, b: a ** b + 2.0 ** b, [rand(3, 4, seed=33, low=0.5, high=2.0), rand(4, seed=34)])


def test_shape_ops_with_negative_dims():
    def fn(a, v):
        return (a.permute(-1, 0, -2).flatten(-2) @ v).mean(-1, keepdim=True) + a.transpose(-1, -3).max(-2)[0].sum()

    gradcheck(fn, [distinct(2, 3, 4, seed=35), rand(6, seed=36)])


def test_tensor_op_composite():
    def fn(a, b, c):
        return (((a * b) / (c ** 2 + 1) - (-a).exp() + (b @ c.transpose(0, 1))[:, :1]) ** 2).mean(0)

    gradcheck(fn, [rand(3, 4, seed=16), rand(3, 4, seed=17), rand(3, 4, seed=18)])


def test_small_cnn_end_to_end():
    def net(x, w1, b1, w2, b2, t):
        h = F.max_pool2d(F.relu(F.conv2d(x, w1, b1, padding=1)), 2)
        return F.cross_entropy(F.linear(h.flatten(1), w2, b2), t)

    rng = np.random.default_rng(19)
    x = rand(2, 1, 4, 4, seed=20)
    inputs = [x, rand(2, 1, 3, 3, seed=21), rand(2, seed=22), rand(3, 8, seed=23), rand(3, seed=24),
              rng.integers(0, 3, size=2).astype(np.int64)]
    gradcheck(net, inputs, wrt=[1, 2, 3, 4], atol=1e-5, rtol=1e-4)
