"""The image ops' case tables (op_cases.py), three ways:

1. against PyTorch: forward and every gradient, float32 and float64, on each test
   backend (``mt_backend``);
2. the NumPy backend's fast paths (C kernels, blocked columns, threads) against the
   reference bodies, on the same rows;
3. the CUDA kernels, run on the CPU by test_kernels.py's g++ shim, against the
   reference bodies, on the same rows: exactly, and a dilated window (which the kernels
   do not take) launches nothing.
"""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minitorch_cnn as mt
import minitorch_cnn.nn.functional as F
from minitorch_cnn.backends.reference import Backend
from op_cases import CONV_CASES, POOL_CASES, UNPOOL_CASES, case_id
from optest import check_op, mt_backend, to_numpy  # noqa: F401  (mt_backend: autouse fixture)
import fake_cupy
from test_kernels import kernel_launches

DTYPES = {"float32": dict(dtype=np.float32, atol=1e-4, rtol=1e-4),
          "float64": dict(dtype=np.float64, atol=1e-10, rtol=1e-10)}


def _drawn_shape(shape, noncontiguous):
    return shape[:-2] + shape[:-3:-1] if noncontiguous else shape


def _reads(x, noncontiguous):
    return x.transpose(-1, -2) if noncontiguous else x


# ---------------------------------------------------------------- 1. against PyTorch
@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d_matches_torch(case, precision):
    tolerance = dict(DTYPES[precision])
    if precision == "float32":  # sums of up to C*kh*kw terms forward, N*OH*OW for the weight
        tolerance["atol"] = 1e-3
    shapes = [_drawn_shape(case.x, case.noncontiguous), case.weight] + ([(case.weight[0],)] if case.bias else [])

    def op(functional):
        return lambda x, w, *b: functional.conv2d(_reads(x, case.noncontiguous), w, b[0] if b else None,
                                                  **case.kwargs())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's note that "same" with an even kernel copies the input
        check_op(shapes, op(TF), op(F), low=-1, high=1, **tolerance)


def _pool(functional, case):
    fn = functional.max_pool2d if case.op == "max" else functional.avg_pool2d
    return lambda x: fn(_reads(x, case.noncontiguous), case.kernel_size, **case.kwargs())


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_pool_matches_torch(case, precision):
    """Forward (with return_indices, the indices exactly) and the input's gradient."""
    m_out, t_out = check_op([_drawn_shape(case.x, case.noncontiguous)], _pool(TF, case), _pool(F, case),
                            **DTYPES[precision])
    if case.return_indices:
        indices = to_numpy(m_out[1])
        assert indices.dtype == np.int64
        np.testing.assert_array_equal(indices, t_out[1].numpy())


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", UNPOOL_CASES, ids=case_id)
def test_max_unpool2d_of_max_pool2d_matches_torch(case, precision):
    def op(functional):
        def pool_unpool(x):
            out, indices = functional.max_pool2d(x, case.kernel_size, case.stride, case.padding,
                                                 ceil_mode=case.ceil_mode, return_indices=True)
            return functional.max_unpool2d(out * 2, indices, case.kernel_size, case.stride, case.padding,
                                           case.output_size)
        return pool_unpool

    check_op([case.x], op(TF), op(F), **DTYPES[precision])


# ------------------------------------------------- 2. the NumPy backend's fast paths
REFERENCE = Backend("reference", np)  # the oracle: the reference bodies alone


def _conv_arrays(case, dtype):
    rng = np.random.default_rng(len(case.name))
    x4 = rng.standard_normal(case.x if len(case.x) == 4 else (1,) + case.x).astype(dtype)
    weight = rng.standard_normal(case.weight).astype(dtype)
    bias = rng.standard_normal(case.weight[0]).astype(dtype) if case.bias else None
    window = F._conv_window(x4, weight, bias, case.stride, case.padding, case.dilation, case.groups)
    x = np.ascontiguousarray(x4.transpose(1, 2, 3, 0))
    w2 = weight.reshape(case.weight[0], -1)
    oh, ow = window.out_size(*x.shape[1:3])
    gc = rng.standard_normal((case.weight[0], oh * ow * x.shape[3])).astype(dtype)
    return x, w2, bias, window, gc


def _conv_all(be, x, w2, bias, window, gc, groups):
    """Output, weight and bias gradients and input gradient of one convolution on ``be``."""
    out, weight_backward = be.conv2d(x, w2, bias, window, groups, weight_grad=True, bias_grad=bias is not None)
    gw, gb = weight_backward(gc)
    return [out, gw, gb, be.conv2d_input_grad(w2, gc, x.shape, window, groups)]


def _assert_all(got, want, exact, what):
    for name, a, b in zip(("output", "weight gradient", "bias gradient", "input gradient"), got, want):
        if b is None:
            assert a is None, f"{what}: {name}"
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {name}"
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=f"{what}: {name}")
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(b).max(initial=0)),
                                       err_msg=f"{what}: {name}")


