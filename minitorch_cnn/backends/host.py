"""The NumPy backend: the reference bodies made fast, each a named override.

Three things make it fast, and each can be switched off to fall back on the reference
body of ``reference.py``, which gives the same numbers (to rounding):
- **C kernels** (``kernels/*.c``, built and loaded by ``host_kernels.py``) for max
  pooling, col2im, ReLU, batch normalisation (alone, and fused with the ReLU and max
  pool after it) and small convolutions. The methods marked ``@c_kernel`` run them where
  they are built and every floating-point array is float32, and the reference body
  elsewhere (``MINITORCH_CNN_HOST_KERNELS=0`` switches them off).
- **Cache blocking**: convolutions too large for the cache make their column matrices
  (and, backward, their gradients) a block of output rows at a time, and use each
  block while it is in cache.
- **Threads**: NumPy releases the GIL inside each operation, so threads that each take
  a block of channels (one contiguous block of memory in the CHWN layout) or of a matrix
  product run on every core.

Two kinds of threads would share the cores, and they do not mix. OpenBLAS's spin for
a while after each product, on the cores our threads need; ours take tens of
microseconds to wake, which only large work repays. So the backend runs in one of two
modes: large work is split across our threads (the products too, each on one BLAS
thread), and that mode lasts while large work keeps coming (``KEEP_CALLS``); without
large work (a small network at a small batch) BLAS runs each product on its own
threads. The caller's BLAS setting is restored after every call. Which way a call runs
depends only on its size, the thread count and the calls before it, never on timing,
so a seeded run gives the same numbers every time. docs/performance.md has the
measurements behind each constant.
"""
import contextlib
import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from . import host_kernels
from .host_memory import keep_freed_memory
from .reference import Backend, implemented_by


