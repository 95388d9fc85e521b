"""The NumPy backend: the generic kernels, run on every core when the work is large.

NumPy runs each operation on one core but releases the GIL inside it, so threads
that each take a block of channels (a contiguous block of memory in the CHWN layout)
run the copies, comparisons and sums between the matrix products on all cores.

Two kinds of threads would share the cores, and they do not mix:
- OpenBLAS's: after each product they spin for ~0.1 s waiting for the next one
  (measured), on the cores our threads need. A two-thread ReLU right after a product
  ran slower than one thread; with BLAS's threads asleep, 1.4-1.7x faster.
- ours: a sleeping thread takes ~60 us to wake on these machines (measured: a
  no-op round trip through a thread pool), which only large work repays.
So the backend runs in one of two modes. Large work (a block worth waking a thread
for) is split across our threads, the matrix products too, each on one BLAS thread:
that is *our* mode, and it lasts while large work keeps coming (``KEEP_CALLS``), so
the smaller work between runs on one thread with BLAS on one thread, and BLAS's
threads stay asleep. Without large work (a small network at a small batch) the
backend is as with one thread: BLAS runs each product on its own threads. The
caller's BLAS setting is restored after every call, so NumPy outside the engine is
unaffected.

Max pooling, col2im, ReLU and its backward, and batch normalisation (alone, or fused
with the ReLU and max pool after it) run C kernels (``kernels/host.c``, see
``host_kernels.py``) on float32 arrays where they can be built, on the same blocks of
channels; elsewhere the generic NumPy bodies, which give the same numbers (batch
normalisation's to rounding). Small convolutions (1-24 channels, stride 1: most of the
zoo's) run C kernels that read im2col's columns in place, never writing them, and
multiply without BLAS; their results differ from the column path's by rounding.
"""
import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import host_kernels
from .base import Backend, out_size


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