@pytest.fixture
def host(mt_backend):
    """The NumPy backend (whole, or splitting everything, as ``mt_backend`` says)."""
    return mt.backends.get_backend_by_name("numpy")


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d_fast_path_matches_the_reference(host, case):
    for dtype in (np.float32, np.float64):
        x, w2, bias, window, gc = _conv_arrays(case, dtype)
        _assert_all(_conv_all(host, x, w2, bias, window, gc, case.groups),
                    _conv_all(REFERENCE, x, w2, bias, window, gc, case.groups), False, np.dtype(dtype).name)


def _pool_input(case, dtype):
    rng = np.random.default_rng(len(case.name))
    x4 = rng.integers(-2, 3, case.x if len(case.x) == 4 else (1,) + case.x).astype(dtype)  # ties
    window = F._pool_window(case.op, x4, case.kernel_size, case.stride, case.padding, case.dilation,
                            case.ceil_mode)
    return np.ascontiguousarray(x4.transpose(1, 2, 3, 0)), window


def _max_pool_all(be, x, window):
    out, arg = be.max_pool(x, window)
    dout = be.asarray(np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype))
    return out, arg, be.max_pool_backward(dout, arg, x.shape, window)


MAX_POOL_CASES = [c for c in POOL_CASES if c.op == "max"]


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=case_id)
def test_max_pool_fast_path_matches_the_reference(host, case):
    for dtype in (np.float32, np.float64):
        x, window = _pool_input(case, dtype)
        for got, want in zip(_max_pool_all(host, x, window), _max_pool_all(REFERENCE, x, window)):
            np.testing.assert_array_equal(got, want)


# --------------------------------------------- 3. the CUDA kernels, on the CPU (g++)
@pytest.fixture
def standin():
    """The CuPy backend on the NumPy-backed stand-in: its kernels run through the g++ shim."""
    with fake_cupy.installed() as be:
        yield be


def _through(be, function, *arrays):
    """``function`` of ``arrays`` moved to ``be``, its results back as NumPy arrays."""
    results = function(*(None if a is None else be.asarray(a) for a in arrays))
    return [None if r is None else be.to_numpy(r) for r in results]


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d_through_the_cuda_kernels_matches_the_reference(standin, case):
    """The CuPy backend runs the reference conv2d with its im2col and col2im kernels;
    a dilated window takes the reference im2col and col2im, launching nothing."""
    for dtype in (np.float32, np.float64):
        x, w2, bias, window, gc = _conv_arrays(case, dtype)
        fake_cupy.counters.reset()
        got = _through(standin, lambda x, w2, bias, gc: _conv_all(standin, x, w2, bias, window, gc, case.groups),
                       x, w2, bias, gc)
        assert bool(kernel_launches()) == (window.dh * window.dw == 1 and x.size > 0), kernel_launches()
        _assert_all(got, _conv_all(REFERENCE, x, w2, bias, window, gc, case.groups), True, np.dtype(dtype).name)


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=case_id)
def test_max_pool_through_the_cuda_kernels_matches_the_reference(standin, case):
    for dtype in (np.float32, np.float64):
        x, window = _pool_input(case, dtype)
        fake_cupy.counters.reset()
        got = _through(standin, lambda x: _max_pool_all(standin, x, window), x)
        assert ("max_pool" in kernel_launches()) == (window.dh * window.dw == 1 and x.size > 0), kernel_launches()
        for a, b in zip(got, _max_pool_all(REFERENCE, x, window)):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- 4. what PyTorch refuses
