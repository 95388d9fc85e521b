"""A backend: an array module plus the handful of image kernels the CNN ops need.

Layout. The kernels work on activations stored *batch-innermost*, as contiguous
``(C, H, W, N)`` arrays. In that layout every copy that im2col, col2im and pooling
make moves long contiguous runs (N floats, or OW*N for stride 1), and a convolution
is one matrix product ``W(Cout, C*kh*kw) @ cols(C*kh*kw, OH*OW*N)`` whose result is
already the next layer's ``(Cout, OH, OW, N)`` input. The public API stays NCHW: the
ops hand out NCHW-shaped *views* of CHWN memory (see ``nn/functional.py``), so the
layout is only a matter of strides.

The generic bodies below use only ``self.xp`` and so run on NumPy and CuPy alike;
the CuPy backend replaces some of them with CUDA kernels from ``kernels/``.
"""
import os
from concurrent.futures import ThreadPoolExecutor


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


def out_size(size, kernel, stride, padding):
    """Output length of a sliding window (PyTorch's floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


class Backend:
    def __init__(self, name, xp):
        self.name = name
        self.xp = xp
        self.seed(None)

    def __repr__(self):
        return f"<minitorch_cnn backend {self.name!r}>"

    # ---- arrays -------------------------------------------------------------
    def owns(self, array):
        return isinstance(array, self.xp.ndarray)

    def asarray(self, data, dtype=None):
        """A host (NumPy) array or nested list as an array of this backend."""
        return self.xp.asarray(data, dtype=dtype)

    def to_numpy(self, array):
        return array

    def synchronize(self):
        """Wait for queued device work (a no-op on the CPU)."""

    # ---- random numbers -------------------------------------------------------
    def seed(self, seed):
        """Reseed this backend's generator (dropout masks, randn)."""
        self.rng = self.xp.random.default_rng(seed)

    def random(self, shape, dtype):
        """Uniform [0, 1) samples of the given float dtype."""
        return self.rng.random(shape, dtype=dtype)

    # ---- image kernels (x is a contiguous (C, H, W, N) array) --------------------
    def pad(self, x, ph, pw, value=0.0):
        if not (ph or pw):
            return x
        c, h, w, n = x.shape
        out = self.xp.full((c, h + 2 * ph, w + 2 * pw, n), value, dtype=x.dtype)
        out[:, ph:ph + h, pw:pw + w] = x
        return out

    def windows(self, xpad, kh, kw, sh, sw, oh, ow):
        """A view (C, kh, kw, OH, OW, N) of every window element; no copy."""
        c, _, _, n = xpad.shape
        s_c, s_h, s_w, s_n = xpad.strides
        return self.xp.lib.stride_tricks.as_strided(
            xpad, shape=(c, kh, kw, oh, ow, n),
            strides=(s_c, s_h, s_w, s_h * sh, s_w * sw, s_n))

    def window_slice(self, i, j, sh, sw, oh, ow):
        """Rows and columns of the input pixels that kernel offset (i, j) reads."""
        return slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw)

    def for_ranges(self, body, count, nbytes):
        """Run ``body(start, stop)`` over ``range(count)``; every image kernel below is
        independent per channel, so a backend may split the range across threads.
        Here: one call (a GPU parallelises inside each array operation)."""
        body(0, count)

    def im2col(self, x, kh, kw, sh, sw, ph, pw):
        """Columns (C, kh, kw, OH, OW, N), contiguous: the padded input once, then one copy."""
        _, h, w, _ = x.shape
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        win = self.windows(self.pad(x, ph, pw), kh, kw, sh, sw, oh, ow)
        cols = self.xp.empty(win.shape, dtype=x.dtype)
        # Split by channel; a one-channel input (the first layer) by kernel row instead.
        by_row = win.shape[0] == 1

        def copy(a, b):
            part = (slice(None), slice(a, b)) if by_row else slice(a, b)
            cols[part] = win[part]

        self.for_ranges(copy, kh if by_row else win.shape[0], cols.nbytes)
        return cols

    def col2im(self, cols, x_shape, sh, sw, ph, pw):
        """Adjoint of im2col: scatter-add columns (C, kh, kw, OH, OW, N) back to (C, H, W, N)."""
        c, h, w, n = x_shape
        _, kh, kw, oh, ow, _ = cols.shape
        dx = self.xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=cols.dtype)

        def scatter(a, b):
            for i in range(kh):
                for j in range(kw):
                    rows, columns = self.window_slice(i, j, sh, sw, oh, ow)
                    dx[a:b, rows, columns] += cols[a:b, i, j]

        self.for_ranges(scatter, c, cols.nbytes)
        return dx[:, ph:ph + h, pw:pw + w]

    def max_pool(self, x, kh, kw, sh, sw, ph, pw):
        """Window maxima (C, OH, OW, N), padding with -inf, and the *routing* that
        ``max_pool_backward`` needs: whatever this backend finds cheapest to keep.
        Here it is the padded input and the maxima, from which backward finds each
        window's first maximum again: a running ``maximum`` is several times faster
        in NumPy than tracking an argmax through the forward pass, and inference
        never pays for routing. A kernel may return an argmax index instead."""
        c, h, w, n = x.shape
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        xpad = self.pad(x, ph, pw, -self.xp.inf)
        win = self.windows(xpad, kh, kw, sh, sw, oh, ow)
        out = self.xp.empty((c, oh, ow, n), dtype=x.dtype)

        def pool(a, b):
            part = out[a:b]
            self.xp.copyto(part, win[a:b, 0, 0])
            for k in range(1, kh * kw):
                self.xp.maximum(part, win[a:b, k // kw, k % kw], out=part)

        self.for_ranges(pool, c, x.nbytes)
        return out, (xpad, out)

    def max_pool_backward(self, dout, routing, x_shape, kh, kw, sh, sw, ph, pw):
        """Send each window's gradient to its first maximum in row-major order
        (PyTorch's rule; ties are everywhere on real images: the zero background).
        Window elements are visited in that order; the first one equal to the maximum
        takes what gradient is left, which leaves none for any later tie."""
        xpad, out = routing
        c, h, w, n = x_shape
        _, oh, ow, _ = dout.shape
        win = self.windows(xpad, kh, kw, sh, sw, oh, ow)
        dx = self.xp.zeros(xpad.shape, dtype=dout.dtype)

        def route(a, b):
            left = dout[a:b].copy()
            for k in range(kh * kw):
                i, j = k // kw, k % kw
                share = left * (win[a:b, i, j] == out[a:b])
                rows, columns = self.window_slice(i, j, sh, sw, oh, ow)
                dx[a:b, rows, columns] += share
                left -= share

        self.for_ranges(route, c, dx.nbytes)
        return dx[:, ph:ph + h, pw:pw + w]

    def avg_pool(self, x, kh, kw, sh, sw, ph, pw):
        """Window means (C, OH, OW, N), zero padding counted (PyTorch's default)."""
        _, h, w, _ = x.shape
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        return self.windows(self.pad(x, ph, pw), kh, kw, sh, sw, oh, ow).mean(axis=(1, 2))

    def avg_pool_backward(self, dout, x_shape, kh, kw, sh, sw, ph, pw):
        c, h, w, n = x_shape
        _, oh, ow, _ = dout.shape
        share = dout / (kh * kw)
        dx = self.xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=dout.dtype)
        for i in range(kh):
            for j in range(kw):
                rows, columns = self.window_slice(i, j, sh, sw, oh, ow)
                dx[:, rows, columns] += share
        return dx[:, ph:ph + h, pw:pw + w]


class HostBackend(Backend):
    """The NumPy backend: splits the image kernels by channel across a thread pool.

    NumPy runs each operation on one core but releases the GIL inside it, so two
    threads copying or comparing two halves of the channels run on two cores. The
    matrix products already use BLAS's own threads; everything between them would
    otherwise use one core of several."""

    # Below this many bytes of work, handing off to a thread costs more than it saves.
    PARALLEL_MIN_BYTES = 1 << 20

    def __init__(self, name, xp):
        super().__init__(name, xp)
        self._pool = None
        self.set_num_threads(_available_cores())

    def set_num_threads(self, threads):
        if int(threads) < 1:
            raise ValueError(f"the number of threads must be at least 1, got {threads}")
        self.threads = int(threads)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def for_ranges(self, body, count, nbytes):
        parts = min(self.threads, count)
        if parts < 2 or nbytes < self.PARALLEL_MIN_BYTES:
            return body(0, count)
        bounds = [count * p // parts for p in range(parts + 1)]
        helpers = [self._pool.submit(body, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        body(bounds[0], bounds[1])
        for h in helpers:
            h.result()


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
