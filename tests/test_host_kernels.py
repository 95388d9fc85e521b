"""The NumPy backend's C kernels (kernels/*.c, backends/host_kernels.py).

Each kernel is compared, exactly, with the generic NumPy body it replaces
(``Backend.max_pool(backend, ...)`` and so on), on one thread and split across
threads (the loader, its cache and the backend's fallback: test_host_kernels_loader.py).
The op suites (test_functional.py and the others) run through these kernels too,
wherever they can be built. Skips, with the reason, where they cannot (no C compiler).
"""
import contextlib
import os

import numpy as np
import pytest

import minitorch_cnn as mt
import minitorch_cnn.nn.functional as F
from minitorch_cnn.backends.reference import Backend, Window
from optest import split_everything
from test_kernels import POOL_WINDOWS, WINDOWS, _first_argmax, _ids, _pool_input, _rng


@pytest.fixture(params=[1, 2], ids=["whole", "split"])
def host(request):
    """The NumPy backend with its C kernels, whole or with every piece of work split."""
    be = mt.backends.get_backend_by_name("numpy")
    be.kernels_for()
    if be.kernels is None:
        pytest.skip(f"the C kernels are unavailable here: {be.kernels_unavailable}")
    if request.param == 1:
        yield be
    else:
        with split_everything() as be:
            yield be


@pytest.mark.parametrize("values", ["random", "ties", "negative"])
@pytest.mark.parametrize("case", POOL_WINDOWS, ids=_ids)
def test_max_pool_and_backward_match_the_generic_path(host, case, values):
    c, h, w, n, kh, kw, sh, sw, ph, pw = case
    window = Window(kh, kw, sh, sw, ph, pw)
    rng = _rng(case, np.float32)
    x = _pool_input(rng, (c, h, w, n), values, np.float32)
    out, arg = host.max_pool(x, window)
    want_out, routing = Backend.max_pool(host, x, window)
    assert arg.dtype == np.uint8
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(arg, _first_argmax(host, x, want_out, window))

    dout = rng.standard_normal(out.shape).astype(np.float32)
    np.testing.assert_array_equal(host.max_pool_backward(dout, arg, x.shape, window),
                                  Backend.max_pool_backward(host, dout, routing, x.shape, window))


@contextlib.contextmanager
def generic(host):
    """The backend without its kernels: the generic bodies, whatever calls them."""
    kernels, host.kernels = host.kernels, None
    try:
        yield host
    finally:
        host.kernels = kernels


