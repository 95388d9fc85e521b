"""The CUDA kernels of kernels/*.cu, checked three ways.

1. Compilation: every source compiles with ``nvcc -ptx`` (warnings are errors) and
   exports exactly the entry points the CuPy backend looks up. Skips without nvcc.
2. On the CPU, without a GPU: the CuPy backend over the CuPy stand-in (``fake_cupy.py``),
   whose ``RawModule`` compiles the same sources as C++ with g++ and a few lines standing
   in for the CUDA built-ins (``cuda_host.py``: one block of one thread, so each
   kernel's grid-stride loop visits every element). This checks the kernels' index
   arithmetic and the backend's argument marshalling against the generic path.
3. On a GPU: the same tests through CuPy, each kernel against the plain-CuPy generic
   path it replaces (``Backend.im2col(backend, ...)`` and so on). These cases are
   collected where CuPy is installed, and skip there without a CUDA device, with the
   reason.

Every comparison is exact: the kernels copy, compare, and add in the generic path's
order (see the comments in the sources). The max-pool argmax, which the generic path
does not keep, is checked against the first maximum found in the generic window view.
"""
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import minitorch_cnn as mt
import minitorch_cnn.optim as optim
from minitorch_cnn import backends
from minitorch_cnn.backends import cupy_backend
from minitorch_cnn.backends.reference import Backend, BackendUnavailable, Window

import fake_cupy

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels"
SOURCES = sorted(KERNEL_DIR.glob("*.cu"))
DTYPES = [np.float32, np.float64]

# ---------------------------------------------------------------- 1. nvcc compilation
NVCC = shutil.which("nvcc")


def test_every_kernel_source_is_known_to_the_backend():
    assert SOURCES, f"no CUDA sources in {KERNEL_DIR}"
    assert {p.name for p in SOURCES} == set(cupy_backend.KERNEL_SOURCES.values())


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH: CUDA sources not compile-checked")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_kernel_source_compiles_with_nvcc(source, tmp_path):
    ptx = tmp_path / (source.stem + ".ptx")
    options = [*cupy_backend.COMPILE_OPTIONS, "-Werror", "all-warnings"]
    run = subprocess.run([NVCC, "-ptx", "-arch=sm_80", *options, "-o", str(ptx), str(source)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"nvcc failed on {source.name}:\n{run.stderr}"
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx.read_text()))
    expected = {cupy_backend.entry_point(kernel, dtype)
                for kernel, file in cupy_backend.KERNEL_SOURCES.items() if file == source.name
                for dtype in cupy_backend.KERNEL_DTYPES}
    assert entries == expected


# --------------------------------------------- 2. and 3. the kernels on the CPU, on a GPU
@pytest.fixture(params=["cupy-standin"] + (["cupy"] if importlib.util.find_spec("cupy") else []))
def kernels(request):
    """A backend whose image ops run the CUDA kernels: on the CPU, or on a GPU."""
    if request.param == "cupy-standin":
        if shutil.which("g++") is None:
            pytest.skip("no C++ compiler (g++) to run the CUDA kernels on the CPU")
        with fake_cupy.installed() as be:
            yield be
        return
    try:
        yield backends.get_backend_by_name("cupy")
    except BackendUnavailable as exc:
        pytest.skip(f"no CUDA GPU/CuPy: {exc}")


