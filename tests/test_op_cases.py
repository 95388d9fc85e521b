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
from test_kernels import HostKernels, host_library  # noqa: F401  (host_library: fixture)

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
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
    return out, arg, be.max_pool_backward(dout, arg, x.shape, window)


MAX_POOL_CASES = [c for c in POOL_CASES if c.op == "max"]


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=case_id)
def test_max_pool_fast_path_matches_the_reference(host, case):
    for dtype in (np.float32, np.float64):
        x, window = _pool_input(case, dtype)
        for got, want in zip(_max_pool_all(host, x, window), _max_pool_all(REFERENCE, x, window)):
            np.testing.assert_array_equal(got, want)


# --------------------------------------------- 3. the CUDA kernels, on the CPU (g++)
@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d_through_the_cuda_kernels_matches_the_reference(host_library, case):
    """The CuPy backend runs the reference conv2d with its im2col and col2im kernels;
    a dilated window takes the reference im2col and col2im, launching nothing."""
    be = HostKernels(host_library)
    for dtype in (np.float32, np.float64):
        x, w2, bias, window, gc = _conv_arrays(case, dtype)
        be.launches.clear()
        got = _conv_all(be, x, w2, bias, window, gc, case.groups)
        assert bool(be.launches) == (window.dh * window.dw == 1), be.launches
        _assert_all(got, _conv_all(REFERENCE, x, w2, bias, window, gc, case.groups), True, np.dtype(dtype).name)


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=case_id)
def test_max_pool_through_the_cuda_kernels_matches_the_reference(host_library, case):
    be = HostKernels(host_library)
    for dtype in (np.float32, np.float64):
        x, window = _pool_input(case, dtype)
        be.launches.clear()
        got = _max_pool_all(be, x, window)
        assert ("max_pool" in be.launches) == (window.dh * window.dw == 1), be.launches
        for a, b in zip(got, _max_pool_all(REFERENCE, x, window)):
            np.testing.assert_array_equal(a, b)