def available_cores():
    """The cores this process may run on (PyTorch's default thread count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def core_cache_bytes(default=512 << 10, caches=Path("/sys/devices/system/cpu/cpu0/cache")):
    """The size of the largest data cache a core has to itself (Linux sysfs, ``caches``:
    the L2 on most CPUs), or ``default`` where the system does not say."""
    sizes = []
    for index in caches.glob("index*"):
        try:
            shared = (index / "shared_cpu_list").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind in ("Data", "Unified") and shared == "0" and size.endswith("K") and size[:-1].isdigit():
            sizes.append(int(size[:-1]) << 10)
    return max(sizes, default=default)


def c_kernel(source):
    """Mark a method as the override, by the C kernels of ``kernels/<source>``, of the
    reference body of the same name. It is called as ``method(self, lib, *args)`` where
    the kernels are loaded and every floating-point array among the arguments is float32
    (the kernels' one dtype), and may return NotImplemented for a call its kernel does
    not take (a layout or window it does not handle); every other call runs the
    reference body. This is the one place that decides kernel or reference."""
    def decorate(method):
        reference = getattr(Backend, method.__name__)

        @functools.wraps(method)
        def dispatch(self, *args, **kwargs):
            lib = self.kernels_for(*args, *kwargs.values())
            result = NotImplemented if lib is None else method(self, lib, *args, **kwargs)
            return reference(self, *args, **kwargs) if result is NotImplemented else result

        return implemented_by(f"C: `kernels/{source}`")(dispatch)
    return decorate


class HostBackend(Backend):
    # Work that enters our mode: bytes a kernel moves, or flops (and bytes) of a product;
    # at half of it, lenet at batch 128 entered our mode and ran slower.
    WAKE_BYTES = 16 << 20
    WAKE_FLOPS = 256 << 20
    # Work that is split while in our mode: ~100 us on one core, well above a hand-off.
    SPLIT_BYTES = 1 << 20
    SPLIT_FLOPS = 8 << 20
    # Our mode ends this many calls after the last split: a count, not a time, since a
    # product's rounding can depend on the mode (same seed, same numbers).
    KEEP_CALLS = 64
    # Blocks of a split product start at multiples of this many rows or columns (half of
    # it for short products), so that each block's SIMD kernels run on whole vectors.
    ALIGN = 16
    # A deep product (a weight gradient: depth DEEP times its rows plus columns, or a
    # result of at most SMALL_RESULT elements) is summed from DEPTH_CHUNK-deep products,
    # whose operands stay in L2.
    DEEP = 64
    SMALL_RESULT = 1024
    DEPTH_CHUNK = 1024
    # A long product of 2-8 rows and a depth of at most 32 (a first layer's forward) is
    # made in blocks of NARROW_BLOCK columns, whose share of the right operand stays in L2.
    NARROW_ROWS = range(2, 9)
    NARROW_DEPTH = 32
    NARROW_BLOCK = 4096
    # Convolutions with at most this many input and output channels (and stride 1) read
    # their columns in place, in C; beyond it each output's taps lie too far apart for the
    # cache and BLAS's packed product wins.
    SMALL_CONV_CHANNELS = 24
    # Column matrices larger than this are made and multiplied a block of output rows at
    # a time (4 MB: L2-sized blocks lose BLAS speed) ...
    CACHE_BLOCK_BYTES = 4 << 20

    def __init__(self, name="numpy", cache_block_bytes=CACHE_BLOCK_BYTES, buffer_block_bytes=None):
        super().__init__(name, np)
        keep_freed_memory()  # each training step reuses the last one's memory
        self.cache_block_bytes = cache_block_bytes
        # ... and at most a core's own cache where the blocks take turns in one buffer
        # (columns that are not kept: inference).
        self.buffer_block_bytes = core_cache_bytes() if buffer_block_bytes is None else buffer_block_bytes
        self._pool = None
        self._blas = None
        self._blas_before = None  # BLAS's thread counts before set_num_threads(1)
        self._ours_left = 0
        self._splitting = False
        self.kernels, self.kernels_unavailable = None, "not loaded yet"
        self._kernels_tried = False
        self.set_num_threads(available_cores())

    def seed(self, seed):
        """Reseed, and start again in the plain mode: whether a product runs in our mode
        can change its rounding, so a seeded run's numbers must not depend on what ran
        before the seed (the training loop reseeds before every step, so a resumed run
        repeats an uninterrupted one exactly)."""
        super().seed(seed)
        self._ours_left = 0

    def set_num_threads(self, threads):
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"the number of threads must be a positive int, got {threads!r}")
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None  # started again by the first split
        # One thread means BLAS's too, as in PyTorch: set once here, not around every call
        # (a round trip through threadpoolctl costs more than a small product).
        if threads == 1 and self._blas_before is None:
            self._blas_before = [(lib, lib.get_num_threads()) for lib in self._blas_libraries()]
            for lib, _ in self._blas_before:
                lib.set_num_threads(1)
        elif threads > 1 and self._blas_before is not None:
            for lib, before in self._blas_before:
                lib.set_num_threads(before)
            self._blas_before = None
        self.threads = threads
        self._ours_left = 0

    # ---- the two modes ------------------------------------------------------------
    def _plan(self, large, splittable):
        """How to run a piece of work: True to split it across our threads; False to
        run it whole in our mode (BLAS on one thread, so that its threads stay
        asleep); None for a plain call, BLAS on its own threads."""
        if self.threads == 1 or self._splitting:  # BLAS is on one thread already
            return None
        ours = self._ours_left > 0
        self._ours_left -= ours
        if large or (ours and splittable):
            return True
        return False if ours else None

    def _mode(self, split):
        """The context that ``_plan``'s answer runs in."""
        return contextlib.nullcontext() if split is None else self._our_mode(split)

    @contextlib.contextmanager
    def _our_mode(self, split):
        with self._single_threaded_blas():
            self._splitting = split
            try:
                yield
            finally:
                self._splitting = False
        if split:
            self._ours_left = self.KEEP_CALLS

    @contextlib.contextmanager
    def _single_threaded_blas(self):
        changed = [lib for lib in self._blas_libraries() if lib.get_num_threads() != 1]
        previous = [lib.get_num_threads() for lib in changed]
        for lib in changed:
            lib.set_num_threads(1)
        try:
            yield
        finally:
            for lib, n in zip(changed, previous):
                lib.set_num_threads(n)

    def _blas_libraries(self):
        if self._blas is None:
            self._blas = _blas_controllers()
        return self._blas

    def _run_split(self, body, count):
        parts = min(self.threads, count)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, "minitorch")
        bounds = [count * p // parts for p in range(parts + 1)]
        helpers = [self._pool.submit(body, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        try:
            body(bounds[0], bounds[1])
        finally:
            for helper in helpers:
                helper.result()

    # ---- splitting work -------------------------------------------------------------
    def splits(self, nbytes):
        return self.threads > 1 and nbytes >= min(self.SPLIT_BYTES, self.WAKE_BYTES)

    def parallel(self, body, count, nbytes):
        split = self._plan(nbytes >= self.WAKE_BYTES, nbytes >= self.SPLIT_BYTES)
        with self._mode(split):
            if split and count > 1:
                return self._run_split(body, count)
            return body(0, count)

    @implemented_by("threads, cache-sized blocks")
    def matmul(self, a, b, out=None):
        """Split by rows of ``a`` or columns of ``b``, whichever is longer; by the inner
        dimension when the result is small; a stack of products by stack entries.
        Other shapes (broadcast stacks) run whole."""
        xp = self.xp
        dims = _product_dims(a, b)
        if dims is None:
            with self._mode(self._plan(False, False)):
                return xp.matmul(a, b, out=out)
        stack, m, depth, n, shape = dims
        flops, nbytes = 2 * stack * m * depth * n, a.nbytes + b.nbytes
        deep = len(shape) == 2 and depth >= 2 * self.DEPTH_CHUNK and (
            depth >= self.DEEP * (m + n) or m * n <= self.SMALL_RESULT)
        narrow = (len(shape) == 2 and not deep and m in self.NARROW_ROWS and depth <= self.NARROW_DEPTH
                  and n >= 2 * self.NARROW_BLOCK)
        split = self._plan(flops >= self.WAKE_FLOPS or nbytes >= self.WAKE_BYTES,
                           flops >= self.SPLIT_FLOPS or nbytes >= self.SPLIT_BYTES)
        with self._mode(split):
            if not (split or deep or narrow) or not flops:
                return xp.matmul(a, b, out=out)
            if out is None:
                out = xp.empty(shape, dtype=xp.result_type(a, b))
            if deep:
                return self._matmul_by_depth(a, b, out, split)
            if len(shape) == 3:
                self._run_split(lambda lo, hi: xp.matmul(a[lo:hi], b[lo:hi], out=out[lo:hi]), stack)
                return out
            by_rows = m >= n and not narrow
            count = m if by_rows else n
            align = (self.NARROW_BLOCK if narrow else
                     self.ALIGN if count >= self.ALIGN * self.threads else self.ALIGN // 2)

            # The last block takes the rest, never a short block of its own, whose kernel
            # could differ: narrow blocks are the same calls, split or not.
            units = count // align if narrow else -(-count // align)

            def product(first, stop):
                for lo, hi in ([(u, u + 1) for u in range(first, stop)] if narrow else [(first, stop)]):
                    lo, hi = lo * align, count if hi == units else hi * align
                    if by_rows:
                        xp.matmul(a[lo:hi], b, out=out[lo:hi])
                    else:
                        xp.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

            if split:
                self._run_split(product, units)
            else:
                product(0, units)
            return out

    def _matmul_by_depth(self, a, b, out, split):
        """The product as a sum over ranges of the inner dimension: each thread takes
        a share of them, reading only its share of both operands, and the threads'
        partial results are added. The order of the sum changes the rounding, so a
        deep product is summed from the same parts whether or not it is split: the
        numbers depend on the thread count alone, never on the backend's mode."""
        xp = self.xp
        (m, depth), n = a.shape, b.shape[1]
        step = self.DEPTH_CHUNK
        bounds = list(range(0, depth, step)) + [depth]
        chunks = len(bounds) - 1
        parts = min(self.threads, chunks)
        partial = [out] + [xp.empty_like(out) for _ in range(parts - 1)]

        def product(first, stop):
            for p in range(first, stop):
                lo, hi = bounds[chunks * p // parts], bounds[chunks * (p + 1) // parts]
                whole = (hi - lo) // step  # chunks of full depth in [lo, hi)
                full = lo + whole * step
                if whole > 1:  # one call for all of them: a stack of products, summed
                    stack = xp.matmul(a[:, lo:full].reshape(m, whole, step).transpose(1, 0, 2),
                                      b[lo:full].reshape(whole, step, n))
                    stack.sum(axis=0, out=partial[p])
                else:  # one chunk, or only the last, shorter one
                    end = full if whole else hi
                    xp.matmul(a[:, lo:end], b[lo:end], out=partial[p])
                if whole and full < hi:
                    partial[p] += xp.matmul(a[:, full:hi], b[full:hi])

        if split:
            self._run_split(product, parts)
        else:
            product(0, parts)
        for p in partial[1:]:
            out += p
        return out

    def elementwise(self, fn, out, *inputs):
        """``fn(*inputs, out=out)`` (a ufunc, or a function of that form), run on
        matching blocks along ``out``'s outermost axis in memory: for our activations,
        the channels. Inputs have ``out``'s number of dimensions; one of length 1 on
        that axis (broadcast along it) is passed whole, as are scalars. Returns ``out``."""
        if out.ndim == 0 or not self.splits(out.nbytes):
            fn(*inputs, out=out)
            return out
        axis = max(range(out.ndim), key=lambda d: abs(out.strides[d]) if out.shape[d] > 1 else -1)
        lead = (slice(None),) * axis

        def block(a, b):
            part = lead + (slice(a, b),)
            fn(*(x[part] if getattr(x, "ndim", 0) and x.shape[axis] == out.shape[axis] else x
                 for x in inputs), out=out[part])

        self.parallel(block, out.shape[axis], out.nbytes)
        return out

    # ---- convolution: C kernels for small ones, cache-sized blocks of columns for the rest ----
    @implemented_by("C: `kernels/conv.c` (small); cache-blocked columns")
    def conv2d(self, x, w2, bias, window, groups=1, weight_grad=False, bias_grad=False):
        """A small convolution (``_small_conv``) by the C kernel ``conv_forward``, split by
        output rows, and its weight's gradient by ``conv_weight_grad`` from the padded input
        (the columns are never written); other ungrouped convolutions by
        ``_column_conv2d``; grouped ones by the reference body (its stack of products by
        ``matmul``'s threads)."""
        if groups != 1:
            return super().conv2d(x, w2, bias, window, groups, weight_grad, bias_grad)
        lib = self._small_conv(x.shape[0], w2, window, x, bias)
        if lib is None:
            return self._column_conv2d(x, w2, bias, window, weight_grad, bias_grad)
        c, h, w, n = x.shape
        cout, k = w2.shape
        oh, ow = window.out_size(h, w)
        work = k * oh * ow * n * x.itemsize  # the columns it stands for: the same split as BLAS's
        out = self._small_conv_forward(lib, x, w2, bias, window, (oh, ow), work)
        if not weight_grad:
            return out, None

        def weight_backward(gc):
            xpad, gc = np.ascontiguousarray(self.pad(x, window)), np.ascontiguousarray(gc)
            gw2 = np.empty((cout, k), dtype=np.float64)  # the kernel sums in double
            gb = np.empty(cout, dtype=np.float64) if bias_grad else None
            geometry = (c, *xpad.shape[1:3], n, cout, window.kh, window.kw, oh, ow)
            # Split by pairs of columns, the kernel's tiles, so that every column is made by
            # the same tile (the same instructions) however the work is split.
            self.parallel(lambda a, b: lib.conv_weight_grad(
                xpad.ctypes.data, gc.ctypes.data, gw2.ctypes.data, _address(gb) if a == 0 else None,
                *geometry, 2 * a, min(k, 2 * b)), (k + 1) // 2, work)
            return gw2.astype(gc.dtype), None if gb is None else gb.astype(gc.dtype)

        return out, weight_backward

    @implemented_by("C: `kernels/conv.c` (small); cache-blocked columns")
    def conv2d_input_grad(self, w2, gc, x_shape, window, groups=1):
        """For a small convolution with padding below its kernel: the stride-1 convolution
        of the output's gradient, padded by kh-1-ph and kw-1-pw, with the kernel flipped
        and its input and output channels swapped, by ``conv_forward`` (which skips the
        padding's zeros); else ``_column_input_grad``; grouped ones by the reference body."""
        if groups != 1:
            return super().conv2d_input_grad(w2, gc, x_shape, window, groups)
        c, h, w, n = x_shape
        cout = w2.shape[0]
        kh, kw, _, _, ph, pw = window[:6]
        oh, ow = window.out_size(h, w)
        lib = self._small_conv(c, w2, window, gc)
        if lib is None or ph >= kh or pw >= kw:
            return self._column_input_grad(w2, gc, x_shape, window)
        flipped = w2.reshape(cout, c, kh, kw)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c, -1)
        work = c * kh * kw * oh * ow * n * gc.itemsize  # the columns' gradient it stands for
        return self._small_conv_forward(lib, gc.reshape(cout, oh, ow, n), flipped, None,
                                        window._replace(ph=kh - 1 - ph, pw=kw - 1 - pw), (h, w), work)

    def _small_conv(self, channels, w2, window, *arrays):
        """The C kernels if a convolution of ``channels`` input channels by ``w2`` reads its
        columns in place: float32, stride 1, at most SMALL_CONV_CHANNELS channels in and out,
        no dilation and the same padding on both sides (the kernel's geometry)."""
        lib = self.kernels_for(w2, *arrays)
        if (lib is None or (window.sh, window.sw) != (1, 1) or max(channels, w2.shape[0]) > self.SMALL_CONV_CHANNELS
                or window[6:] != (1, 1, 0, 0)):
            return None
        return lib

    def _small_conv_forward(self, lib, x, w2, bias, window, out_hw, work):
        """``conv_forward`` of (C, H, W, N) ``x`` into a new (Cout, OH, OW, N) array,
        split by output rows; ``work``: the size of the columns it stands for."""
        x, w2 = np.ascontiguousarray(x), np.ascontiguousarray(w2)
        bias = None if bias is None else np.ascontiguousarray(bias)
        out = np.empty((w2.shape[0], *out_hw, x.shape[3]), dtype=x.dtype)
        geometry = (*x.shape, w2.shape[0], window.kh, window.kw, window.ph, window.pw, *out_hw)
        self.parallel(lambda a, b: lib.conv_forward(x.ctypes.data, w2.ctypes.data, _address(bias),
                                                    out.ctypes.data, *geometry, a, b), out_hw[0], work)
        return out

    def _column_conv2d(self, x, w2, bias, window, weight_grad, bias_grad):
        """The reference's im2col and product, with the columns made and multiplied one
        cache-sized block of output rows at a time (``_rows_per_block``): the product reads
        each block while it is in cache. Blocks are independent, so they are also the unit
        of ``parallel``; without ``weight_grad`` each run of blocks reuses one buffer. With
        ``bias_grad`` the kept columns end in a row of ones, so that the weight's gradient
        product gives the bias's too, in the same pass over the output's gradient."""
        c, h, w, n = x.shape
        oh, ow = window.out_size(h, w)
        k, cout = c * window.kh * window.kw, w2.shape[0]
        total = k * oh * ow * n * x.dtype.itemsize
        rows = self._rows_per_block(oh, total, buffered=not weight_grad)
        shape = (c, window.kh, window.kw, oh, ow, n)
        cols, kept = self._columns(shape, x.dtype, bias_grad) if weight_grad else (None, None)
        backward = None if kept is None else self._weight_backward(kept, k, bias_grad)
        win = self.windows(self.pad(x, window), window, oh, ow)
        if rows is None:
            cols = self.xp.empty(shape, dtype=x.dtype) if cols is None else cols
            # Copied by channel; a one-channel input (a first layer) by kernel row instead.
            lead = () if c > 1 else (slice(None),)
            self.parallel(lambda a, b: np.copyto(cols[lead + (slice(a, b),)], win[lead + (slice(a, b),)]),
                          shape[len(lead)], cols.nbytes)
            out = self.matmul(w2, cols.reshape(k, -1))
            if bias is not None:
                self.elementwise(np.add, out, out, bias[:, None])
            return out.reshape(cout, oh, ow, n), backward
        starts = range(0, oh, rows)
        out = np.empty((cout, oh, ow, n), dtype=x.dtype)

        def run(a, b):
            buffer = cols if weight_grad else np.empty(win[:, :, :, :rows].shape, dtype=x.dtype)
            for r0 in starts[a:b]:
                r1 = min(oh, r0 + rows)
                part = buffer[:, :, :, r0:r1] if weight_grad else buffer[:, :, :, :r1 - r0]
                np.copyto(part, win[:, :, :, r0:r1])
                product = out[:, r0:r1].reshape(cout, -1)  # a view: rows of one channel are contiguous
                np.matmul(w2, part.reshape(k, -1), out=product)
                if bias is not None:
                    product += bias[:, None]

        self.parallel(run, len(starts), total)
        return out, backward

    def _weight_backward(self, kept, k, bias_grad):
        """``conv2d``'s weight_backward over the kept columns (k rows, then the row of
        ones if ``bias_grad``)."""
        def weight_backward(gc):
            # (cols @ gc^T)^T rather than gc @ cols^T: OpenBLAS runs this operand order
            # faster for these long-K, narrow shapes.
            grads = self.matmul(kept, gc.T)
            return grads[:k].T, (grads[k] if bias_grad else None)

        return weight_backward

    def _columns(self, shape, dtype, ones_row):
        """A contiguous (C, kh, kw, OH, OW, N) array for im2col to fill, and the same
        memory as the (C*kh*kw [+ 1], OH*OW*N) matrix, followed by a row of ones if
        ``ones_row``."""
        k, m = shape[0] * shape[1] * shape[2], shape[3] * shape[4] * shape[5]
        memory = np.empty((k + ones_row) * m, dtype=dtype)
        if ones_row:
            memory[k * m:] = 1
        return memory[:k * m].reshape(shape), memory.reshape(k + ones_row, m)

    def _rows_per_block(self, oh, total, buffered=False):
        """Output rows per block, for work of ``total`` bytes over ``oh`` rows, or None to
        do the work whole (it fits in two blocks): blocks of at most ``cache_block_bytes``
        (and ``buffer_block_bytes`` if ``buffered``: the blocks take turns in one buffer),
        their count a multiple of the threads where the rows allow it."""
        block = self.cache_block_bytes
        if buffered:
            block = min(block, self.buffer_block_bytes)
        if total <= 2 * block:
            return None
        target = -(-total // block)
        target = -(-target // self.threads) * self.threads
        rows = max(1, -(-oh // target))
        while rows > 1 and -(-oh // rows) % self.threads:
            rows -= 1
        return rows

    def _column_input_grad(self, w2, gc, x_shape, window):
        """``col2im(w2.T @ gc)``, the product made one block of output rows at a time where
        it is too large for the cache, each block added back while it is in cache, so the
        columns' gradient (kh*kw times the input's size) never goes to memory; the blocks'
        additions overlap by a few rows, so ``parallel`` splits by channel."""
        c, h, w, n = x_shape
        kh, kw, sh, _, ph, pw = window[:6]
        cout = gc.shape[0]
        oh, ow = window.out_size(h, w)
        rows = self._rows_per_block(oh, c * kh * kw * gc.shape[1] * gc.dtype.itemsize)
        if rows is None:
            dcols = self.matmul(w2.T, gc).reshape(c, kh, kw, oh, ow, n)
            return self.col2im(dcols, x_shape, window)
        by_row = gc.reshape(cout, oh, -1)
        dx = np.zeros((c, h + 2 * ph + window.eh, w + 2 * pw + window.ew, n), dtype=gc.dtype)

        def scatter(c0, c1):
            weights = w2.T[c0 * kh * kw:c1 * kh * kw]
            buffer = np.empty((c1 - c0, kh, kw, rows, ow, n), dtype=gc.dtype)
            for r0 in range(0, oh, rows):
                r1 = min(oh, r0 + rows)
                part = buffer[:, :, :, :r1 - r0]
                np.matmul(weights, by_row[:, r0:r1].reshape(cout, -1), out=part.reshape(weights.shape[0], -1))
                self.add_columns(part, dx[c0:c1, r0 * sh:], window)

        self.parallel(scatter, c, c * kh * kw * gc.shape[1] * gc.dtype.itemsize)
        return dx[:, ph:ph + h, pw:pw + w]

    # ---- the C kernels ----------------------------------------------------------------
    def prepare(self):
        self.kernels_for()

    def kernels_for(self, *args):
        """The C kernel library if every floating-point array among ``args`` is float32
        (the kernels' one dtype), else None. The first call loads it; where it cannot be,
        a warning says once why, and the reference bodies run."""
        if not self._kernels_tried:
            self._kernels_tried = True
            try:
                self.kernels, self.kernels_unavailable = host_kernels.load(), None
            except host_kernels.KernelsUnavailable as exc:
                self.kernels_unavailable = str(exc)
                if not host_kernels.switched_off():
                    warnings.warn(f"minitorch_cnn: the NumPy backend's C kernels are unavailable ({exc}); "
                                  f"convolutions, pooling, col2im, ReLU and BatchNorm run slower NumPy code",
                                  RuntimeWarning, stacklevel=3)
        if self.kernels is None or any(isinstance(a, (np.ndarray, np.generic)) and a.dtype.kind == "f"
                                       and a.dtype != np.float32 for a in args):
            return None
        return self.kernels

    @c_kernel("col2im.c")
    def add_columns(self, lib, cols, dx, window):
        """A gather per pixel instead of a pass per window offset; split by channel."""
        _, kh, kw, oh, ow, n = cols.shape
        item = cols.itemsize
        if cols.strides[4:] != (n * item, item) or dx.strides[2:] != (n * item, item) or window.dh * window.dw != 1:
            return NotImplemented
        c, h, w, _ = dx.shape
        rows = min(h, (oh - 1) * window.sh + kh)  # the rows any window covers
        strides = [s // item for s in cols.strides[:4] + dx.strides[:2]]
        self.parallel(lambda a, b: lib.col2im_add(_at(cols, a), _at(dx, a), b - a, kh, kw, oh, ow, n,
                                                  window.sh, window.sw, rows, w, *strides), c, cols.nbytes)
        return None

    @c_kernel("max_pool.c")
    def max_pool(self, lib, x, window):
        """Window maxima and their argmax in one pass (no dilation)."""
        if window.kh * window.kw > 256 or window.dh * window.dw != 1:  # a uint8 offset; the kernel's geometry
            return NotImplemented
        c, h, w, n = x.shape
        oh, ow = window.out_size(h, w)
        x = np.ascontiguousarray(x)
        out = np.empty((c, oh, ow, n), dtype=x.dtype)
        arg = np.empty(out.shape, dtype=np.uint8)
        geometry = (h, w, n, *window[:6], oh, ow)
        self.parallel(lambda a, b: lib.max_pool(_at(x, a), _at(out, a), _at(arg, a), b - a, *geometry),
                      c, x.nbytes)
        return out, arg

    @c_kernel("max_pool.c")
    def max_pool_backward(self, lib, dout, arg, x_shape, window):
        if arg.dtype != np.uint8 or window.dh * window.dw != 1:
            return NotImplemented
        c, h, w, n = x_shape
        _, oh, ow, _ = dout.shape
        dout, arg = np.ascontiguousarray(dout), np.ascontiguousarray(arg)
        dx = np.empty(x_shape, dtype=dout.dtype)
        geometry = (h, w, n, *window[:6], oh, ow)
        self.parallel(lambda a, b: lib.max_pool_backward(_at(dout, a), _at(arg, a), _at(dx, a), b - a,
                                                         *geometry),
                      c, dx.nbytes)
        return dx

    @c_kernel("relu.c")
    def relu(self, lib, x):
        out = np.empty_like(x)  # x's layout (empty_like keeps it)
        flat_x, flat_out = map(_in_memory_order, (x, out)) if out.strides == x.strides else (None, None)
        if flat_x is None or flat_out is None:
            return NotImplemented
        self.parallel(lambda a, b: lib.relu(_at(flat_x, a), _at(flat_out, a), b - a), x.size, x.nbytes)
        return out

    @c_kernel("relu.c")
    def relu_backward(self, lib, g, y):
        flat_g, flat_y = map(_in_memory_order, (g, y)) if g.strides == y.strides else (None, None)
        if flat_g is None or flat_y is None:
            return NotImplemented
        dx = np.empty_like(y)  # y's layout, so dx's memory order is g's and y's
        flat_dx = _in_memory_order(dx)
        self.parallel(lambda a, b: lib.relu_backward(_at(flat_g, a), _at(flat_y, a), _at(flat_dx, a), b - a),
                      y.size, y.nbytes)
        return dx

    @c_kernel("batch_norm.c")
    def batch_norm(self, lib, rows, weight, shift, eps, relu=False):
        """Statistics and output in three passes over each channel's row, in cache."""
        if not rows.flags.c_contiguous:
            return NotImplemented
        channels, count = rows.shape
        out = np.empty_like(rows)
        mean, var, inv_std = (np.empty(channels, dtype=rows.dtype) for _ in range(3))
        weight, shift = (None if weight is None else np.ascontiguousarray(weight)), np.ascontiguousarray(shift)
        self.parallel(lambda a, b: lib.batch_norm(
            _at(rows, a), _at(out, a), _at(mean, a), _at(var, a), _at(inv_std, a),
            None if weight is None else _at(weight, a), _at(shift, a), b - a, count, eps, relu),
            channels, rows.nbytes)
        return out, mean, var, inv_std

    @c_kernel("batch_norm.c")
    def batch_norm_backward(self, lib, g, rows, mean, inv_std, weight, use_batch, relu_out=None):
        if not use_batch or not all(a.flags.c_contiguous for a in (g, rows, relu_out) if a is not None):
            return NotImplemented
        channels, count = g.shape
        gx = np.empty_like(g)
        g_xhat, g_sum = np.empty(channels, dtype=g.dtype), np.empty(channels, dtype=g.dtype)
        mean, inv_std = np.ascontiguousarray(mean, dtype=g.dtype), np.ascontiguousarray(inv_std, dtype=g.dtype)
        weight = None if weight is None else np.ascontiguousarray(weight, dtype=g.dtype)
        self.parallel(lambda a, b: lib.batch_norm_backward(
            _at(g, a), _at(rows, a), _at(mean, a), _at(inv_std, a),
            None if weight is None else _at(weight, a), _at(gx, a), _at(g_xhat, a), _at(g_sum, a),
            b - a, count, None if relu_out is None else _at(relu_out, a)),
            channels, g.nbytes)
        return gx, g_xhat, g_sum

    @implemented_by("threads")
    def scale_shift(self, rows, scale, shift, relu=False):
        """Split by channel."""
        def affine(x, scale, shift, out):
            np.multiply(x, scale, out=out)
            out += shift
            return out

        out = self.elementwise(affine, np.empty_like(rows), rows, scale[:, None], shift[:, None])
        return self.relu(out) if relu else out

    @c_kernel("batch_norm.c")
    def batch_norm_pool(self, lib, rows, shape, weight, shift, eps, window):
        """One kernel for the three ops, a block of channels at a time: each value is
        normalised and ReLU'd as the pool reads it, and only the pooled output is stored."""
        pool = self._fused_pool(rows, shape, window)
        if pool is None:
            return NotImplemented
        pooled, arg, geometry = pool
        mean, var, inv_std = (np.empty(shape[0], dtype=rows.dtype) for _ in range(3))
        weight, shift = (None if weight is None else np.ascontiguousarray(weight)), np.ascontiguousarray(shift)
        self.parallel(lambda a, b: lib.batch_norm_relu_pool(
            _at(rows, a), _at(pooled, a), _at(arg, a), _at(mean, a), _at(var, a), _at(inv_std, a),
            None if weight is None else _at(weight, a), _at(shift, a), b - a, *geometry, eps),
            shape[0], rows.nbytes)
        return pooled, arg, mean, var, inv_std

    @c_kernel("batch_norm.c")
    def scale_shift_pool(self, lib, rows, shape, scale, shift, window):
        pool = self._fused_pool(rows, shape, window)
        if pool is None:
            return NotImplemented
        pooled, arg, geometry = pool
        scale, shift = np.ascontiguousarray(scale), np.ascontiguousarray(shift)
        self.parallel(lambda a, b: lib.scale_shift_relu_pool(
            _at(rows, a), _at(pooled, a), _at(arg, a), _at(scale, a), _at(shift, a), b - a, *geometry),
            shape[0], rows.nbytes)
        return pooled, arg

    @staticmethod
    def _fused_pool(rows, shape, window):
        """For a fused normalisation, ReLU and max pool: the pooled output and argmax to
        fill and the kernels' geometry, or None where the kernels do not take the call."""
        if not rows.flags.c_contiguous or window.kh * window.kw > 256 or window.dh * window.dw != 1:  # a uint8 argmax
            return None
        c, h, w, n = shape
        oh, ow = window.out_size(h, w)
        pooled = np.empty((c, oh, ow, n), dtype=rows.dtype)
        return pooled, np.empty(pooled.shape, dtype=np.uint8), (h, w, n, *window[:6], oh, ow)

    @c_kernel("batch_norm.c")
    def batch_norm_pool_backward(self, lib, dout, pooled, arg, shape, window, rows, mean, inv_std, weight,
                                 use_batch):
        if (not use_batch or rows is None or arg.dtype != np.uint8 or window.dh * window.dw != 1
                or not all(a.flags.c_contiguous for a in (dout, pooled, arg, rows))):
            return NotImplemented
        c, h, w, n = shape
        _, oh, ow, _ = pooled.shape
        gx = np.empty_like(rows)
        g_xhat, g_sum = np.empty(c, dtype=rows.dtype), np.empty(c, dtype=rows.dtype)
        mean, inv_std = np.ascontiguousarray(mean, dtype=rows.dtype), np.ascontiguousarray(inv_std, dtype=rows.dtype)
        weight = None if weight is None else np.ascontiguousarray(weight, dtype=rows.dtype)
        geometry = (h, w, n, *window[:6], oh, ow)
        self.parallel(lambda a, b: lib.batch_norm_relu_pool_backward(
            _at(dout, a), _at(arg, a), _at(pooled, a), _at(rows, a), _at(mean, a), _at(inv_std, a),
            None if weight is None else _at(weight, a), _at(gx, a), _at(g_xhat, a), _at(g_sum, a),
            b - a, *geometry), c, gx.nbytes)
        return gx, g_xhat, g_sum


def _address(array):
    """The address of ``array``'s data, or None (a NULL pointer) for None."""
    return None if array is None else array.ctypes.data


def _at(array, index):
    """The address of ``array[index]`` (an index along the first axis)."""
    return array.ctypes.data + index * array.strides[0]


def _in_memory_order(a):
    """``a``'s elements in memory order, as a 1-D view, if they fill one dense block of
    memory with positive strides (any order of the axes); else None."""
    order = sorted(range(a.ndim), key=lambda d: a.strides[d], reverse=True)
    dense = a.transpose(order)
    return dense.reshape(-1) if dense.flags.c_contiguous else None


def _product_dims(a, b):
    """(stack, m, depth, n, result shape) of a matrix times a matrix or a vector, or of
    two equally long stacks of matrices; None for any other product."""
    if a.ndim == 2 and b.ndim in (1, 2):
        (m, depth), n = a.shape, b.shape[1] if b.ndim == 2 else 1
        return 1, m, depth, n, (m, n) if b.ndim == 2 else (m,)
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] == b.shape[0]:
        (stack, m, depth), n = a.shape, b.shape[2]
        return stack, m, depth, n, (stack, m, n)
    return None


def _blas_controllers():
    """threadpoolctl's handles on the BLAS libraries NumPy loaded."""
    return ThreadpoolController().select(user_api="blas").lib_controllers
