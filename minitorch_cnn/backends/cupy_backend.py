"""The CuPy backend: the reference bodies on GPU arrays, and CUDA kernels of its own
for the image ops where one pays (im2col, col2im, max pooling forward and backward).

Every other op runs the reference body of :class:`~.reference.Backend` with ``xp = cupy``.
The kernels are CUDA C sources, ``kernels/*.cu``, compiled once per process with
``cupy.RawModule`` (NVRTC; CuPy also caches the binaries on disk) and memoized. Each
source exports one ``extern "C"`` entry point per dtype, ``<kernel>_float32`` and
``<kernel>_float64``; other dtypes, and arrays too large for the kernels' 32-bit
indexing, take the reference body.

Importing this module does not import CuPy: :func:`create` does, when the "cupy"
backend is first asked for, and raises :class:`BackendUnavailable` with a one-line
reason when CuPy, a GPU or a working CUDA stack is missing.

Past start-up nothing here waits for the GPU or copies to the host, so a training step
queues its work without a round trip; ``to_numpy`` and ``synchronize`` are the explicit
exceptions.
Running out of GPU memory raises ``cupy.cuda.memory.OutOfMemoryError``, a
``MemoryError``, which the train command turns into "try a smaller --batch-size".
"""
import functools
import math

import numpy as np

from .reference import Backend, BackendUnavailable, implemented_by
from .sources import read_kernel_source

# The extras install CuPy with its CUDA toolkit wheels (NVRTC, cuBLAS, cuRAND: CuPy's
# "[ctk]" extra), so a machine with only the NVIDIA driver needs nothing more.
INSTALL_HINT = ("pip install 'minitorch_cnn[cuda12]' (driver for CUDA 12) or 'minitorch_cnn[cuda13]' "
                "(CUDA 13): these bring CuPy and the CUDA libraries it needs, so only the NVIDIA "
                "driver must be on the machine; `nvidia-smi` shows its CUDA version")

# kernel name -> the source in kernels/ that defines its entry points (see entry_point)
KERNEL_SOURCES = {
    "im2col": "im2col.cu",
    "col2im": "col2im.cu",
    "max_pool": "max_pool.cu",
    "max_pool_backward": "max_pool.cu",
    "relu_backward": "relu.cu",
    "batch_norm": "batch_norm.cu",
    "batch_norm_backward": "batch_norm.cu",
    "sgd_step": "optim.cu",
    "adam_step": "optim.cu",
}
KERNEL_DTYPES = ("float32", "float64")
COMPILE_OPTIONS = ("-std=c++14",)

THREADS_PER_BLOCK = 256
# With a grid-stride loop every launch can stop at this many blocks: 2**21 threads are
# several times what the largest current GPUs hold at once (an H100: 132 SMs x 2048),
# and larger arrays loop.
MAX_BLOCKS = 2 ** 13
# The kernels index with 32-bit integers (64-bit division costs several times more).
INDEX_LIMIT = 2 ** 31
# The max-pool routing is a uint8 window offset; larger windows take the reference body.
MAX_POOL_WINDOW_LIMIT = 256

# cudaError_t values (CUDA runtime API, driver_types.h); CuPy does not name them.
CUDA_ERROR_INSUFFICIENT_DRIVER = 35
CUDA_ERROR_NO_DEVICE = 100

# A kernel and a matrix product small enough to prove the CUDA stack works (NVRTC, the
# driver, cuBLAS) before the backend is handed out. Grid-stride, like the engine's kernels.
_PROBE_SOURCE = r"""extern "C" __global__ void mt_probe(float* x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) x[i] += 1.0f;
}"""


# ---- kernel sources and launch geometry (pure: no CuPy needed) ------------------------
def entry_point(kernel, dtype):
    """The C name of ``kernel``'s entry point for ``dtype``, e.g. ``im2col_float32``."""
    return f"{kernel}_{np.dtype(dtype).name}"


