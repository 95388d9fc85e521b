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


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


def _zero_row(xp, x):
    """Zeros that broadcast along ``x``'s innermost axis in memory. NumPy's ``maximum``
    against the scalar 0 takes a loop 1.3-2x slower than against such a row (12.8 MB:
    1.05 -> 0.66-0.95 ms; lenet's 1.4 MB: 0.113 -> 0.058 ms, measured)."""
    if x.ndim == 0:
        return 0
    inner = min(range(x.ndim), key=lambda d: abs(x.strides[d]) if x.shape[d] > 1 else float("inf"))
    shape = [1] * x.ndim
    shape[inner] = x.shape[inner]
    return xp.zeros(shape, dtype=x.dtype)


def out_size(size, kernel, stride, padding):
    """Output length of a sliding window (PyTorch's floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


class Backend:
    #: Blocks of work ``parallel`` runs at once (see there).
    threads = 1

    def __init__(self, name, xp, cache_block_bytes=None, buffer_block_bytes=None):
        self.name = name
        self.xp = xp
        # Column matrices larger than this are built and multiplied a block of output
        # rows at a time (see conv2d); None: always whole (a GPU wants large launches).
        self.cache_block_bytes = cache_block_bytes
        # At most this, where the blocks take turns in one buffer (columns that are not
        # kept: inference), so that the buffer stays in a core's own cache; None: no less.
        self.buffer_block_bytes = buffer_block_bytes
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

    def prepare(self):
        """Build or compile this backend's kernels now, so that no build lands inside
        the first training step (the train command calls it before training)."""

    # ---- splitting work ---------------------------------------------------------
    # Every image kernel below is independent per channel, and channels are the
    # outermost axis of the CHWN layout, so a range of channels is one contiguous block
    # of memory. A backend that can run blocks at once (the NumPy backend's threads,
    # see backends/host.py) overrides parallel, splits and matmul; here each piece of
    # work is one call, as a GPU already parallelises inside every array operation.
    def parallel(self, body, count, nbytes):
        """Run ``body(start, stop)`` over ``range(count)``, ``nbytes`` the work's size."""
        body(0, count)

    def splits(self, nbytes):
        """Whether ``parallel`` may split work of ``nbytes`` (never, here)."""
        return False

    def matmul(self, a, b, out=None):
        """``a @ b``: every matrix product of the engine goes through here."""
        return self.xp.matmul(a, b, out=out)

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

    def relu(self, x, out=None):
        """``max(x, 0)`` in ``x``'s layout (into ``out``, of that layout, if given); a NaN
        stays NaN, as in PyTorch."""
        out = self.xp.empty_like(x) if out is None else out
        return self.elementwise(self.xp.maximum, out, x, _zero_row(self.xp, x))

    def relu_backward(self, g, y):
        """ReLU's gradient from its output ``y``: ``g`` where ``y > 0``, else 0, also
        where ``g`` is inf or NaN (PyTorch's threshold_backward and the C kernel; ``g *
        (y > 0)`` would make those NaN)."""
        xp = self.xp
        zero = xp.zeros((), dtype=g.dtype)

        def passed(g, y, out):
            xp.copyto(out, xp.where(y > 0, g, zero))

        return self.elementwise(passed, xp.empty_like(y), g, y)

    # ---- batch normalisation over (C, count) rows: a channel's values in one row ----
    # The activations are large and the work per element tiny, so these bodies save
    # full-size passes: the centered input (in the output's memory) is never kept,
    # inv_std and the weight fold into one per-channel scale, and backward takes every
    # per-channel sum from g and x - mean directly, never forming g * weight. Each step
    # is per channel, so each body is one ``parallel`` region over blocks of channels:
    # a thread takes its channels through every step while they are in its cache, and
    # a channel's numbers do not depend on which others share its block. Per-channel
    # sums accumulate in float64: a convolution's weight gradient through a BatchNorm
    # is a near-total cancellation, and float32 sums (BLAS dot products, as before)
    # left errors of 2.7e-3 in bn-cnn's (against float64; PyTorch's: 1e-4; now 1e-6).
    def batch_norm(self, rows, weight, shift, eps, relu=False):
        """Normalise each row by its own mean and biased variance, then scale by
        ``weight`` (or None) and add ``shift``; with ``relu``, then ReLU (a BatchNorm
        followed by a ReLU: see ``nn.Sequential``). Returns out, mean, var, inv_std."""
        xp = self.xp
        channels, count = rows.shape
        mean, var, inv_std = (xp.empty(channels, dtype=rows.dtype) for _ in range(3))
        out = xp.empty_like(rows)

        def normalise(c0, c1):
            b = slice(c0, c1)
            mean[b] = rows[b].sum(axis=1, dtype=xp.float64) / count
            xc = xp.subtract(rows[b], mean[b, None], out=out[b])
            var[b] = xp.square(xc).sum(axis=1, dtype=xp.float64) / count  # two-pass (centered)
            inv_std[b] = 1 / xp.sqrt(var[b] + eps)
            xc *= (inv_std[b] if weight is None else inv_std[b] * weight[b])[:, None]
            xc += shift[b, None]
            if relu:
                xp.maximum(xc, 0, out=xc)

        self.parallel(normalise, channels, rows.nbytes)
        return out, mean, var, inv_std

    def batch_norm_backward(self, g, rows, mean, inv_std, weight, use_batch, relu_out=None):
        """From the output's gradient ``g`` (rows), the input's gradient and the sums
        ``g_xhat = sum(g * xhat)`` and ``g_sum = sum(g)`` per channel, the affine
        parameters' gradients (``g_xhat`` is None without ``rows``). ``use_batch``: the
        statistics were the batch's, so they depend on the input too. ``relu_out``: the
        forward's output when it ended in a ReLU, whose backward ``g`` passes first."""
        xp = self.xp
        if relu_out is not None:
            g = self.relu_backward(g, relu_out)
        channels, count = g.shape
        g_sum = xp.empty(channels, dtype=g.dtype)
        g_xhat = None if rows is None else xp.empty(channels, dtype=g.dtype)
        gx = xp.empty_like(g)

        def backward_block(c0, c1):
            b = slice(c0, c1)
            g[b].sum(axis=1, out=g_sum[b])  # pairwise: the true mean of g cancels
            scale = (inv_std[b] if weight is None else inv_std[b] * weight[b])[:, None]
            if rows is not None:
                xc = xp.subtract(rows[b], mean[b, None], out=gx[b])
                g_xhat[b] = (g[b] * xc).sum(axis=1, dtype=xp.float64) * inv_std[b]
            if use_batch:
                # dx = inv_std * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))
                #    = scale * (g - mean(g) - xc * inv_std * mean(g * xhat))
                xc *= (-inv_std[b] * g_xhat[b] / count)[:, None]
                xc += g[b]
                xc -= (g_sum[b] / count)[:, None]
                xc *= scale
            else:
                xp.multiply(g[b], scale, out=gx[b])

        self.parallel(backward_block, channels, g.nbytes)
        return gx, g_xhat, g_sum

    def scale_shift(self, rows, scale, shift, relu=False):
        """``rows * scale + shift`` with one scale and shift per row (a BatchNorm on
        running statistics), then ReLU if ``relu``."""
        xp = self.xp

        def affine(x, scale, shift, out):
            xp.multiply(x, scale, out=out)
            out += shift
            return out

        out = self.elementwise(affine, xp.empty_like(rows), rows, scale[:, None], shift[:, None])
        return self.relu(out, out=out) if relu else out

    def scale_shift_pool(self, rows, shape, scale, shift, window):
        """``scale_shift`` with ReLU, then ``max_pool`` as in ``batch_norm_pool``: the
        fused op on running statistics. Returns the pooled output and the routing."""
        return self.max_pool(self.scale_shift(rows, scale, shift, relu=True).reshape(shape), *window)

    def batch_norm_pool(self, rows, shape, weight, shift, eps, window):
        """A BatchNorm on batch statistics, a ReLU and a max pool as one op (``nn.Sequential``
        fuses the three): ``batch_norm`` with ``relu``, then ``max_pool`` of its output,
        the (C, H, W, N) array ``shape``, over ``window`` (kh, kw, sh, sw, ph, pw). Returns
        the pooled output, the pool's routing, mean, var and inv_std. A backend with a
        fused kernel keeps the full-size activation between them out of memory."""
        out, mean, var, inv_std = self.batch_norm(rows, weight, shift, eps, relu=True)
        pooled, routing = self.max_pool(out.reshape(shape), *window)
        return pooled, routing, mean, var, inv_std

    def batch_norm_pool_backward(self, dout, pooled, routing, shape, window, rows, mean, inv_std, weight,
                                 use_batch):
        """Its backward from ``dout``, the pooled output's gradient; returns what
        ``batch_norm_backward`` does. The ReLU's output at a window's argmax is the
        window's maximum, so ReLU's backward (pass where the output is > 0) can come
        first, on the pooled arrays, then the pool's and the BatchNorm's: the same numbers
        as the three backward passes in their own order."""
        xp = self.xp
        passed = xp.where(pooled > 0, dout, xp.zeros((), dtype=dout.dtype))
        g = self.max_pool_backward(passed, routing, shape, *window)
        return self.batch_norm_backward(xp.ascontiguousarray(g).reshape(shape[0], -1), rows, mean, inv_std,
                                        weight, use_batch)

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

    def im2col(self, x, kh, kw, sh, sw, ph, pw, out=None):
        """Columns (C, kh, kw, OH, OW, N), contiguous: the padded input once, then one
        copy (into ``out`` if given, a contiguous array of that shape)."""
        _, h, w, _ = x.shape
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        win = self.windows(self.pad(x, ph, pw), kh, kw, sh, sw, oh, ow)
        cols = self.xp.empty(win.shape, dtype=x.dtype) if out is None else out
        # Split by channel; a one-channel input (a first layer) by kernel row instead.
        lead = () if win.shape[0] > 1 else (slice(None),)
        self.parallel(lambda a, b: self.xp.copyto(cols[lead + (slice(a, b),)], win[lead + (slice(a, b),)]),
                      win.shape[len(lead)], cols.nbytes)
        return cols

    def conv2d(self, x, w2, bias, kh, kw, sh, sw, ph, pw, weight_grad=False, bias_grad=False):
        """``w2 @ im2col(x) + bias`` as (Cout, OH, OW, N) and, with ``weight_grad``, the
        function that backward calls for the weight's gradient (else None):
        ``weight_backward(gc)``, for ``gc`` the output's gradient as (Cout, OH*OW*N),
        returns the weight's gradient ``gc @ cols.T`` as (Cout, C*kh*kw) and, with
        ``bias_grad``, the bias's, ``gc``'s row sums (else None).

        Here that function keeps the columns; with ``bias_grad`` they carry one more
        row, of ones, so that the one product ``cols @ gc.T`` also gives the row sums,
        from the same pass over ``gc`` (a separate sum of that activation-sized gradient
        is one more full pass over memory: 2.5 of bn-cnn's ~45 ms, measured).

        Columns too large for the cache are copied and multiplied one block of output
        rows at a time, so the product reads each block while it is still in cache
        rather than from memory (measured 1.2-2x faster per layer at batch 256-1000).
        Blocks are independent, so they are also the unit of ``parallel``; without
        ``weight_grad`` each run of blocks reuses one buffer."""
        xp = self.xp
        c, h, w, n = x.shape
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        k, cout = c * kh * kw, w2.shape[0]
        total = k * oh * ow * n * x.dtype.itemsize
        rows = self._rows_per_block(oh, total, buffered=not weight_grad)
        shape = (c, kh, kw, oh, ow, n)
        cols, kept = self._columns(shape, x.dtype, bias_grad) if weight_grad else (None, None)
        backward = None if kept is None else self._weight_backward(kept, k, bias_grad)
        if rows is None:
            cols = self.im2col(x, kh, kw, sh, sw, ph, pw, out=cols).reshape(k, -1)
            out = self.matmul(w2, cols)
            if bias is not None:
                self.elementwise(xp.add, out, out, bias[:, None])
            return out.reshape(cout, oh, ow, n), backward
        starts = range(0, oh, rows)
        win = self.windows(self.pad(x, ph, pw), kh, kw, sh, sw, oh, ow)
        out = xp.empty((cout, oh, ow, n), dtype=x.dtype)

        def run(a, b):
            buffer = cols if weight_grad else xp.empty(win[:, :, :, :rows].shape, dtype=x.dtype)
            for r0 in starts[a:b]:
                r1 = min(oh, r0 + rows)
                part = buffer[:, :, :, r0:r1] if weight_grad else buffer[:, :, :, :r1 - r0]
                xp.copyto(part, win[:, :, :, r0:r1])
                product = out[:, r0:r1].reshape(cout, -1)  # a view: rows of one channel are contiguous
                xp.matmul(w2, part.reshape(k, -1), out=product)
                if bias is not None:
                    product += bias[:, None]

        self.parallel(run, len(starts), total)
        return out, backward

    def _weight_backward(self, kept, k, bias_grad):
        """``conv2d``'s weight_backward over the kept columns (k rows, then the row of
        ones if ``bias_grad``)."""
        def weight_backward(gc):
            # (cols @ gc^T)^T, not gc @ cols^T: the same product, but OpenBLAS runs this
            # operand order 1.2-2x faster for these long-K, narrow shapes (measured).
            grads = self.matmul(kept, gc.T)
            return grads[:k].T, (grads[k] if bias_grad else None)

        return weight_backward

    def _columns(self, shape, dtype, ones_row):
        """A contiguous (C, kh, kw, OH, OW, N) array for im2col to fill, and the same
        memory as the (C*kh*kw [+ 1], OH*OW*N) matrix, followed by a row of ones if
        ``ones_row``."""
        k, m = shape[0] * shape[1] * shape[2], shape[3] * shape[4] * shape[5]
        memory = self.xp.empty((k + ones_row) * m, dtype=dtype)
        if ones_row:
            memory[k * m:] = 1
        return memory[:k * m].reshape(shape), memory.reshape(k + ones_row, m)

    def _rows_per_block(self, oh, total, buffered=False):
        """Output rows per block, for work of ``total`` bytes over ``oh`` rows, or None to
        do the work whole (no ``cache_block_bytes``, or it fits in two blocks): blocks of
        at most ``cache_block_bytes`` (and ``buffer_block_bytes`` if ``buffered``: the
        blocks take turns in one buffer), their count a multiple of the threads where the
        rows allow it, so that every thread gets as many."""
        block = self.cache_block_bytes
        if block is not None and buffered and self.buffer_block_bytes is not None:
            block = min(block, self.buffer_block_bytes)
        if block is None or total <= 2 * block:
            return None
        target = -(-total // block)
        target = -(-target // self.threads) * self.threads
        rows = max(1, -(-oh // target))
        while rows > 1 and -(-oh // rows) % self.threads:
            rows -= 1
        return rows

    def conv2d_input_grad(self, w2, gc, x_shape, kh, kw, sh, sw, ph, pw):
        """The gradient of a convolution's input (C, H, W, N): ``col2im(w2.T @ gc)``,
        for ``gc`` the output's gradient as (Cout, OH*OW*N).

        Like the forward pass, a product too large for the cache is made one block of
        output rows at a time and each block scattered while it is in cache, so the
        columns' gradient (kh*kw times the input's size) never goes to memory; the
        blocks' scatters overlap by a few rows, so ``parallel`` splits by channel."""
        xp = self.xp
        c, h, w, n = x_shape
        cout = gc.shape[0]
        oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        total = c * kh * kw * gc.shape[1] * gc.dtype.itemsize
        rows = self._rows_per_block(oh, total)
        if rows is None:
            dcols = self.matmul(w2.T, gc).reshape(c, kh, kw, oh, ow, n)
            return self.col2im(dcols, x_shape, sh, sw, ph, pw)
        by_row = gc.reshape(cout, oh, -1)
        dx = xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=gc.dtype)

        def scatter(c0, c1):
            weights = w2.T[c0 * kh * kw:c1 * kh * kw]
            buffer = xp.empty((c1 - c0, kh, kw, rows, ow, n), dtype=gc.dtype)
            for r0 in range(0, oh, rows):
                r1 = min(oh, r0 + rows)
                part = buffer[:, :, :, :r1 - r0]
                xp.matmul(weights, by_row[:, r0:r1].reshape(cout, -1), out=part.reshape(weights.shape[0], -1))
                self.add_columns(part, dx[c0:c1, r0 * sh:], sh, sw)

        self.parallel(scatter, c, total)
        return dx[:, ph:ph + h, pw:pw + w]

    def col2im(self, cols, x_shape, sh, sw, ph, pw):
        """Adjoint of im2col: scatter-add columns (C, kh, kw, OH, OW, N) back to (C, H, W, N)."""
        c, h, w, n = x_shape
        dx = self.xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=cols.dtype)
        self.parallel(lambda a, b: self.add_columns(cols[a:b], dx[a:b], sh, sw), c, cols.nbytes)
        return dx[:, ph:ph + h, pw:pw + w]

    def add_columns(self, cols, dx, sh, sw):
        """Add columns (C, kh, kw, OH, OW, N) into ``dx`` (C, H, W, N), a padded image
        whose row 0 is the first window's: each pixel takes the values of the windows
        over it, one pass per window offset (i, j) in ascending order."""
        _, kh, kw, oh, ow, _ = cols.shape
        for k in range(kh * kw):
            i, j = k // kw, k % kw
            rows, columns = self.window_slice(i, j, sh, sw, oh, ow)
            dx[:, rows, columns] += cols[:, i, j]

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

        self.parallel(pool, c, x.nbytes)
        return out, (xpad, out)

    def max_pool_backward(self, dout, routing, x_shape, kh, kw, sh, sw, ph, pw):
        """Send each window's gradient to its first maximum in row-major order
        (PyTorch's rule; ties are everywhere on real images: the zero background).
        Window elements are visited in that order; an element takes the window's
        gradient if it equals the maximum and no earlier element did. "No earlier
        element did" is kept as a boolean array: a quarter of a float's memory traffic."""
        xp = self.xp
        xpad, out = routing
        c, h, w, n = x_shape
        _, oh, ow, _ = dout.shape
        win = self.windows(xpad, kh, kw, sh, sw, oh, ow)
        # Windows that do not overlap write each input element at most once, so the
        # shares go straight into dx with out=; only what no window covers needs zeros.
        disjoint = sh >= kh and sw >= kw
        tiled = disjoint and (sh, sw) == (kh, kw)
        dx = (xp.empty if tiled else xp.zeros)(xpad.shape, dtype=dout.dtype)

        def route(a, b):
            grad, maxima, part = dout[a:b], out[a:b], dx[a:b]
            if tiled:
                part[:, kh * oh:] = 0
                part[:, :kh * oh, kw * ow:] = 0
            is_max = None
            share = None if disjoint else xp.empty(grad.shape, dtype=grad.dtype)
            for k in range(kh * kw):
                i, j = k // kw, k % kw
                is_max = xp.equal(win[a:b, i, j], maxima, out=is_max)
                if k == 0:
                    taken = is_max.copy()
                else:
                    xp.greater(is_max, taken, out=is_max)  # a maximum, and the first one
                    if k < kh * kw - 1:
                        taken |= is_max
                rows, columns = self.window_slice(i, j, sh, sw, oh, ow)
                if disjoint:
                    xp.multiply(grad, is_max, out=part[:, rows, columns])
                else:
                    part[:, rows, columns] += xp.multiply(grad, is_max, out=share)

        self.parallel(route, c, dx.nbytes)
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