@pytest.mark.parametrize("case", WINDOWS, ids=_ids)
def test_col2im_and_the_blocked_input_gradient_match_the_generic_path(host, case, monkeypatch):
    c, h, w, n, kh, kw, sh, sw, ph, pw = case
    window = Window(kh, kw, sh, sw, ph, pw)
    rng = _rng(case, np.float32)
    oh, ow = window.out_size(h, w)
    cols = rng.standard_normal((c, kh, kw, oh, ow, n)).astype(np.float32)
    w2 = rng.standard_normal((3, c * kh * kw)).astype(np.float32)
    gc = rng.standard_normal((3, oh * ow * n)).astype(np.float32)
    calls = []
    real = host.kernels.col2im_add
    monkeypatch.setattr(host.kernels, "col2im_add", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(host, "cache_block_bytes", 1)  # one output row per block
    monkeypatch.setattr(host, "SMALL_CONV_CHANNELS", 0)  # the input gradient by col2im, for every case
    got = host.col2im(cols, (c, h, w, n), window), host.conv2d_input_grad(w2, gc, (c, h, w, n), window)
    with generic(host):
        want = host.col2im(cols, (c, h, w, n), window), host.conv2d_input_grad(w2, gc, (c, h, w, n), window)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert calls


def test_add_columns_adds_to_what_is_there_and_skips_odd_layouts(host):
    rng = np.random.default_rng(8)
    cols = rng.standard_normal((2, 3, 3, 4, 5, 6)).astype(np.float32)
    start = rng.standard_normal((2, 10, 12, 6)).astype(np.float32)
    results = []
    for view in (cols, cols[:, :, :, :3], cols.transpose(0, 1, 2, 3, 5, 4).copy().transpose(0, 1, 2, 3, 5, 4)):
        for use in (host, None):
            dx = start.copy()
            if use is None:
                with generic(host):
                    host.add_columns(view, dx[:, 1:], Window(3, 3, 2, 2, 0, 0))
            else:
                host.add_columns(view, dx[:, 1:], Window(3, 3, 2, 2, 0, 0))
            results.append(dx)
        np.testing.assert_array_equal(results[-2], results[-1])
    assert not np.array_equal(results[0], start)


def test_max_pool_propagates_nan(host):
    x = _pool_input(np.random.default_rng(11), (3, 9, 9, 4), "nan", np.float32)
    out, _ = host.max_pool(x, Window(3, 3, 2, 2, 1, 1))
    want = Backend.max_pool(host, x, Window(3, 3, 2, 2, 1, 1))[0]
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(out, want)


def test_other_dtypes_and_large_windows_take_the_reference_path(host, monkeypatch):
    x = np.random.default_rng(3).standard_normal((2, 17, 17, 3))
    calls = []
    real = host.kernels.max_pool
    monkeypatch.setattr(host.kernels, "max_pool", lambda *a: calls.append(a) or real(*a))
    for dtype, size in [(np.float64, 2), (np.float16, 2), (np.float32, 17)]:
        out, arg = host.max_pool(x.astype(dtype), Window(size, size, 1, 1, 0, 0))
        want = Backend.max_pool(host, x.astype(dtype), Window(size, size, 1, 1, 0, 0))
        np.testing.assert_array_equal(out, want[0])
        np.testing.assert_array_equal(arg, want[1])
    assert not calls
    host.max_pool(x.astype(np.float32), Window(16, 16, 1, 1, 0, 0))  # offsets up to 255
    assert calls  # one call per block of channels


def _relu_case(layout):
    """(g, y) of shape (N, C, H, W) = (3, 4, 5, 6) in the given memory layout."""
    rng = np.random.default_rng(5)
    g, y = (rng.standard_normal((4, 5, 6, 3)).astype(np.float32) for _ in range(2))
    y[0, 0, 0] = 0.0  # y > 0 is strict
    if layout == "chwn":  # our image ops' outputs: NCHW views of CHWN memory
        return g.transpose(3, 0, 1, 2), y.transpose(3, 0, 1, 2)
    if layout == "nchw":
        return np.ascontiguousarray(g.transpose(3, 0, 1, 2)), np.ascontiguousarray(y.transpose(3, 0, 1, 2))
    if layout == "mixed":  # different layouts: no common memory order
        return np.ascontiguousarray(g.transpose(3, 0, 1, 2)), y.transpose(3, 0, 1, 2)
    if layout == "strided":  # not one dense block
        return g.transpose(3, 0, 1, 2)[:, :, ::2], y.transpose(3, 0, 1, 2)[:, :, ::2]
    raise ValueError(layout)


@pytest.mark.parametrize("layout", ["chwn", "nchw", "mixed", "strided"])
def test_relu_backward_matches_the_generic_path(host, layout, monkeypatch):
    g, y = _relu_case(layout)
    kernel_calls = []
    real = host.kernels.relu_backward
    monkeypatch.setattr(host.kernels, "relu_backward", lambda *a: kernel_calls.append(a) or real(*a))
    dx = host.relu_backward(g, y)
    np.testing.assert_array_equal(dx, Backend.relu_backward(host, g, y))
    assert bool(kernel_calls) == (layout in ("chwn", "nchw"))
    if kernel_calls:
        assert dx.strides == np.empty_like(y).strides  # y's memory order


@pytest.mark.parametrize("layout", ["chwn", "nchw", "strided"])
def test_relu_matches_the_generic_path(host, layout, monkeypatch):
    _, x = _relu_case(layout)
    x[0, 0, 0, :3] = [np.nan, -0.0, -np.inf]  # NaN stays NaN
    kernel_calls = []
    real = host.kernels.relu
    monkeypatch.setattr(host.kernels, "relu", lambda *a: kernel_calls.append(a) or real(*a))
    y = host.relu(x)
    np.testing.assert_array_equal(y, Backend.relu(host, x))
    assert np.isnan(y[0, 0, 0, 0]) and (y[~np.isnan(y)] >= 0).all()
    assert y.strides == np.empty_like(x).strides  # x's memory order
    assert bool(kernel_calls) == (layout in ("chwn", "nchw"))


def test_relu_backward_stops_inf_and_nan_where_relu_was_off(host):
    """As PyTorch's threshold_backward: no gradient at all where y <= 0, not g * 0, and
    the gradient passed on where y is NaN; the reference body too."""
    g = np.array([np.inf, np.nan, 2.0, -np.inf, 5.0], dtype=np.float32)
    y = np.array([0.0, -1.0, 3.0, 1.0, np.nan], dtype=np.float32)
    want = [0.0, 0.0, 2.0, -np.inf, 5.0]
    np.testing.assert_array_equal(host.relu_backward(g, y), want)
    np.testing.assert_array_equal(Backend.relu_backward(host, g, y), want)


def test_relu_and_pool_ops_through_the_kernels(host):
    """F.relu and F.max_pool2d forward and backward on the kernels, against the generic bodies."""
    x0 = np.random.default_rng(2).integers(-2, 3, size=(4, 3, 10, 10)).astype(np.float32)

    def run():
        x = mt.tensor(x0, requires_grad=True)
        y = F.max_pool2d(F.relu(x), 3, 2, 1)
        (y * mt.tensor(np.arange(y.numel(), dtype=np.float32).reshape(y.shape))).sum().backward()
        return y.numpy(), x.grad.numpy()

    with_kernels = run()
    with generic(host):
        without = run()
    for got, want in zip(with_kernels, without):
        np.testing.assert_array_equal(got, want)


# Small convolutions, columns read in place: (C, H, W, N), Cout, (kh, kw), (ph, pw). Row
# pieces with and without pairs of vectors, single vectors and parts of one left; 1-13
# output channels (every tile height); rows longer than the weight gradient's pieces;
# padding from none to the kernel's size (the input's gradient then by col2im).
SMALL_CONVS = [
    ((1, 9, 7, 3), 4, (3, 2), (1, 0)),
    ((1, 9, 9, 3), 5, (3, 3), (1, 1)),
    ((1, 12, 12, 16), 6, (5, 5), (2, 2)),
    ((3, 8, 10, 5), 13, (3, 3), (1, 1)),
    ((2, 6, 5, 9), 7, (1, 1), (0, 0)),
    ((5, 7, 6, 2), 11, (2, 3), (1, 1)),
    ((4, 10, 10, 8), 3, (5, 5), (0, 0)),
    ((2, 12, 12, 64), 8, (3, 3), (1, 1)),
    ((24, 4, 4, 3), 24, (3, 3), (1, 1)),
    ((2, 5, 4, 3), 3, (1, 2), (1, 2)),
    ((1, 6, 6, 1), 2, (3, 3), (2, 2)),
]


def _small_conv_ids(case):
    (c, h, w, n), cout, (kh, kw), (ph, pw) = case
    return f"x{c}x{h}x{w}x{n}-c{cout}-k{kh}x{kw}-p{ph}x{pw}"


def _small_conv_case(case):
    (c, h, w, n), cout, kernel, padding = case
    rng = np.random.default_rng(sum(case[0]) + cout)
    x = rng.standard_normal((c, h, w, n)).astype(np.float32)
    w2 = rng.standard_normal((cout, c * kernel[0] * kernel[1])).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    return x, w2, bias, Window(*kernel, 1, 1, *padding)


def _small_conv_all(be, x, w2, bias, window, gc=None):
    """Output, weight and bias gradients and input gradient of one convolution on ``be``."""
    out, backward = be.conv2d(x, w2, bias, window, weight_grad=True, bias_grad=True)
    gc = np.random.default_rng(5).standard_normal((w2.shape[0], out[0].size)).astype(x.dtype) if gc is None else gc
    return (out, *backward(gc), be.conv2d_input_grad(w2, gc, x.shape, window)), gc


@pytest.mark.parametrize("case", SMALL_CONVS, ids=_small_conv_ids)
def test_small_convolutions_read_their_columns_in_place(host, case, monkeypatch):
    """Forward, weight, bias and input gradients on the kernels, against the column path
    in float64; the input's gradient in place exactly where the output is no smaller."""
    x, w2, bias, window = _small_conv_case(case)
    calls = []
    for name in ("conv_forward", "conv_weight_grad"):
        real = getattr(host.kernels, name)
        monkeypatch.setattr(host.kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    got, gc = _small_conv_all(host, x, w2, bias, window)
    with monkeypatch.context() as columns:
        columns.setattr(host, "SMALL_CONV_CHANNELS", 0)
        want, _ = _small_conv_all(host, *(a.astype(np.float64) for a in (x, w2, bias)), window,
                                  gc.astype(np.float64))
    for name, a, b in zip(("output", "weight gradient", "bias gradient", "input gradient"), got, want):
        assert a.dtype == np.float32 and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4 * np.abs(b).max(), err_msg=name)
    assert {"conv_forward", "conv_weight_grad"} <= set(calls)
    kh, kw, _, _, ph, pw = window
    calls.clear()
    host.conv2d_input_grad(w2, gc, x.shape, window)
    assert bool(calls) == (ph < kh and pw < kw)  # else the flipped kernel's padding would be negative


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", SMALL_CONVS, ids=_small_conv_ids)
def test_small_convolutions_split_never_change_a_number(case, threads):
    be = mt.backends.get_backend_by_name("numpy")
    if be.kernels_for() is None:
        pytest.skip(f"the C kernels are unavailable here: {be.kernels_unavailable}")
    x, w2, bias, window = _small_conv_case(case)
    whole, gc = _small_conv_all(be, x, w2, bias, window)
    with split_everything(threads):
        split, _ = _small_conv_all(be, x, w2, bias, window, gc)
    for a, b in zip(split, whole):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change", ["stride 2", "25 input channels", "25 output channels", "float64"])
def test_other_convolutions_take_the_column_path(host, change, monkeypatch):
    rng = np.random.default_rng(3)
    c, cout, stride, dtype = {"stride 2": (2, 3, 2, np.float32),
                              "25 input channels": (25, 3, 1, np.float32),
                              "25 output channels": (2, 25, 1, np.float32),
                              "float64": (2, 3, 1, np.float64)}[change]
    x = rng.standard_normal((c, 6, 6, 4)).astype(dtype)
    w2 = rng.standard_normal((cout, c * 9)).astype(dtype)
    window = Window(3, 3, stride, stride, 1, 1)
    for name in ("conv_forward", "conv_weight_grad"):
        monkeypatch.setattr(host.kernels, name, lambda *a: pytest.fail("a kernel ran"))
    (out, *_), _ = _small_conv_all(host, x, w2, None, window)
    assert out.shape == (cout, 6 // stride, 6 // stride, 4)


@pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("count", [1, 15, 16, 33, 4099])
def test_batch_norm_matches_the_generic_path(host, count, affine, relu, monkeypatch):
    """To rounding: both sum in double precision, in another order. With ``relu``, the
    fused ReLU forward and its backward too."""
    rng = np.random.default_rng(count)
    rows = (rng.standard_normal((5, count)) * rng.uniform(0.1, 10, (5, 1)) + rng.uniform(-5, 5, (5, 1))).astype(np.float32)
    weight = rng.standard_normal(5).astype(np.float32) if affine else None
    shift = rng.standard_normal(5).astype(np.float32)
    calls = []
    for name in ("batch_norm", "batch_norm_backward"):
        real = getattr(host.kernels, name)
        monkeypatch.setattr(host.kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    got = host.batch_norm(rows, weight, shift, 1e-5, relu)
    want = Backend.batch_norm(host, rows, weight, shift, 1e-5, relu)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    out, mean, var, inv_std = got
    assert (out.min() >= 0) == relu or count == 1
    g = rng.standard_normal(rows.shape).astype(np.float32)
    relu_out = out if relu else None
    got = host.batch_norm_backward(g, rows, mean, inv_std, weight, True, relu_out)
    want = Backend.batch_norm_backward(host, g, rows, mean, inv_std, weight, True, relu_out)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert "batch_norm" in calls and "batch_norm_backward" in calls


@pytest.mark.parametrize("values", ["random", "ties", "nan"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("case", POOL_WINDOWS, ids=_ids)
def test_batch_norm_relu_pool_is_the_three_kernels_in_turn(host, case, affine, values, monkeypatch):
    """The fused kernels give exactly what the BatchNorm (with its ReLU) and the max-pool
    kernels give one after the other, forward and backward, on batch and on running
    statistics; and, to rounding, what the generic bodies give."""
    c, h, w, n, kh, kw, sh, sw, ph, pw = case
    if h * w * n < 2:
        pytest.skip("batch statistics need two values per channel")
    window, shape = Window(kh, kw, sh, sw, ph, pw), (c, h, w, n)
    rng = _rng(case, np.float32)
    rows = _pool_input(rng, shape, values, np.float32).reshape(c, -1) * 3 + 1
    weight = rng.standard_normal(c).astype(np.float32) if affine else None
    shift = rng.standard_normal(c).astype(np.float32)
    calls = []
    for name in ("batch_norm_relu_pool", "batch_norm_relu_pool_backward", "scale_shift_relu_pool"):
        real = getattr(host.kernels, name)
        monkeypatch.setattr(host.kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))

    pooled, arg, mean, var, inv_std = host.batch_norm_pool(rows, shape, weight, shift, 1e-5, window)
    out, *stats = host.batch_norm(rows, weight, shift, 1e-5, relu=True)
    want_pooled, want_arg = host.max_pool(out.reshape(shape), window)
    for got, want in zip((pooled, arg, mean, var, inv_std), (want_pooled, want_arg, *stats)):
        np.testing.assert_array_equal(got, want)
    assert not (pooled < 0).any() and np.isnan(pooled).any() == (values == "nan")
    scale = rng.uniform(-2, 2, c).astype(np.float32)  # running statistics: one affine map
    for got, want in zip(host.scale_shift_pool(rows, shape, scale, shift, window),
                         Backend.scale_shift_pool(host, rows, shape, scale, shift, window)):
        np.testing.assert_array_equal(got, want)

    dout = rng.standard_normal(pooled.shape).astype(np.float32)
    got = host.batch_norm_pool_backward(dout, pooled, arg, shape, window, rows, mean, inv_std, weight, True)
    g = host.max_pool_backward(dout, arg, shape, window).reshape(rows.shape)
    for a, b in zip(got, host.batch_norm_backward(g, rows, mean, inv_std, weight, True, out)):
        np.testing.assert_array_equal(a, b)
    assert {"batch_norm_relu_pool", "batch_norm_relu_pool_backward", "scale_shift_relu_pool"} <= set(calls)

    if values != "nan":  # the generic bodies, whose sums round differently
        want = Backend.batch_norm_pool(host, rows, shape, weight, shift, 1e-5, window)
        for a, b in zip((pooled, mean, var, inv_std), want[:1] + want[2:]):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
        want_grads = Backend.batch_norm_pool_backward(host, dout, pooled, arg, shape, window, rows, mean,
                                                      inv_std, weight, True)
        for a, b in zip(got, want_grads):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batch_norm_sums_beat_float32(host):
    """A channel of 200,704 values far from zero (a bn-cnn first layer's): the kernel's
    mean and variance stay within float32 rounding of the exact ones."""
    rng = np.random.default_rng(4)
    rows = (rng.standard_normal((2, 200_704)) * 0.01 + 3).astype(np.float32)
    _, mean, var, _ = host.batch_norm(rows, None, np.zeros(2, np.float32), 1e-5)
    exact = rows.astype(np.float64)
    np.testing.assert_allclose(mean, exact.mean(axis=1), rtol=1e-7)
    np.testing.assert_allclose(var, exact.var(axis=1), rtol=3e-7)


FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("path", ["kernels", "generic"])
def test_bn_cnn_gradients_on_real_images_are_accurate(host, path):
    """A convolution's weight gradient through a BatchNorm nearly cancels, so the
    per-channel sums must be accurate: with OpenBLAS's AVX-512 kernels, float32 dot
    products for them left 2.7e-3 relative errors in bn-cnn's first-layer gradient on a
    batch of real images (PyTorch's own float32: 1e-4). Both paths against PyTorch in
    float64, with bn-cnn's initial weights and a real batch."""
    if not os.path.isdir(FASHION_DIR):
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_DIR} (Debian package dataset-fashion-mnist)")
    import torch

    from minitorch_cnn.models import get_model
    from reference.convert import copy_weights
    from reference.models import get_torch_model

    images, labels = mt.data.load_dataset("fashion-mnist", "train", root=FASHION_DIR, download=False)
    x = ((images[:256].astype(np.float32) / 255 - 0.2860) / 0.3530)[:, None]
    y = labels[:256]
    mt.manual_seed(0)
    ours = get_model("bn-cnn")
    theirs = copy_weights(ours, get_torch_model("bn-cnn")).double()
    torch.nn.functional.cross_entropy(theirs(torch.tensor(x, dtype=torch.float64)), torch.tensor(y)).backward()
    with generic(host) if path == "generic" else contextlib.nullcontext():
        F.cross_entropy(ours(mt.tensor(x)), mt.tensor(y)).backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        if name.endswith("weight"):
            want = q.grad.numpy()
            assert np.abs(p.grad.numpy() - want).max() / np.abs(want).max() < 2e-5, name


def test_batch_norm_off_batch_statistics_and_odd_layouts_take_the_generic_path(host, monkeypatch):
    monkeypatch.setattr(host.kernels, "batch_norm_backward", None)  # any call would fail
    rng = np.random.default_rng(6)
    rows, g = (rng.standard_normal((3, 40)).astype(np.float32) for _ in range(2))
    mean, inv_std = rows.mean(axis=1), np.full(3, 0.5, np.float32)
    for args in [(rows, mean, inv_std, None, False), (rows, mean, inv_std, inv_std, False)]:
        for a, b in zip(host.batch_norm_backward(g, *args), Backend.batch_norm_backward(host, g, *args)):
            np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(host.kernels, "batch_norm", None)
    strided = rng.standard_normal((3, 80)).astype(np.float32)[:, ::2]
    for a, b in zip(host.batch_norm(strided, None, mean, 1e-5), Backend.batch_norm(host, strided, None, mean, 1e-5)):
        np.testing.assert_array_equal(a, b)