def launch_blocks(total):
    """Blocks of THREADS_PER_BLOCK threads for ``total`` elements, one thread each,
    capped at MAX_BLOCKS (the kernels' grid-stride loops cover the rest)."""
    return min(-(-total // THREADS_PER_BLOCK), MAX_BLOCKS)


def _geometry(x_shape, window, oh, ow):
    """The (C, H, W, N, kh, kw, sh, sw, ph, pw, OH, OW) arguments every kernel takes, as the
    C ``int``s the kernels declare (a Python int would be passed as a 64-bit value). The
    kernels bound-check every window, so the extra bottom/right padding of ``ceil_mode``
    and ``padding="same"`` needs only OH and OW; dilation they do not take."""
    return tuple(np.int32(v) for v in (*x_shape, *window[:6], oh, ow))


def cuda_kernel(kernel):
    """Label a method as the override of the reference body of the same name by the CUDA
    kernel ``kernel`` (its source: ``KERNEL_SOURCES``), for the backend contract's table."""
    return implemented_by(f"CUDA: `kernels/{KERNEL_SOURCES[kernel]}`")


# ---- the backend ------------------------------------------------------------------------
class CupyBackend(Backend):
    """CuPy arrays; some reference bodies replaced by CUDA kernels.

    ``Backend.im2col(self, ...)`` (and likewise for the others) still runs the plain-CuPy
    reference body, which the tests compare the kernels against.
    """

    def __init__(self, cupy):
        super().__init__("cupy", cupy)
        # message -> a 0-d device bool, true if a check of the input failed (check_later)
        self._pending_checks = {}

    def to_numpy(self, array):
        self.raise_failed_checks()
        return self.xp.asnumpy(array)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()
        self.raise_failed_checks()

    # ---- input checks that must not wait for the GPU -----------------------------------
    def check_later(self, failed, message):
        """Raise ``IndexError(message)`` at the next explicit sync (``to_numpy``, hence
        ``.item()`` and ``.numpy()``, or ``synchronize``) if the 0-d device bool ``failed``
        is true. Checking at once would wait for the GPU in every training step; the
        training loop already syncs every few steps. Repeats of a message fold into one
        flag (one small launch), so the pending checks never grow."""
        pending = self._pending_checks.get(message)
        if pending is None:
            self._pending_checks[message] = failed
        else:
            self.xp.logical_or(pending, failed, out=pending)

    def raise_failed_checks(self):
        if not self._pending_checks:
            return
        checks, self._pending_checks = self._pending_checks, {}
        failed = self.xp.asnumpy(self.xp.stack(list(checks.values())))
        for message, bad in zip(checks, failed):
            if bad:
                raise IndexError(message)

    def seed(self, seed):
        """Reseed lazily: the generator is built at the first draw after a seed, so a net
        without dropout does no generator work at all, though training reseeds every step."""
        self._seed, self._rng = seed, None

    @property
    def rng(self):
        """Philox4x32-10 (PyTorch's CUDA generator too) rather than CuPy's default XORWOW:
        XORWOW's set-up skips every per-thread state ahead by its thread index (cuRAND's
        documented slow path); Philox's is O(1)."""
        if self._rng is None:
            self._rng = self.xp.random.Generator(self.xp.random.Philox4x3210(self._seed))
        return self._rng

    # ---- the CUDA kernels ---------------------------------------------------------------
    def kernel(self, kernel, dtype):
        """The compiled entry point of ``kernel`` for ``dtype`` (compiled on first use)."""
        return _kernel_function(self.xp, kernel, np.dtype(dtype).name)

    def prepare(self):
        """Compile every kernel now, e.g. so that a benchmark times no compilation."""
        for kernel in KERNEL_SOURCES:
            for dtype in KERNEL_DTYPES:
                self.kernel(kernel, dtype)

    def launch(self, kernel, dtype, total, args, blocks=None):
        """Run ``kernel`` over ``total`` elements, one thread each (or in ``blocks`` blocks:
        a kernel with one block per row), on the current stream."""
        if total:
            blocks = launch_blocks(total) if blocks is None else min(blocks, MAX_BLOCKS)
            self.kernel(kernel, dtype)((blocks,), (THREADS_PER_BLOCK,), args)

    @staticmethod
    def dilated(window):
        """Whether ``window`` is dilated, which no CUDA kernel here takes."""
        return window.dh * window.dw != 1

    @staticmethod
    def has_kernel(dtype, *sizes):
        """Whether the CUDA kernels take a call: float32/float64, and arrays of these
        sizes all indexable with 32-bit integers."""
        return np.dtype(dtype).name in KERNEL_DTYPES and all(s < INDEX_LIMIT for s in sizes)

    # ---- image ops (the contracts of reference.Backend) ------------------------------------
    @cuda_kernel("im2col")
    def im2col(self, x, window):
        c, h, w, n = x.shape
        oh, ow = window.out_size(h, w)
        shape = (c, window.kh, window.kw, oh, ow, n)
        if self.dilated(window) or not self.has_kernel(x.dtype, x.size, math.prod(shape)):
            return super().im2col(x, window)
        x = self.xp.ascontiguousarray(x)
        cols = self.xp.empty(shape, dtype=x.dtype)
        self.launch("im2col", x.dtype, cols.size, (x, cols) + _geometry(x.shape, window, oh, ow))
        return cols

    @cuda_kernel("col2im")
    def col2im(self, cols, x_shape, window):
        _, _, _, oh, ow, _ = cols.shape
        dx_size = math.prod(x_shape)
        if self.dilated(window) or not self.has_kernel(cols.dtype, cols.size, dx_size):
            return super().col2im(cols, x_shape, window)
        cols = self.xp.ascontiguousarray(cols)
        dx = self.xp.empty(x_shape, dtype=cols.dtype)
        self.launch("col2im", cols.dtype, dx_size, (cols, dx) + _geometry(x_shape, window, oh, ow))
        return dx

    @cuda_kernel("max_pool")
    def max_pool(self, x, window):
        c, h, w, n = x.shape
        oh, ow = window.out_size(h, w)
        shape = (c, oh, ow, n)
        if (window.kh * window.kw > MAX_POOL_WINDOW_LIMIT or self.dilated(window)
                or not self.has_kernel(x.dtype, x.size, math.prod(shape))):
            return super().max_pool(x, window)
        x = self.xp.ascontiguousarray(x)
        out = self.xp.empty(shape, dtype=x.dtype)
        arg = self.xp.empty(shape, dtype=np.uint8)
        self.launch("max_pool", x.dtype, out.size,
                    (x, out, arg) + _geometry(x.shape, window, oh, ow) + (x.dtype.type(-np.inf),))
        return out, arg

    @cuda_kernel("max_pool_backward")
    def max_pool_backward(self, dout, arg, x_shape, window):
        if arg.dtype != np.uint8 or self.dilated(window) or not self.has_kernel(dout.dtype, dout.size, math.prod(x_shape)):
            return super().max_pool_backward(dout, arg, x_shape, window)
        _, oh, ow, _ = dout.shape
        dout = self.xp.ascontiguousarray(dout)
        arg = self.xp.ascontiguousarray(arg)
        dx = self.xp.empty(x_shape, dtype=dout.dtype)
        self.launch("max_pool_backward", dout.dtype, dx.size,
                    (dout, arg, dx) + _geometry(x_shape, window, oh, ow))
        return dx


    # ---- ReLU's backward --------------------------------------------------------------------
    @cuda_kernel("relu_backward")
    def relu_backward(self, g, y):
        """One launch over the memory of ``g`` and ``y`` where they share a dense layout
        (our activations are NCHW views of CHWN memory: no copy); the gradient comes back
        in that layout."""
        order = _memory_order(y)
        if order is None or g.strides != y.strides or g.dtype != y.dtype or not self.has_kernel(g.dtype, g.size):
            return super().relu_backward(g, y)
        y_dense = y.transpose(order)
        dx = self.xp.empty_like(y_dense)
        self.launch("relu_backward", g.dtype, g.size, (g.transpose(order), y_dense, dx, np.uint32(g.size)))
        return dx.transpose(tuple(int(d) for d in np.argsort(order)))

    # ---- batch normalisation: one kernel each way, one block per channel ---------------------
    def _takes_rows(self, rows, *per_channel):
        """Whether the batch-norm kernels take these: contiguous rows of a kernel dtype and
        per-channel arrays (None: absent) of the same dtype."""
        return (rows.ndim == 2 and rows.flags.c_contiguous and self.has_kernel(rows.dtype, rows.size)
                and all(a is None or (a.dtype == rows.dtype and a.flags.c_contiguous) for a in per_channel))

    @cuda_kernel("batch_norm")
    def batch_norm(self, rows, weight, shift, eps, relu=False):
        if not self._takes_rows(rows, weight, shift):
            return super().batch_norm(rows, weight, shift, eps, relu)
        channels, count = rows.shape
        out = self.xp.empty_like(rows)
        mean, var, inv_std = (self.xp.empty(channels, dtype=rows.dtype) for _ in range(3))
        self.launch("batch_norm", rows.dtype, rows.size,
                    (rows, shift if weight is None else weight, shift, out, mean, var, inv_std,
                     np.int32(channels), np.int32(count), np.float64(eps), np.int32(weight is not None),
                     np.int32(relu)), blocks=channels)
        return out, mean, var, inv_std

    @cuda_kernel("batch_norm_backward")
    def batch_norm_backward(self, g, rows, mean, inv_std, weight, use_batch, relu_out=None):
        g = self.xp.ascontiguousarray(g)
        if not (self._takes_rows(g, rows, mean, inv_std, weight, relu_out) and (rows is not None or not use_batch)):
            return super().batch_norm_backward(g, rows, mean, inv_std, weight, use_batch, relu_out)
        channels, count = g.shape
        gx = self.xp.empty_like(g)
        g_xhat = None if rows is None else self.xp.empty(channels, dtype=g.dtype)
        g_sum = self.xp.empty(channels, dtype=g.dtype)
        # arrays a case does not read (rows, mean, weight, relu_out) are passed as another
        self.launch("batch_norm_backward", g.dtype, g.size,
                    (g, g if rows is None else rows, inv_std if mean is None else mean, inv_std,
                     inv_std if weight is None else weight,
                     g if relu_out is None else relu_out, gx, g_sum if g_xhat is None else g_xhat, g_sum,
                     np.int32(channels), np.int32(count), np.int32(use_batch), np.int32(rows is not None),
                     np.int32(weight is not None), np.int32(relu_out is not None)), blocks=channels)
        return gx, g_xhat, g_sum

    # ---- optimizer steps: one kernel per parameter (optim.py calls these when present) ------
    def _step_arrays(self, param, grad):
        """``param`` and ``grad`` as a kernel takes them, or None where it cannot: a
        parameter updated in place must be contiguous; a gradient view is copied."""
        if not (self.has_kernel(param.dtype, param.size) and param.flags.c_contiguous
                and grad.dtype == param.dtype and grad.shape == param.shape):
            return None
        return param, self.xp.ascontiguousarray(grad)

    @cuda_kernel("sgd_step")
    def sgd_step(self, param, grad, state, group):
        """optim.SGD's update of ``param`` in one launch; False where the kernel cannot
        take it (optim.py then runs its own body)."""
        arrays = self._step_arrays(param, grad)
        if arrays is None:
            return False
        momentum, t = group["momentum"], param.dtype.type
        first = bool(momentum) and "momentum_buffer" not in state
        if first:
            state["momentum_buffer"] = self.xp.empty_like(param)
        buf = state["momentum_buffer"] if momentum else param  # not read without momentum
        self.launch("sgd_step", param.dtype, param.size,
                    (*arrays, buf, np.uint32(param.size), t(group["lr"]), t(momentum),
                     t(1 - group["dampening"]), t(group["weight_decay"]), np.int32(group["nesterov"]),
                     np.int32(first)))
        return True

    @cuda_kernel("adam_step")
    def adam_step(self, param, grad, state, group):
        """optim.Adam's update of ``param`` in one launch (bias corrections computed here,
        on the host, from the step count); False where the kernel cannot take it."""
        arrays = self._step_arrays(param, grad)
        if arrays is None:
            return False
        if not state:
            state.update(step=0, exp_avg=self.xp.zeros_like(param), exp_avg_sq=self.xp.zeros_like(param))
        state["step"] += 1
        (beta1, beta2), step, t = group["betas"], state["step"], param.dtype.type
        self.launch("adam_step", param.dtype, param.size,
                    (*arrays, state["exp_avg"], state["exp_avg_sq"], np.uint32(param.size), t(1 - beta1),
                     t(beta2), t(1 - beta2), t(group["lr"] / (1 - beta1 ** step)),
                     t(math.sqrt(1 - beta2 ** step)), t(group["eps"]), t(group["weight_decay"])))
        return True


def _memory_order(a):
    """The axis order in which ``a`` is C-contiguous (``a.transpose(order)`` is), or None."""
    order = tuple(sorted(range(a.ndim), key=lambda d: -abs(a.strides[d])))
    return order if a.transpose(order).flags.c_contiguous else None


@functools.lru_cache(maxsize=None)
def _raw_module(cupy, filename):
    """One RawModule per source file and process."""
    return cupy.RawModule(code=read_kernel_source(filename), options=COMPILE_OPTIONS)


@functools.lru_cache(maxsize=None)
def _kernel_function(cupy, kernel, dtype_name):
    return _raw_module(cupy, KERNEL_SOURCES[kernel]).get_function(entry_point(kernel, dtype_name))


# ---- construction: why the backend can or cannot run here ---------------------------------
def create():
    """The CuPy backend, or :class:`BackendUnavailable` saying why it cannot run here.
    Its kernels are compiled here, so that a compile error shows now, not mid-training."""
    cupy = _import_cupy()
    _check_device(cupy)
    _probe(cupy)
    backend = CupyBackend(cupy)
    _compile_kernels(backend)
    return backend


def _one_line(exc):
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _import_cupy():
    try:
        import cupy
    except ModuleNotFoundError as exc:
        if exc.name != "cupy":
            raise BackendUnavailable(f"CuPy is installed but broken, it cannot import {exc.name!r} "
                                     f"({_one_line(exc)}); reinstall it: {INSTALL_HINT}") from None
        raise BackendUnavailable(f"CuPy is not installed; {INSTALL_HINT}") from None
    except ImportError as exc:  # e.g. a CUDA library CuPy links against is missing
        raise BackendUnavailable(f"CuPy is installed but fails to import ({_one_line(exc)}); "
                                 f"reinstall the build for your CUDA version: {INSTALL_HINT}") from None
    return cupy


def _cuda_version(code):
    """CUDA's version code (e.g. 12040) as text ("12.4")."""
    return f"{code // 1000}.{code % 1000 // 10}"


def _check_device(cupy):
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as exc:
        raise BackendUnavailable(_device_error_reason(runtime, exc)) from None
    if count < 1:
        raise BackendUnavailable("no CUDA device: cupy.cuda.runtime.getDeviceCount() found none")


def _device_error_reason(runtime, exc):
    status = getattr(exc, "status", None)
    if status == CUDA_ERROR_INSUFFICIENT_DRIVER:
        driver = runtime.driverGetVersion()
        if driver == 0:  # what the runtime reports when no NVIDIA driver is loaded at all
            return f"no CUDA device: no NVIDIA driver found ({_one_line(exc)})"
        needed = runtime.runtimeGetVersion()
        return (f"NVIDIA driver too old: it supports CUDA up to {_cuda_version(driver)}, but this "
                f"CuPy is built for CUDA {_cuda_version(needed)}; update the driver, or install "
                f"the CuPy build for CUDA {driver // 1000}: {INSTALL_HINT}")
    if status == CUDA_ERROR_NO_DEVICE:
        return f"no CUDA device ({_one_line(exc)})"
    return f"no usable CUDA device ({_one_line(exc)})"


def _probe(cupy):
    """Compile and run a tiny kernel and a matrix product: the backend would fail on its
    first op otherwise (no NVRTC library, a cuBLAS mismatch, a GPU too new for this CuPy)."""
    try:
        x = cupy.zeros(32, dtype=cupy.float32)
        cupy.RawKernel(_PROBE_SOURCE, "mt_probe")((1,), (32,), (x, np.int32(x.size)))
        y = x.reshape(4, 8) @ x.reshape(8, 4)
        ok = bool((y == 8).all())  # the one host round trip, at start-up
    except Exception as exc:  # anything here means a broken CUDA stack; say what broke
        raise BackendUnavailable(f"CuPy is installed but broken: a tiny CUDA kernel failed to "
                                 f"compile or run ({_one_line(exc)}); {INSTALL_HINT}") from None
    if not ok:
        raise BackendUnavailable("CuPy is installed but broken: a tiny CUDA kernel ran but "
                                 "computed a wrong result")


def _compile_kernels(backend):
    try:
        backend.prepare()
    except Exception as exc:  # CuPy's CompileException carries NVRTC's log
        raise BackendUnavailable(f"CuPy works but the engine's CUDA kernels (kernels/*.cu) fail to "
                                 f"compile ({_one_line(exc)}); {INSTALL_HINT}") from None