class HostBackend(Backend):
    # Work that enters our mode: bytes a kernel moves, or flops (and bytes) of a product.
    # Our mode pays when most of a step's work is this large (bn-cnn at batch 256,
    # inference at 1000): at half of it, lenet at batch 128 entered our mode through
    # one 9 MB product and its steps ran 10-20% slower than with BLAS's threads.
    WAKE_BYTES = 16 << 20
    WAKE_FLOPS = 256 << 20
    # Work that is split while in our mode (smaller work runs on one thread): ~100 us
    # on one core, well above the hand-off's cost.
    SPLIT_BYTES = 1 << 20
    SPLIT_FLOPS = 8 << 20
    # Our mode ends this many calls after the last split. A count of calls, not a time:
    # OpenBLAS picks its kernels by shape and thread count, so a product's rounding
    # can depend on the mode it runs in, and the mode must then depend only on the
    # sequence of calls, never on the machine's speed (same seed, same numbers).
    KEEP_CALLS = 64
    # Blocks of a split product start at multiples of this many rows or columns
    # (half of it for short products), so each block's SIMD kernels run on whole
    # vectors. Even so a block may round differently from the whole product (OpenBLAS
    # picks its kernel by shape and thread count: measured, 100x192 by 192x120 split
    # by rows), which is why whether a call splits depends only on the work's size,
    # the thread count and the calls before it (KEEP_CALLS), never on timing.
    ALIGN = 16
    # A deep product, one whose inner dimension is this many times its result's rows
    # plus columns or whose result has at most SMALL_RESULT elements (a weight
    # gradient: 101x8 from a depth of 12,544 for convnet's conv2), is summed from
    # products of DEPTH_CHUNK depth, made as one stacked product and split among the
    # threads by chunks. OpenBLAS runs such chunks up to 3x faster than the whole
    # product, as their operands stay in L2 (measured, one BLAS thread: convnet's
    # 0.35 -> 0.14 ms, lenet's first layer 0.49 -> 0.18, bn-cnn's 3.4 -> 1.9; no loss
    # on the zoo's other weight gradients; 2048-deep chunks lost up to 2.4x).
    DEEP = 64
    SMALL_RESULT = 1024
    DEPTH_CHUNK = 1024
    # A long product of 2-8 rows and a depth of at most 32 (a first layer's forward:
    # 6x25 by 25x57,600 for lenet) is made in blocks of this many columns, whose share
    # of the right operand stays in L2: OpenBLAS runs it 1.4-2.5x faster so (measured:
    # lenet 0.31 -> 0.13 ms, convnet 0.35 -> 0.12; no gain at 1 row or from 10 rows).
    NARROW_ROWS = range(2, 9)
    NARROW_DEPTH = 32
    NARROW_BLOCK = 4096
    # Convolutions with at most this many input and output channels read their columns
    # in place (``_small_conv``): the zoo's small layers, 1-24 channels. Measured on one
    # thread, column path -> in place: forward (with the columns written for backward)
    # convnet's first layer 0.51 -> 0.15 ms, lenet's 0.76 -> 0.21, bn-cnn's 5.8 -> 2.3;
    # weight gradient, lenet's first layer 0.78 -> 0.31. Beyond ~24 channels the columns
    # each output reads lie too far apart for the cache: VGG's 64->128 layer, forward,
    # 66 -> 117 ms.
    SMALL_CONV_CHANNELS = 24

    def __init__(self, name, xp, cache_block_bytes=None, buffer_block_bytes=None):
        super().__init__(name, xp, cache_block_bytes, buffer_block_bytes)
        self._pool = None
        self._blas = None
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
        if threads > 1 and self._blas is None:
            self._blas = _blas_controllers()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = ThreadPoolExecutor(threads - 1, "minitorch") if threads > 1 else None
        self.threads = threads
        self._ours_left = 0

    # ---- the two modes ------------------------------------------------------------
    def _plan(self, large, splittable):
        """How to run a piece of work: True to split it across our threads; False to
        run it whole in our mode (BLAS on one thread, so that its threads stay
        asleep); None for a plain call, BLAS on its own threads."""
        if self.threads == 1 or self._splitting:  # inside a split, BLAS is on one thread
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
        changed = [lib for lib in self._blas if lib.get_num_threads() != 1]
        previous = [lib.get_num_threads() for lib in changed]
        for lib in changed:
            lib.set_num_threads(1)
        try:
            yield
        finally:
            for lib, n in zip(changed, previous):
                lib.set_num_threads(n)

    def _run_split(self, body, count):
        parts = min(self.threads, count)
        bounds = [count * p // parts for p in range(parts + 1)]
        helpers = [self._pool.submit(body, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        try:
            body(bounds[0], bounds[1])
        finally:
            for helper in helpers:
                helper.result()

    # ---- the Backend hooks ----------------------------------------------------------
    def splits(self, nbytes):
        return self.threads > 1 and nbytes >= min(self.SPLIT_BYTES, self.WAKE_BYTES)

    def parallel(self, body, count, nbytes):
        split = self._plan(nbytes >= self.WAKE_BYTES, nbytes >= self.SPLIT_BYTES)
        with self._mode(split):
            if split and count > 1:
                return self._run_split(body, count)
            return body(0, count)

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

    # ---- the C kernels ----------------------------------------------------------------
    def prepare(self):
        self._kernels_for()

    def _kernels_for(self, *arrays):
        """The C kernel library if every array is float32 (the kernels' only dtype),
        else None. The first call loads it; where it cannot be, a warning says once
        why, and the generic bodies run."""
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
        if self.kernels is None or any(a.dtype != np.float32 for a in arrays):
            return None
        return self.kernels

    # ---- small convolutions: columns read in place -------------------------------------
    def _small_conv(self, channels, w2, sh, sw, *arrays):
        """The C kernels if a convolution of ``channels`` input channels by ``w2`` reads
        its columns in place (kernels/host.c: ``conv_forward``, ``conv_weight_grad``),
        else None: stride 1, float32 ``w2`` and ``arrays``, and at most
        SMALL_CONV_CHANNELS input and output channels. There writing the columns and
        reading them back costs more than the product; in larger layers each output's
        taps span many channels, far apart in memory, and BLAS's packed product wins."""
        lib = self._kernels_for(w2, *arrays)
        if lib is None or (sh, sw) != (1, 1) or max(channels, w2.shape[0]) > self.SMALL_CONV_CHANNELS:
            return None
        return lib

    def conv2d(self, x, w2, bias, kh, kw, sh, sw, ph, pw, weight_grad=False, bias_grad=False):
        """A small convolution (``_small_conv``) by ``conv_forward``, split by output rows;
        its weight_backward pads the input it keeps (not the columns) and makes the
        weight's gradient (and the bias's) by ``conv_weight_grad``, split by columns.
        Other convolutions as ``Backend.conv2d``."""
        lib = self._small_conv(x.shape[0], w2, sh, sw, x, *([] if bias is None else [bias]))
        if lib is None:
            return super().conv2d(x, w2, bias, kh, kw, sh, sw, ph, pw, weight_grad, bias_grad)
        c, h, w, n = x.shape
        cout, k = w2.shape
        oh, ow = out_size(h, kh, 1, ph), out_size(w, kw, 1, pw)
        work = k * oh * ow * n * x.itemsize  # the columns it stands for: the same split as BLAS's
        out = self._small_conv_forward(lib, x, w2, bias, (kh, kw), (ph, pw), (oh, ow), work)
        if not weight_grad:
            return out, None

        def weight_backward(gc):
            xp, gc = np.ascontiguousarray(self.pad(x, ph, pw)), np.ascontiguousarray(gc)
            gw2 = np.empty((cout, k), dtype=np.float64)  # the kernel sums in double
            gb = np.empty(cout, dtype=np.float64) if bias_grad else None
            geometry = (c, h + 2 * ph, w + 2 * pw, n, cout, kh, kw, oh, ow)
            # Split by pairs of columns, the kernel's tiles, so that every column is made by
            # the same tile (the same instructions) however the work is split.
            self.parallel(lambda a, b: lib.conv_weight_grad(
                xp.ctypes.data, gc.ctypes.data, gw2.ctypes.data, _address(gb) if a == 0 else None,
                *geometry, 2 * a, min(k, 2 * b)), (k + 1) // 2, work)
            return gw2.astype(gc.dtype), None if gb is None else gb.astype(gc.dtype)

        return out, weight_backward

    def conv2d_input_grad(self, w2, gc, x_shape, kh, kw, sh, sw, ph, pw):
        """For a small convolution (``_small_conv``) with padding below its kernel: the
        stride-1 convolution of the output's gradient, padded by kh-1-ph and kw-1-pw,
        with the kernel flipped and its input and output channels swapped, by
        ``conv_forward`` (which skips the padding's zeros)."""
        c, h, w, n = x_shape
        cout = w2.shape[0]
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        lib = self._small_conv(c, w2, sh, sw, gc)
        if lib is None or ph >= kh or pw >= kw:
            return super().conv2d_input_grad(w2, gc, x_shape, kh, kw, sh, sw, ph, pw)
        flipped = w2.reshape(cout, c, kh, kw)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c, -1)
        work = c * kh * kw * oh * ow * n * gc.itemsize  # the columns' gradient it stands for
        return self._small_conv_forward(lib, gc.reshape(cout, oh, ow, n), flipped, None, (kh, kw),
                                        (kh - 1 - ph, kw - 1 - pw), (h, w), work)

    def _small_conv_forward(self, lib, x, w2, bias, kernel, padding, out_hw, work):
        """``conv_forward`` of (C, H, W, N) ``x`` into a new (Cout, OH, OW, N) array,
        split by output rows; ``work``: the size of the columns it stands for."""
        x, w2 = np.ascontiguousarray(x), np.ascontiguousarray(w2)
        bias = None if bias is None else np.ascontiguousarray(bias)
        out = np.empty((w2.shape[0], *out_hw, x.shape[3]), dtype=x.dtype)
        geometry = (*x.shape, w2.shape[0], *kernel, *padding, *out_hw)
        self.parallel(lambda a, b: lib.conv_forward(x.ctypes.data, w2.ctypes.data, _address(bias),
                                                    out.ctypes.data, *geometry, a, b), out_hw[0], work)
        return out

    def max_pool(self, x, kh, kw, sh, sw, ph, pw):
        """Window maxima and, as the routing, the uint8 offset of each window's first
        maximum, in one pass (the CUDA kernel's routing too; see base.Backend.max_pool)."""
        lib = self._kernels_for(x)
        if lib is None or kh * kw > 256:  # a uint8 offset
            return super().max_pool(x, kh, kw, sh, sw, ph, pw)
        c, h, w, n = x.shape
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        x = np.ascontiguousarray(x)
        out = np.empty((c, oh, ow, n), dtype=x.dtype)
        arg = np.empty(out.shape, dtype=np.uint8)
        geometry = (h, w, n, kh, kw, sh, sw, ph, pw, oh, ow)
        self.parallel(lambda a, b: lib.max_pool(_at(x, a), _at(out, a), _at(arg, a), b - a, *geometry),
                      c, x.nbytes)
        return out, arg

    def max_pool_backward(self, dout, routing, x_shape, kh, kw, sh, sw, ph, pw):
        lib = self._kernels_for(dout)
        if lib is None or not isinstance(routing, np.ndarray):  # the generic forward's routing
            return super().max_pool_backward(dout, routing, x_shape, kh, kw, sh, sw, ph, pw)
        c, h, w, n = x_shape
        _, oh, ow, _ = dout.shape
        dout, arg = np.ascontiguousarray(dout), np.ascontiguousarray(routing)
        dx = np.empty(x_shape, dtype=dout.dtype)
        geometry = (h, w, n, kh, kw, sh, sw, ph, pw, oh, ow)
        self.parallel(lambda a, b: lib.max_pool_backward(_at(dout, a), _at(arg, a), _at(dx, a), b - a,
                                                         *geometry),
                      c, dx.nbytes)
        return dx

    def add_columns(self, cols, dx, sh, sw):
        lib = self._kernels_for(cols, dx)
        _, kh, kw, oh, ow, n = cols.shape
        item = cols.itemsize
        if lib is None or cols.strides[4:] != (n * item, item) or dx.strides[2:] != (n * item, item):
            return super().add_columns(cols, dx, sh, sw)
        c, h, w, _ = dx.shape
        rows = min(h, (oh - 1) * sh + kh)  # the rows any window covers
        strides = [s // item for s in cols.strides[:4] + dx.strides[:2]]
        lib.col2im_add(cols.ctypes.data, dx.ctypes.data, c, kh, kw, oh, ow, n, sh, sw, rows, w, *strides)

    def relu(self, x, out=None):
        lib = self._kernels_for(x)
        out = np.empty_like(x) if out is None else out  # x's layout (empty_like keeps it)
        flat_x, flat_out = (None, None) if lib is None or out.strides != x.strides else map(_in_memory_order,
                                                                                              (x, out))
        if flat_x is None or flat_out is None:
            return super().relu(x, out)
        self.parallel(lambda a, b: lib.relu(_at(flat_x, a), _at(flat_out, a), b - a), x.size, x.nbytes)
        return out

    def relu_backward(self, g, y):
        lib = self._kernels_for(g, y)
        flat_g, flat_y = (None, None) if lib is None or g.strides != y.strides else map(_in_memory_order, (g, y))
        if flat_g is None or flat_y is None:
            return super().relu_backward(g, y)
        dx = np.empty_like(y)  # y's layout, so dx's memory order is g's and y's
        flat_dx = _in_memory_order(dx)
        self.parallel(lambda a, b: lib.relu_backward(_at(flat_g, a), _at(flat_y, a), _at(flat_dx, a), b - a),
                      y.size, y.nbytes)
        return dx

    def batch_norm(self, rows, weight, shift, eps, relu=False):
        lib = self._kernels_for(rows, shift, *([] if weight is None else [weight]))
        if lib is None or not rows.flags.c_contiguous:
            return super().batch_norm(rows, weight, shift, eps, relu)
        channels, count = rows.shape
        out = np.empty_like(rows)
        mean, var, inv_std = (np.empty(channels, dtype=rows.dtype) for _ in range(3))
        weight, shift = (None if weight is None else np.ascontiguousarray(weight)), np.ascontiguousarray(shift)
        self.parallel(lambda a, b: lib.batch_norm(
            _at(rows, a), _at(out, a), _at(mean, a), _at(var, a), _at(inv_std, a),
            None if weight is None else _at(weight, a), _at(shift, a), b - a, count, eps, relu),
            channels, rows.nbytes)
        return out, mean, var, inv_std

    def batch_norm_backward(self, g, rows, mean, inv_std, weight, use_batch, relu_out=None):
        lib = self._kernels_for(g, *(a for a in (rows, relu_out) if a is not None))
        if lib is None or not use_batch or not all(a.flags.c_contiguous for a in (g, rows, relu_out)
                                                     if a is not None):
            return super().batch_norm_backward(g, rows, mean, inv_std, weight, use_batch, relu_out)
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

    def batch_norm_pool(self, rows, shape, weight, shift, eps, window):
        """One kernel for the three ops, a block of channels at a time: each value is
        normalised and ReLU'd as the pool reads it, and only the pooled output is stored."""
        pool = self._fused_pool(rows, shape, window, shift, *([] if weight is None else [weight]))
        if pool is None:
            return super().batch_norm_pool(rows, shape, weight, shift, eps, window)
        lib, pooled, arg, geometry = pool
        mean, var, inv_std = (np.empty(shape[0], dtype=rows.dtype) for _ in range(3))
        weight, shift = (None if weight is None else np.ascontiguousarray(weight)), np.ascontiguousarray(shift)
        self.parallel(lambda a, b: lib.batch_norm_relu_pool(
            _at(rows, a), _at(pooled, a), _at(arg, a), _at(mean, a), _at(var, a), _at(inv_std, a),
            None if weight is None else _at(weight, a), _at(shift, a), b - a, *geometry, eps),
            shape[0], rows.nbytes)
        return pooled, arg, mean, var, inv_std

    def scale_shift_pool(self, rows, shape, scale, shift, window):
        pool = self._fused_pool(rows, shape, window, scale, shift)
        if pool is None:
            return super().scale_shift_pool(rows, shape, scale, shift, window)
        lib, pooled, arg, geometry = pool
        scale, shift = np.ascontiguousarray(scale), np.ascontiguousarray(shift)
        self.parallel(lambda a, b: lib.scale_shift_relu_pool(
            _at(rows, a), _at(pooled, a), _at(arg, a), _at(scale, a), _at(shift, a), b - a, *geometry),
            shape[0], rows.nbytes)
        return pooled, arg

    def _fused_pool(self, rows, shape, window, *arrays):
        """For a fused normalisation, ReLU and max pool on the C kernels: the library, the
        pooled output and argmax to fill, and the kernels' geometry; None where they cannot."""
        kh, kw, sh, sw, ph, pw = window
        lib = self._kernels_for(rows, *arrays)
        if lib is None or not rows.flags.c_contiguous or kh * kw > 256:  # a uint8 argmax
            return None
        c, h, w, n = shape
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        pooled = np.empty((c, oh, ow, n), dtype=rows.dtype)
        return lib, pooled, np.empty(pooled.shape, dtype=np.uint8), (h, w, n, kh, kw, sh, sw, ph, pw, oh, ow)

    def batch_norm_pool_backward(self, dout, pooled, routing, shape, window, rows, mean, inv_std, weight,
                                 use_batch):
        lib = self._kernels_for(dout, pooled, *([] if rows is None else [rows]))
        if (lib is None or not use_batch or rows is None or not isinstance(routing, np.ndarray)
                or not all(a.flags.c_contiguous for a in (dout, pooled, routing, rows))):
            return super().batch_norm_pool_backward(dout, pooled, routing, shape, window, rows, mean, inv_std,
                                                    weight, use_batch)
        c, h, w, n = shape
        _, oh, ow, _ = pooled.shape
        gx = np.empty_like(rows)
        g_xhat, g_sum = np.empty(c, dtype=rows.dtype), np.empty(c, dtype=rows.dtype)
        mean, inv_std = np.ascontiguousarray(mean, dtype=rows.dtype), np.ascontiguousarray(inv_std, dtype=rows.dtype)
        weight = None if weight is None else np.ascontiguousarray(weight, dtype=rows.dtype)
        geometry = (h, w, n, *window, oh, ow)
        self.parallel(lambda a, b: lib.batch_norm_relu_pool_backward(
            _at(dout, a), _at(routing, a), _at(pooled, a), _at(rows, a), _at(mean, a), _at(inv_std, a),
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
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas").lib_controllers
