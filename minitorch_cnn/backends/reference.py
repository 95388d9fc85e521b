"""The reference path: every array op of the engine, written plainly over ``xp``.

This file is the backend contract and its textbook implementation at once. Each method
of :class:`Backend` below is one op's body on raw arrays (NumPy or CuPy: ``self.xp``),
written to be read, not to be fast. They are the oracle that every fast path is tested
against, and ``mt.use_backend("numpy-reference")`` trains with them alone.

A fast backend subclasses :class:`Backend` and overrides a method with the same
signature and the same numbers (to rounding): the NumPy backend with C kernels and
threads (``host.py``), the CuPy backend with CUDA kernels (``cupy_backend.py``).
``backends.contract()`` lists, op by op, which backend overrides what.

Layout. Images are stored *batch-innermost*, as contiguous ``(C, H, W, N)`` arrays, and
the public NCHW tensors are views of that memory (``nn/functional.py``). In this layout
a convolution is one product ``W(Cout, C*kh*kw) @ cols(C*kh*kw, OH*OW*N)`` whose result
is already the next layer's ``(Cout, OH, OW, N)`` input, and every copy of im2col moves
runs of N contiguous numbers.
"""
from typing import NamedTuple


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


class Window(NamedTuple):
    """A sliding window over an image: kernel (kh, kw), stride (sh, sw), padding (ph, pw)
    on each side, dilation (dh, dw): the kernel's taps are dh rows and dw columns apart,
    and (eh, ew) extra rows and columns of padding at the bottom and right only (an odd
    total of ``padding="same"``, and the room ``ceil_mode`` gives the last window).
    The first six fields are the geometry the C and CUDA kernels take; they run windows
    of dilation 1 only."""
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int = 1
    dw: int = 1
    eh: int = 0
    ew: int = 0

    def out_size(self, h, w):
        """(OH, OW): where the (dilated) window fits in the padded h x w image."""
        return ((h + 2 * self.ph + self.eh - self.dh * (self.kh - 1) - 1) // self.sh + 1,
                (w + 2 * self.pw + self.ew - self.dw * (self.kw - 1) - 1) // self.sw + 1)

    def offsets(self):
        """The (i, j) offsets inside the window, in row-major order."""
        return [(i, j) for i in range(self.kh) for j in range(self.kw)]

    def rows_cols(self, i, j, oh, ow):
        """The slices of padded-image rows and columns that offset (i, j) reads, one per output."""
        top, left = i * self.dh, j * self.dw
        return slice(top, top + self.sh * (oh - 1) + 1, self.sh), slice(left, left + self.sw * (ow - 1) + 1, self.sw)


# The backend contract: the op bodies below, which a fast backend may override
# (``backends.contract()`` tabulates who does).
OPS = ("matmul", "relu", "relu_backward", "im2col", "col2im", "add_columns", "conv2d", "conv2d_input_grad",
       "max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward", "batch_norm", "batch_norm_backward",
       "scale_shift", "batch_norm_pool", "scale_shift_pool", "batch_norm_pool_backward")


def implemented_by(label):
    """Label a fast backend's override of a reference body, for the contract's table."""
    def decorate(method):
        method.implementation = label
        return method
    return decorate


class Backend:
    """An array module and the op bodies the engine computes with."""

    def __init__(self, name, xp):
        self.name = name
        self.xp = xp
        self.seed(None)

    def __repr__(self):
        return f"<minitorch_cnn backend {self.name!r}>"

    # ---- arrays ------------------------------------------------------------------
    def owns(self, array):
        return isinstance(array, self.xp.ndarray)

    def asarray(self, data, dtype=None):
        """A host (NumPy) array or nested list as an array of this backend."""
        return self.xp.asarray(data, dtype=dtype)

    def to_numpy(self, array):
        return array

    def synchronize(self):
        """Wait for queued device work (nothing to wait for on the CPU)."""

    def prepare(self):
        """Build or compile this backend's kernels now, so that no build lands inside
        the first training step (the train command calls it before training)."""

    # ---- random numbers --------------------------------------------------------------
    def seed(self, seed):
        """Reseed this backend's generator (dropout masks, randn)."""
        self.rng = self.xp.random.default_rng(seed)

    def random(self, shape, dtype):
        """Uniform [0, 1) samples of the given float dtype."""
        return self.rng.random(shape, dtype=dtype)

    # ---- dense ops ---------------------------------------------------------------------
    def matmul(self, a, b, out=None):
        """``a @ b``: every matrix product of the engine goes through here."""
        return self.xp.matmul(a, b, out=out)

    def relu(self, x):
        """``max(x, 0)``; a NaN stays NaN, as in PyTorch."""
        return self.xp.maximum(x, 0)

    def relu_backward(self, g, y):
        """ReLU's gradient from its output ``y``: 0 where ``y <= 0``, else ``g`` (PyTorch's
        threshold_backward: a NaN output passes its gradient on)."""
        return self.xp.where(y <= 0, self.xp.zeros((), dtype=g.dtype), g)

    # ---- windows over (C, H, W, N) images ------------------------------------------------
    def pad(self, x, window, value=0.0):
        """``x`` with ``window``'s padding of ``value``: ph rows on top, ph + eh at the
        bottom, pw columns on the left, pw + ew on the right."""
        ph, pw, eh, ew = window.ph, window.pw, window.eh, window.ew
        if not (ph or pw or eh or ew):
            return x
        c, h, w, n = x.shape
        out = self.xp.full((c, h + 2 * ph + eh, w + 2 * pw + ew, n), value, dtype=x.dtype)
        out[:, ph:ph + h, pw:pw + w] = x
        return out

    def windows(self, xpad, window, oh, ow):
        """A view (C, kh, kw, OH, OW, N) of every window element of a padded image: no copy."""
        c, _, _, n = xpad.shape
        s_c, s_h, s_w, s_n = xpad.strides
        return self.xp.lib.stride_tricks.as_strided(
            xpad, shape=(c, window.kh, window.kw, oh, ow, n),
            strides=(s_c, s_h * window.dh, s_w * window.dw, s_h * window.sh, s_w * window.sw, s_n))

    def im2col(self, x, window):
        """The columns (C, kh, kw, OH, OW, N): a copy of the window view of the padded input."""
        oh, ow = window.out_size(x.shape[1], x.shape[2])
        return self.xp.ascontiguousarray(self.windows(self.pad(x, window), window, oh, ow))

    def col2im(self, cols, x_shape, window):
        """The adjoint of im2col: add every column (C, kh, kw, OH, OW, N) back onto the
        pixel it was copied from, giving a (C, H, W, N) image."""
        c, h, w, n = x_shape
        dx = self.xp.zeros((c, h + 2 * window.ph + window.eh, w + 2 * window.pw + window.ew, n), dtype=cols.dtype)
        self.add_columns(cols, dx, window)
        return dx[:, window.ph:window.ph + h, window.pw:window.pw + w]

    def add_columns(self, cols, dx, window):
        """Add columns (C, kh, kw, OH, OW, N) into the padded image ``dx``, one window
        offset (i, j) at a time, in row-major order."""
        _, _, _, oh, ow, _ = cols.shape
        for i, j in window.offsets():
            rows, columns = window.rows_cols(i, j, oh, ow)
            dx[:, rows, columns] += cols[:, i, j]

    # ---- convolution -----------------------------------------------------------------------
    def conv2d(self, x, w2, bias, window, groups=1, weight_grad=False, bias_grad=False):
        """``w2 @ im2col(x) + bias`` as (Cout, OH, OW, N), for ``w2`` the weight as
        (Cout, C/groups*kh*kw): with ``groups`` g, the input's channels and the output's
        fall into g groups, and group k's outputs see only group k's inputs, so the
        product is a stack of g products, one per group (depthwise: g = C). With
        ``weight_grad`` also the function backward calls for the weight's gradient (else
        None): ``weight_backward(gc)``, for ``gc`` the output's gradient as (Cout,
        OH*OW*N), returns ``gc @ cols.T`` and, with ``bias_grad``, the bias's gradient,
        ``gc``'s row sums (else None)."""
        c, h, w, n = x.shape
        (cout, k), g = w2.shape, groups
        oh, ow = window.out_size(h, w)
        cols = self.im2col(x, window).reshape(g, k, oh * ow * n)
        out = self._group_matmul(w2.reshape(g, cout // g, k), cols).reshape(cout, oh * ow * n)
        if bias is not None:
            out += bias[:, None]

        def weight_backward(gc):
            gw2 = self._group_matmul(gc.reshape(g, cout // g, oh * ow * n), cols.transpose(0, 2, 1))
            return gw2.reshape(cout, k), (gc.sum(axis=1) if bias_grad else None)

        return out.reshape(cout, oh, ow, n), (weight_backward if weight_grad else None)

    def conv2d_input_grad(self, w2, gc, x_shape, window, groups=1):
        """The gradient of a convolution's input (C, H, W, N): ``col2im(w2.T @ gc)``, group
        by group."""
        c, h, w, n = x_shape
        oh, ow = window.out_size(h, w)
        (cout, k), g = w2.shape, groups
        w3 = w2.reshape(g, cout // g, k)
        dcols = self._group_matmul(w3.transpose(0, 2, 1), gc.reshape(g, cout // g, oh * ow * n))
        return self.col2im(dcols.reshape(c, window.kh, window.kw, oh, ow, n), x_shape, window)

    def _group_matmul(self, a, b):
        """``a[k] @ b[k]`` for each group k of two stacks of matrices; for a single group
        the plain product, which no array module copies a transposed operand for."""
        if a.shape[-1] == 1:  # an outer product per group (a depthwise input gradient): a * b,
            return a * b      # which NumPy computes ~4x faster than its matmul of this shape
        if a.shape[0] == 1:
            return self.matmul(a[0], b[0])[None]
        return self.matmul(a, b)

    # ---- pooling ----------------------------------------------------------------------------
    def max_pool(self, x, window):
        """Window maxima (C, OH, OW, N), padding with -inf, and the *routing* for backward:
        the offset ``i * kw + j`` of each window's first maximum in row-major order
        (PyTorch's tie rule), uint8 where the window has at most 256 elements."""
        xp = self.xp
        c, h, w, n = x.shape
        oh, ow = window.out_size(h, w)
        win = self.windows(self.pad(x, window, -xp.inf), window, oh, ow)
        flat = win.reshape(c, window.kh * window.kw, oh, ow, n)  # a copy: every window's elements
        arg = flat.argmax(axis=1)
        out = xp.take_along_axis(flat, arg[:, None], axis=1)[:, 0]
        return out, arg.astype(xp.uint8 if window.kh * window.kw <= 256 else xp.int64)

    def max_pool_backward(self, dout, arg, x_shape, window):
        """Each window's gradient goes to its first maximum: columns holding ``dout`` at the
        routed offset and 0 elsewhere, added back by col2im."""
        xp = self.xp
        c, oh, ow, n = dout.shape
        offsets = xp.arange(window.kh * window.kw).reshape(1, -1, 1, 1, 1)
        cols = xp.where(arg[:, None] == offsets, dout[:, None], xp.zeros((), dtype=dout.dtype))
        return self.col2im(cols.reshape(c, window.kh, window.kw, oh, ow, n), x_shape, window)

    def avg_pool(self, x, window, divisor):
        """Window sums (C, OH, OW, N) of the zero-padded input over ``divisor``: a number
        (kh*kw: the padding counted, PyTorch's default) or one per output (OH, OW, 1)."""
        oh, ow = window.out_size(x.shape[1], x.shape[2])
        return self.windows(self.pad(x, window), window, oh, ow).sum(axis=(1, 2)) / divisor

    def avg_pool_backward(self, dout, x_shape, window, divisor):
        """Each window's gradient over ``divisor``, to each of its kh*kw elements, added back by col2im."""
        c, oh, ow, n = dout.shape
        share = (dout / divisor).astype(dout.dtype, copy=False)
        cols = self.xp.broadcast_to(share[:, None, None], (c, window.kh, window.kw, oh, ow, n))
        return self.col2im(cols, x_shape, window)

    # ---- batch normalisation, on (C, count) rows: each channel's values in one row ----------
    # Sums over a channel accumulate in float64: a convolution's weight gradient through a
    # BatchNorm is a near-total cancellation, which float32 sums get wrong by ~1e-3.
    def batch_norm(self, rows, weight, shift, eps, relu=False):
        """Normalise each row by its mean and biased variance (two passes: the mean, then
        the mean square of ``rows - mean``), scale by ``weight`` (or None) and add
        ``shift``; with ``relu``, then ReLU. Returns out, mean, var, inv_std."""
        xp, count = self.xp, rows.shape[1]
        mean = rows.sum(axis=1, dtype=xp.float64) / count
        centered = rows - mean[:, None]
        var = (centered * centered).sum(axis=1, dtype=xp.float64) / count
        inv_std = 1 / xp.sqrt(var + eps)
        scale = inv_std if weight is None else inv_std * weight
        out = (centered * scale[:, None] + shift[:, None]).astype(rows.dtype)
        if relu:
            out = self.relu(out)
        return out, mean.astype(rows.dtype), var.astype(rows.dtype), inv_std.astype(rows.dtype)

    def batch_norm_backward(self, g, rows, mean, inv_std, weight, use_batch, relu_out=None):
        """From the output's gradient ``g`` (rows): the input's gradient, and per channel
        ``g_xhat = sum(g * xhat)`` and ``g_sum = sum(g)``, the weight's and the bias's
        gradients (``g_xhat`` is None without ``rows``). ``use_batch``: the statistics were
        the batch's, so they depend on the input too. ``relu_out``: the forward's output
        when it ended in a ReLU, whose backward comes first."""
        xp = self.xp
        if relu_out is not None:
            g = self.relu_backward(g, relu_out)
        count = g.shape[1]
        g_sum = g.sum(axis=1, dtype=xp.float64)
        scale = inv_std if weight is None else inv_std * weight
        g_xhat = xhat = None
        if rows is not None:
            xhat = (rows - mean[:, None]) * inv_std[:, None]
            g_xhat = (g * xhat).sum(axis=1, dtype=xp.float64)
        if use_batch:
            # dx = scale * (g - mean(g) - xhat * mean(g * xhat))
            gx = scale[:, None] * (g - g_sum[:, None] / count - xhat * g_xhat[:, None] / count)
        else:
            gx = g * scale[:, None]
        gx = gx.astype(g.dtype)
        return gx, None if g_xhat is None else g_xhat.astype(g.dtype), g_sum.astype(g.dtype)

    def scale_shift(self, rows, scale, shift, relu=False):
        """``rows * scale + shift`` with one scale and shift per row (a BatchNorm on running
        statistics), then ReLU if ``relu``."""
        out = rows * scale[:, None] + shift[:, None]
        return self.relu(out) if relu else out

    # A BatchNorm2d, a ReLU and a MaxPool2d fused into one op (nn.BatchNormReLU2d): here
    # the three bodies one after the other; a fast backend keeps the full-size activation
    # between them out of memory. ``shape`` is the (C, H, W, N) image the rows hold.
    def batch_norm_pool(self, rows, shape, weight, shift, eps, window):
        """``batch_norm`` with ``relu``, then ``max_pool``. Returns the pooled output, the
        pool's routing, mean, var and inv_std."""
        out, mean, var, inv_std = self.batch_norm(rows, weight, shift, eps, relu=True)
        pooled, arg = self.max_pool(out.reshape(shape), window)
        return pooled, arg, mean, var, inv_std

    def scale_shift_pool(self, rows, shape, scale, shift, window):
        """``scale_shift`` with ReLU, then ``max_pool``: the fused op on running statistics."""
        return self.max_pool(self.scale_shift(rows, scale, shift, relu=True).reshape(shape), window)

    def batch_norm_pool_backward(self, dout, pooled, arg, shape, window, rows, mean, inv_std, weight,
                                 use_batch):
        """Backward of ``batch_norm_pool`` from ``dout``, the pooled output's gradient. The
        ReLU's output at each window's argmax is the pooled output, so ReLU's backward can
        run first, on the pooled arrays; then the pool's, then the BatchNorm's."""
        passed = self.relu_backward(dout, pooled)
        g = self.max_pool_backward(passed, arg, shape, window)
        return self.batch_norm_backward(self.xp.ascontiguousarray(g).reshape(shape[0], -1), rows, mean,
                                        inv_std, weight, use_batch)