# ------------------------------------------------------------------- shared test cases
# (C, H, W, N, kh, kw, sh, sw, ph, pw): odd sizes, strides 1-3, padding 0-2, kernels 1-5
WINDOWS = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 0),
    (2, 5, 7, 3, 3, 3, 1, 1, 1, 1),
    (3, 9, 6, 5, 2, 2, 2, 2, 0, 0),
    (1, 7, 7, 2, 3, 3, 2, 2, 1, 1),
    (2, 11, 9, 3, 5, 5, 1, 1, 2, 2),
    (3, 8, 10, 1, 4, 2, 2, 1, 2, 1),
    (2, 9, 9, 4, 3, 5, 3, 2, 0, 2),
    (1, 6, 13, 7, 1, 3, 1, 2, 0, 1),
    (4, 5, 5, 2, 5, 5, 2, 2, 2, 2),
    (2, 10, 10, 3, 2, 2, 3, 3, 0, 0),  # stride > kernel: some pixels in no window
]
# Max pooling also needs padding <= half the kernel (as PyTorch and nn.functional require).
POOL_WINDOWS = [w for w in WINDOWS if w[8] <= w[4] // 2 and w[9] <= w[5] // 2]


def _ids(case):
    c, h, w, n, kh, kw, sh, sw, ph, pw = case
    return f"x{c}x{h}x{w}x{n}-k{kh}x{kw}-s{sh}x{sw}-p{ph}x{pw}"


def _rng(case, dtype):
    return np.random.default_rng([*case, np.dtype(dtype).itemsize])


def _assert_same(kernel_out, generic_out, be):
    got, want = be.to_numpy(kernel_out), be.to_numpy(generic_out)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", WINDOWS, ids=_ids)
def test_im2col_and_col2im_match_the_generic_path(kernels, case, dtype):
    window = Window(*case[4:])
    rng = _rng(case, dtype)
    x = kernels.asarray(rng.standard_normal(case[:4]).astype(dtype))
    cols = kernels.im2col(x, window)
    _assert_same(cols, Backend.im2col(kernels, x, window), kernels)

    dcols = kernels.asarray(rng.standard_normal(cols.shape).astype(dtype))
    dx = kernels.col2im(dcols, x.shape, window)
    _assert_same(dx, Backend.col2im(kernels, dcols, x.shape, window), kernels)


def _pool_input(rng, shape, values, dtype):
    if values == "ties":  # few distinct values: most windows hold several maxima
        return rng.integers(-1, 2, size=shape).astype(dtype)
    if values == "negative":  # padding (-inf) must never win, zero padding would
        return -1 - rng.random(shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    if values == "nan":
        x[rng.random(shape) < 0.05] = np.nan
    return x


def _first_argmax(be, x, out, window):
    """Offset i*kw + j of each window's first maximum, from the window view."""
    c, oh, ow, n = out.shape
    win = be.windows(be.pad(x, window, -np.inf), window, oh, ow)
    hits = (win == out[:, None, None]).reshape(c, window.kh * window.kw, oh, ow, n)
    return hits.argmax(axis=1).astype(np.uint8)


@pytest.mark.parametrize("values", ["random", "ties", "negative"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", POOL_WINDOWS, ids=_ids)
def test_max_pool_and_backward_match_the_generic_path(kernels, case, dtype, values):
    window = Window(*case[4:])
    rng = _rng(case, dtype)
    x = kernels.asarray(_pool_input(rng, case[:4], values, dtype))
    out, arg = kernels.max_pool(x, window)
    want_out, want_arg = Backend.max_pool(kernels, x, window)
    _assert_same(out, want_out, kernels)
    _assert_same(arg, want_arg, kernels)
    _assert_same(arg, _first_argmax(kernels, x, want_out, window), kernels)

    dout = kernels.asarray(rng.standard_normal(out.shape).astype(dtype))
    _assert_same(kernels.max_pool_backward(dout, arg, x.shape, window),
                 Backend.max_pool_backward(kernels, dout, want_arg, x.shape, window), kernels)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_max_pool_propagates_nan(kernels, dtype):
    rng = np.random.default_rng(11)
    x = kernels.asarray(_pool_input(rng, (3, 9, 9, 4), "nan", dtype))
    out, _ = kernels.max_pool(x, Window(3, 3, 2, 2, 1, 1))
    want = kernels.to_numpy(Backend.max_pool(kernels, x, Window(3, 3, 2, 2, 1, 1))[0])
    assert np.isnan(want).any() and not np.isnan(want).all()
    _assert_same(out, want, kernels)


def test_kernels_cover_more_elements_than_one_grid(kernels):
    """Arrays of more elements than a capped grid has threads: on a GPU every kernel's
    grid-stride loop must take more than one step."""
    grid = cupy_backend.MAX_BLOCKS * cupy_backend.THREADS_PER_BLOCK
    rng = np.random.default_rng(7)
    x = kernels.asarray(rng.standard_normal((4, 64, 64, 160), dtype=np.float32))
    assert x.size > grid
    tiles, pool = Window(2, 2, 2, 2, 0, 0), Window(3, 3, 1, 1, 1, 1)
    cols = kernels.im2col(x, tiles)
    assert cols.size > grid
    _assert_same(cols, Backend.im2col(kernels, x, tiles), kernels)
    _assert_same(kernels.col2im(cols, x.shape, tiles), Backend.col2im(kernels, cols, x.shape, tiles), kernels)
    out, arg = kernels.max_pool(x, pool)
    assert out.size > grid
    want_out, want_arg = Backend.max_pool(kernels, x, pool)
    _assert_same(out, want_out, kernels)
    _assert_same(kernels.max_pool_backward(out, arg, x.shape, pool),
                 Backend.max_pool_backward(kernels, out, want_arg, x.shape, pool), kernels)


# ------------------------------------------------------------ what the kernels don't take
def kernel_launches():
    """The raw kernels the stand-in ran since its counters were reset, by kernel name."""
    return [name.split()[1].rsplit("_", 1)[0] for name in fake_cupy.counters.launches.elements()
            if name.startswith("kernel ")]


def test_other_dtypes_and_large_pool_windows_take_the_reference_path():
    with fake_cupy.installed() as be:
        rng = np.random.default_rng(3)
        half = be.asarray(rng.standard_normal((2, 6, 6, 3)).astype(np.float16))
        conv, tiles = Window(3, 3, 1, 1, 1, 1), Window(2, 2, 2, 2, 0, 0)
        fake_cupy.counters.reset()
        _assert_same(be.im2col(half, conv), Backend.im2col(be, half, conv), be)
        out, arg = be.max_pool(half, tiles)
        _assert_same(out, Backend.max_pool(be, half, tiles)[0], be)
        dout = be.xp.ones_like(out)
        _assert_same(be.max_pool_backward(dout, arg, half.shape, tiles),
                     Backend.max_pool_backward(be, dout, arg, half.shape, tiles), be)
        assert kernel_launches() == []
        # a 17x17 window has offsets up to 288, more than a uint8 argmax holds
        x = be.asarray(rng.standard_normal((1, 17, 17, 2)).astype(np.float32))
        large = Window(17, 17, 1, 1, 0, 0)
        out, arg = be.max_pool(x, large)
        assert arg.dtype == np.int64
        ones = be.xp.ones_like(out)
        fake_cupy.counters.reset()
        _assert_same(be.max_pool_backward(ones, arg, x.shape, large),
                     Backend.max_pool_backward(be, ones, arg, x.shape, large), be)
        assert kernel_launches() == ["col2im", "col2im"]  # the reference pool's backward is a col2im
        fake_cupy.counters.reset()
        be.max_pool(x, Window(16, 16, 1, 1, 0, 0))  # offsets up to 255: the kernel's
        assert kernel_launches() == ["max_pool"]


def test_has_kernel_limits():
    has = cupy_backend.CupyBackend.has_kernel
    assert has(np.float32, 10, 2 ** 31 - 1) and has("float64", 1)
    assert not has(np.float16, 10)
    assert not has(np.int64, 10)
    assert not has(np.float32, 10, 2 ** 31)  # beyond the kernels' 32-bit indexing


@pytest.mark.parametrize("total, blocks", [(1, 1), (256, 1), (257, 2), (256 * 1000, 1000),
                                            (2 ** 31 - 1, cupy_backend.MAX_BLOCKS)])
def test_launch_blocks(total, blocks):
    assert cupy_backend.THREADS_PER_BLOCK == 256
    assert cupy_backend.launch_blocks(total) == blocks


# ------------------------------------------------- optimizer steps (kernels/optim.cu)
OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, hyper", OPTIMIZER_CASES, ids=lambda c: str(c))
def test_optimizer_step_kernels_match_optim_py(kernels, name, hyper, dtype):
    """Three steps of each optimizer, one kernel per parameter and step, against
    optim.py's own body on NumPy; the second parameter's gradient is a transposed view."""
    rng = np.random.default_rng(len(hyper))
    start = [rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((3, 4)).astype(dtype)]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in start] for _ in range(3)]
    finals = {}
    for backend_name in ("numpy", "cupy"):
        with mt.backend(backend_name):
            params = [mt.tensor(p, dtype=dtype, requires_grad=True) for p in start]
            opt = getattr(optim, name)(params, **hyper)
            for step_grads in grads:
                params[0].grad = mt.tensor(step_grads[0], dtype=dtype)
                params[1].grad = mt.tensor(np.ascontiguousarray(step_grads[1].T), dtype=dtype).T
                if backend_name == "cupy" and kernels.xp is fake_cupy.backend().xp:
                    fake_cupy.counters.reset()
                    opt.step()
                    assert kernel_launches() == [f"{name.lower()}_step"] * 2
                else:
                    opt.step()
            finals[backend_name] = [p.numpy() for p in params]
    tol = 1e-6 if dtype == np.float32 else 1e-14  # a GPU may fuse a multiply-add
    for got, want in zip(finals["cupy"], finals["numpy"]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ---------------------------------------------- batch normalisation (kernels/batch_norm.cu)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels, count", [(1, 1), (3, 50), (4, 777)])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
def test_batch_norm_kernels_match_the_reference_bodies(kernels, channels, count, affine, relu, dtype):
    rng = np.random.default_rng([channels, count, affine, relu])
    rows = kernels.asarray((rng.standard_normal((channels, count)) * 3 + 1).astype(dtype))
    weight = kernels.asarray(rng.uniform(0.5, 2, channels).astype(dtype)) if affine else None
    shift = kernels.asarray(rng.standard_normal(channels).astype(dtype))
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)

    def same(got, want):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(kernels.to_numpy(got), kernels.to_numpy(want), **tol)

    if kernels.xp is fake_cupy.backend().xp:
        fake_cupy.counters.reset()
    forward = kernels.batch_norm(rows, weight, shift, 1e-5, relu=relu)
    if kernels.xp is fake_cupy.backend().xp:
        assert fake_cupy.counters.launches == {"kernel batch_norm_" + np.dtype(dtype).name: 1}
    want = Backend.batch_norm(kernels, rows, weight, shift, 1e-5, relu=relu)
    for got, expected in zip(forward, want):
        same(got, expected)

    out, mean, _, inv_std = forward
    g = kernels.asarray(rng.standard_normal((channels, count)).astype(dtype))
    relu_out = out if relu else None
    for use_batch, with_rows in ((True, True), (False, True), (False, False)):
        args = (g, rows if with_rows else None, mean if with_rows else None, inv_std, weight, use_batch, relu_out)
        got, expected = kernels.batch_norm_backward(*args), Backend.batch_norm_backward(kernels, *args)
        for a, b in zip(got, expected):
            assert (a is None) == (b is None)
            if a is not None:
                same(a, b)


# ----------------------------------------------------------- ReLU's backward (kernels/relu.cu)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["contiguous", "nchw-view-of-chwn", "mixed"])
def test_relu_backward_kernel_matches_the_reference_body(kernels, layout, dtype):
    rng = np.random.default_rng(5)
    y, g = (rng.standard_normal((3, 5, 4, 6)).astype(dtype) for _ in range(2))
    y[0, 0, 0, :3] = [0, np.nan, -0.0]
    g[0, 0, 1, :2] = [np.inf, np.nan]
    y, g = kernels.asarray(y), kernels.asarray(g)
    if layout != "contiguous":  # (N, C, H, W) views of (C, H, W, N) memory, as the engine's
        y = kernels.xp.ascontiguousarray(y.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
        if layout == "nchw-view-of-chwn":
            g = kernels.xp.ascontiguousarray(g.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    if kernels.xp is fake_cupy.backend().xp:
        fake_cupy.counters.reset()
    got = kernels.relu_backward(g, y)
    if kernels.xp is fake_cupy.backend().xp:  # the kernel where the layouts agree
        assert kernel_launches() == ([] if layout == "mixed" else ["relu_backward"])
    _assert_same(got, Backend.relu_backward(kernels, g, y), kernels)