def _t(*shape):
    return mt.tensor(np.ones(shape, np.float32))


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.conv2d(_t(4, 5, 5), _t(8, 3, 3, 3)), ValueError,
     r"Given groups=1, weight of size \[8, 3, 3, 3\], expected input\[1, 4, 5, 5\] to have 3 channels, but got 4"),
    (lambda: F.conv2d(_t(2, 3), _t(8, 3, 3, 3)), ValueError,
     r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d, but got input of size: \[2, 3\]"),
    (lambda: F.conv2d(_t(1, 3, 5, 5), _t(8, 3, 3, 3), _t(5)), ValueError,
     r"expected bias to be 1-dimensional with 8 elements, but got bias of size \[5\]"),
    (lambda: F.conv2d(_t(1, 4, 5, 5), _t(3, 2, 3, 3), groups=2), ValueError,
     r"Given groups=2, expected weight to be divisible by 2 at dimension 0"),
    (lambda: F.conv2d(_t(1, 4, 5, 5), _t(4, 3, 3, 3), groups=2), ValueError,
     r"Given groups=2, .* expected input\[1, 4, 5, 5\] to have 6 channels, but got 4"),
    (lambda: F.conv2d(_t(1, 3, 2, 2), _t(4, 3, 3, 3)), ValueError, r"Kernel size can't be greater"),
    (lambda: F.conv2d(_t(1, 3, 5, 5), _t(4, 3, 3, 3), dilation=3), ValueError, r"Kernel size can't be greater"),
    (lambda: F.conv2d(_t(1, 3, 5, 5), _t(4, 3, 3, 3), stride=2, padding="same"), ValueError,
     r"padding='same' is not supported for strided convolutions"),
    (lambda: F.conv2d(_t(1, 3, 5, 5), _t(4, 3, 3, 3), padding="full"), ValueError, r"invalid padding string 'full'"),
    (lambda: F.conv2d(_t(1, 3, 5, 5), _t(4, 3, 3, 3), dilation=0), ValueError, r"dilation must be positive"),
    (lambda: F.conv2d(_t(1, 3, 5, 5), _t(4, 3, 3), padding=1), ValueError, r"weight must be 4-D"),
    (lambda: F.max_pool2d(_t(1, 3, 5, 5), 3, padding=2), ValueError, r"pad should be at most half of kernel size"),
    (lambda: F.max_pool2d(_t(1, 3, 2, 2), 3), ValueError, r"output size is too small"),
    (lambda: F.max_pool2d(_t(1, 3, 5, 5), 2, dilation=0), ValueError, r"dilation must be positive"),
    (lambda: F.max_pool2d(_t(3, 5), 2), ValueError, r"Expected 3D \(unbatched\) or 4D \(batched\) input to max_pool2d"),
    (lambda: F.avg_pool2d(_t(1, 3, 5, 5), 3, divisor_override=0), ValueError, r"divisor_override must be a non-zero"),
    (lambda: F.max_unpool2d(_t(1, 3, 2, 2), mt.tensor(np.full((1, 3, 2, 2), 99)), 2), IndexError,
     r"invalid max index(: 99)? \(output volumes are of size 4x4"),
    (lambda: F.max_unpool2d(_t(1, 3, 2, 2), _t(1, 3, 2, 2), 2), ValueError, r"expected integer indices"),
    (lambda: mt.nn.Conv2d(3, 4, 3, groups=2), ValueError, r"in_channels must be divisible by groups"),
    (lambda: mt.nn.Conv2d(4, 3, 3, groups=2), ValueError, r"out_channels must be divisible by groups"),
    (lambda: mt.nn.Conv2d(4, 4, 3, padding_mode="mirror"), ValueError, r"padding_mode must be one of"),
    (lambda: mt.nn.Conv2d(4, 4, 3, padding_mode="reflect"), NotImplementedError, r"padding_mode='reflect'"),
    (lambda: mt.nn.Conv2d(4, 4, 3, stride=2, padding="same"), ValueError, r"not supported for strided"),
], ids=lambda v: None)
def test_bad_arguments_are_refused_as_pytorch_refuses_them(call, error, message):
    with pytest.raises(error, match=message):
        call()
        mt.get_backend().synchronize()  # a GPU checks indices on the device: raised at the sync


def test_dropout2d_of_a_3d_input_drops_along_the_first_two_axes_with_pytorchs_warning():
    x = mt.tensor(np.ones((3, 4, 50), np.float32))
    with pytest.warns(UserWarning, match="Received a 3D input to dropout2d"):
        out = to_numpy(F.dropout2d(x, 0.5, True))
    kept = out[:, :, 0] != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(out, np.repeat(kept[:, :, None] * 2.0, 50, axis=2))


def test_modules_take_the_new_options_and_keep_torch_shapes():
    mt.manual_seed(0)
    depthwise = mt.nn.Conv2d(4, 8, 3, padding="same", dilation=2, groups=4)
    assert depthwise.weight.shape == torch.nn.Conv2d(4, 8, 3, groups=4).weight.shape == (8, 1, 3, 3)
    assert depthwise(_t(2, 4, 7, 6)).shape == (2, 8, 7, 6)
    assert depthwise(_t(4, 7, 6)).shape == (8, 7, 6)  # unbatched
    pool = mt.nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True)
    out, indices = pool(_t(2, 4, 10, 9))
    assert out.shape == indices.shape == (2, 4, 6, 5)
    assert mt.nn.MaxUnpool2d(3, 2, 1)(out, indices, output_size=(10, 9)).shape == (2, 4, 10, 9)
    assert mt.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False, divisor_override=2)(
        _t(4, 10, 9)).shape == (4, 6, 5)


@pytest.mark.parametrize("option", [dict(dilation=2), dict(ceil_mode=True), dict(return_indices=True)])
def test_a_max_pool_with_dilation_ceil_mode_or_indices_is_not_fused(option):
    model = mt.nn.Sequential(mt.nn.BatchNorm2d(2), mt.nn.ReLU(), mt.nn.MaxPool2d(2, **option))
    fused = mt.nn.fuse_modules(model)
    assert type(fused[0]) is mt.nn.BatchNormReLU2d and fused[0].max_pool is None
    assert type(fused[2]) is mt.nn.MaxPool2d
    assert type(mt.nn.fuse_modules(mt.nn.Sequential(mt.nn.BatchNorm2d(2), mt.nn.ReLU(), mt.nn.MaxPool2d(2)))[0]
                .max_pool) is mt.nn.MaxPool2d
