"""The CNN ops, each a small :class:`Function` over raw arrays of any backend.

Images are NCHW at the API. Internally the image ops (conv, pooling, batch-norm)
compute on batch-innermost ``(C, H, W, N)`` arrays (see ``backends/reference.py`` for why)
and return NCHW-shaped *views* of that memory, so a chain of them never transposes:
``_chwn`` below is free whenever its input came from another image op.
"""
from .. import backends
from ..autograd import Function
from ..data.shard import current_batch_shard
from ..tensor import Tensor


def _chwn(x):
    """A contiguous (C, H, W, N) array of an NCHW-shaped array; free for our own outputs."""
    return backends.get_array_module(x).ascontiguousarray(x.transpose(1, 2, 3, 0))


def _nchw(a):
    """The NCHW-shaped view of a (C, H, W, N) array."""
    return a.transpose(3, 0, 1, 2)


def _chwn_shape(nchw_shape):
    n, c, h, w = nchw_shape
    return c, h, w, n


def _pair(value, name):
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return pair


def _check_image(x, op):
    if x.ndim != 4:
        raise ValueError(f"{op} expects a 4-D NCHW input, got shape {tuple(x.shape)}")


def _window(x, kernel, stride, padding, op):
    """The :class:`~minitorch_cnn.backends.Window` of ``kernel``, ``stride`` and ``padding``
    over ``x``, checked."""
    _check_image(x, op)
    kh, kw = _pair(kernel, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1:
        raise ValueError(f"{op}: kernel_size and stride must be positive, got {kernel!r}, {stride!r}")
    h, w = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    if h < kh or w < kw:
        raise ValueError(f"{op}: kernel {kh}x{kw} is larger than the padded input {h}x{w}")
    return backends.Window(kh, kw, sh, sw, ph, pw)


# ---- convolution -------------------------------------------------------------------
class Conv2d(Function):
    """im2col + a matrix product (``Backend.conv2d``); backward is the transposed
    products + col2im (``Backend.conv2d_input_grad``, and the function ``conv2d``
    returns for the weight's gradient, which gives the bias's too when both need one)."""

    def forward(self, x, w, *bias, stride, padding):
        cout, cin, kh, kw = w.shape
        if x.shape[1] != cin:
            raise ValueError(f"conv2d: input has {x.shape[1]} channels, weight {tuple(w.shape)} expects {cin}")
        window = _window(x, (kh, kw), stride, padding, "conv2d")
        be = backends.backend_of(x)
        xc = _chwn(x)
        w2 = w.reshape(cout, -1)
        self.has_bias = bool(bias)
        out, self.weight_backward = be.conv2d(
            xc, w2, bias[0] if bias else None, window, weight_grad=self.needs_grad[1],
            bias_grad=self.has_bias and self.needs_grad[1] and self.needs_grad[2])
        self.x_shape, self.window = xc.shape, window
        self.w2 = w2 if self.needs_grad[0] else None
        return _nchw(out)

    def backward(self, g):
        be = backends.backend_of(g)
        gc = _chwn(g).reshape(g.shape[1], -1)
        gx = gw = gb = None
        if self.needs_grad[0]:
            gx = _nchw(be.conv2d_input_grad(self.w2, gc, self.x_shape, self.window))
        if self.needs_grad[1]:
            gw2, gb = self.weight_backward(gc)
            gw = gw2.reshape(g.shape[1], self.x_shape[0], self.window.kh, self.window.kw)
        if self.has_bias and self.needs_grad[2] and gb is None:  # the weight is frozen
            gb = gc.sum(axis=1)
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def conv2d(input, weight, bias=None, stride=1, padding=0):
    args = (input, weight) if bias is None else (input, weight, bias)
    return Conv2d.apply(*args, stride=stride, padding=padding)


# ---- pooling -------------------------------------------------------------------------
class MaxPool2d(Function):
    def forward(self, x, window):
        self.x_shape, self.window = _chwn_shape(x.shape), window
        out, self.arg = backends.backend_of(x).max_pool(_chwn(x), window)
        return _nchw(out)

    def backward(self, g):
        be = backends.backend_of(g)
        return _nchw(be.max_pool_backward(_chwn(g), self.arg, self.x_shape, self.window))


class AvgPool2d(Function):
    def forward(self, x, window):
        self.x_shape, self.window = _chwn_shape(x.shape), window
        return _nchw(backends.backend_of(x).avg_pool(_chwn(x), window))

    def backward(self, g):
        be = backends.backend_of(g)
        return _nchw(be.avg_pool_backward(_chwn(g), self.x_shape, self.window))


def _pool_window(op, input, kernel_size, stride, padding):
    """The Window of a pooling over ``input``, checked."""
    window = _window(input, kernel_size, kernel_size if stride is None else stride, padding, op)
    if window.ph > window.kh // 2 or window.pw > window.kw // 2:
        raise ValueError(f"{op}: padding {padding!r} must be at most half of kernel_size {kernel_size!r}")
    return window


def _pool(fn, op, input, kernel_size, stride, padding):
    return fn.apply(input, window=_pool_window(op, input, kernel_size, stride, padding))


def max_pool2d(input, kernel_size, stride=None, padding=0):
    """Max pooling; pads with -inf, and the gradient goes to each window's first maximum."""
    return _pool(MaxPool2d, "max_pool2d", input, kernel_size, stride, padding)


def avg_pool2d(input, kernel_size, stride=None, padding=0):
    """Average pooling; zero padding counts towards the mean, as PyTorch's default."""
    return _pool(AvgPool2d, "avg_pool2d", input, kernel_size, stride, padding)


# ---- dense layers and activations ----------------------------------------------------
class Linear(Function):
    def forward(self, x, w, *bias):
        if x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear: input has {x.shape[-1]} features, weight {tuple(w.shape)} expects {w.shape[1]}")
        self.x, self.w, self.has_bias = x, w, bool(bias)
        if x.ndim == 2:
            out = backends.backend_of(x).matmul(x, w.T)
        else:
            out = backends.backend_of(x).matmul(x.reshape(-1, x.shape[-1]), w.T)
            out = out.reshape(x.shape[:-1] + w.shape[:1])
        if bias:
            out += bias[0]
        return out

    def backward(self, g):
        x, w = self.x, self.w
        be = backends.backend_of(g)
        g2 = g.reshape(-1, g.shape[-1])
        gx = be.matmul(g2, w).reshape(g.shape[:-1] + w.shape[1:]) if self.needs_grad[0] else None
        gw = be.matmul(g2.T, x.reshape(-1, x.shape[-1])) if self.needs_grad[1] else None
        if self.has_bias:
            return gx, gw, g2.sum(axis=0) if self.needs_grad[2] else None
        return gx, gw


def linear(input, weight, bias=None):
    args = (input, weight) if bias is None else (input, weight, bias)
    return Linear.apply(*args)


class ReLU(Function):
    def forward(self, x):
        self.out = backends.backend_of(x).relu(x)
        return self.out

    def backward(self, g):
        return backends.backend_of(g).relu_backward(g, self.out)


def relu(input):
    return ReLU.apply(input)


class Mask(Function):
    """Multiply by a fixed mask (dropout); the mask is also the gradient's factor."""

    def forward(self, x, mask):
        self.mask = mask
        return x * mask

    def backward(self, g):
        return g * self.mask


def _dropout(input, p, training, mask_shape):
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    if not training or p == 0:
        return input
    keep = _batch_random(input.backend, mask_shape, input.dtype) >= p
    # Inverted dropout: survivors are scaled by 1/(1-p) so eval needs no rescaling; the
    # scale in the input's dtype keeps the mask there (a Python float would make it float64).
    mask = keep * input.dtype.type(1.0 / (1.0 - p) if p < 1 else 0.0)
    return Mask.apply(input, mask=mask)


def _batch_random(be, shape, dtype):
    """Uniform samples for a batch's mask. When this process computes a share of a
    larger global batch (data-parallel training), they are that share's rows of the draw
    for the whole global batch, so the masks do not depend on the number of processes."""
    shard = current_batch_shard()
    if shard is None or shard.size != shape[0]:
        return be.random(shape, dtype)
    return be.random((shard.total,) + tuple(shape[1:]), dtype)[shard.start:shard.stop]


def dropout(input, p=0.5, training=True):
    return _dropout(input, p, training, input.shape)


def dropout2d(input, p=0.5, training=True):
    """Zero whole channels: one draw per (sample, channel)."""
    _check_image(input, "dropout2d")
    return _dropout(input, p, training, input.shape[:2] + (1, 1))


# ---- batch normalisation -------------------------------------------------------------
def _channel_rows(x):
    """(N, C) or (N, C, H, W) as a contiguous (C, everything-else) matrix: each
    channel's values in one row (free for our own 4-D outputs, which are CHWN)."""
    xp = backends.get_array_module(x)
    if x.ndim == 4:
        return _chwn(x).reshape(x.shape[1], -1)
    if x.ndim == 2:
        return xp.ascontiguousarray(x.T)
    raise ValueError(f"batch_norm expects (N, C) or (N, C, H, W) input, got shape {tuple(x.shape)}")


def _from_channel_rows(rows, x_shape):
    if len(x_shape) == 4:
        n, c, h, w = x_shape
        return _nchw(rows.reshape(c, h, w, n))
    return rows.T


class BatchNorm(Function):
    """Per-channel normalisation, computed on (C, everything-else) rows so each
    channel's statistics are one contiguous reduction (``Backend.batch_norm`` and
    ``batch_norm_backward``). Backward needs the centered input, ``x - mean``: it is
    formed again from the input, which the graph keeps anyway, rather than kept as one
    more activation-sized array. With ``relu`` the op is a BatchNorm followed by a ReLU,
    and with ``pool`` (a max pool's window) then by that max pool too (``nn.fuse_modules``
    makes that a ``BatchNormReLU2d``): the same numbers, with fewer passes over the activation each way."""

    def forward(self, x, *affine, running_mean, running_var, training, momentum, eps, relu=False, pool=None):
        be = backends.backend_of(x)
        xp = be.xp
        rows = _channel_rows(x)
        channels, count = rows.shape
        self.x_shape, self.use_batch, self.pool = x.shape, training or running_mean is None, pool
        if self.use_batch and count < 2 and training:
            raise ValueError("batch_norm: expected more than 1 value per channel when "
                             f"training, got input of shape {tuple(x.shape)}")
        weight, shift = affine if affine else (None, xp.zeros(channels, dtype=x.dtype))
        if self.use_batch and pool:
            out, self.arg, mean, var, inv_std = be.batch_norm_pool(rows, _chwn_shape(x.shape), weight, shift,
                                                                       eps, pool)
        elif self.use_batch:
            out, mean, var, inv_std = be.batch_norm(rows, weight, shift, eps, relu)
        else:
            # Running statistics: one affine map, x * scale + (shift - mean * scale),
            # as PyTorch's inference kernel.
            mean, inv_std = running_mean, 1 / xp.sqrt(running_var + eps)
            scale = inv_std if weight is None else inv_std * weight
            if pool:
                out, self.arg = be.scale_shift_pool(rows, _chwn_shape(x.shape), scale, shift - mean * scale,
                                                        pool)
            else:
                out = be.scale_shift(rows, scale, shift - mean * scale, relu)
        # ReLU's backward passes where its output is positive; after a pool, the pool's
        # output is the ReLU's output at each window's argmax.
        self.relu_out = out if relu else None
        if training and running_mean is not None:
            # Running statistics: momentum 0.1 by default, unbiased variance (PyTorch).
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * var * (count / (count - 1))
        # The weight's gradient needs x - mean; the input's alone does not, off batch
        # statistics. (A copy of the mean: the running mean changes in place.)
        keep_input = self.use_batch or (weight is not None and self.needs_grad[1])
        self.rows, self.mean = (rows, mean.copy()) if keep_input else (None, None)
        self.inv_std, self.weight = inv_std, weight
        return _nchw(out) if pool else _from_channel_rows(out, x.shape)

    def backward(self, g):
        be = backends.backend_of(g)
        if self.pool:
            gx, g_xhat, g_sum = be.batch_norm_pool_backward(
                _chwn(g), self.relu_out, self.arg, _chwn_shape(self.x_shape), self.pool, self.rows,
                self.mean, self.inv_std, self.weight, self.use_batch)
        else:
            gx, g_xhat, g_sum = be.batch_norm_backward(_channel_rows(g), self.rows, self.mean, self.inv_std,
                                                       self.weight, self.use_batch, self.relu_out)
        gx = _from_channel_rows(gx, self.x_shape)
        if self.weight is None:
            return gx
        return gx, g_xhat, g_sum


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Running statistics (raw arrays or Tensors) are updated in place when training."""
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, relu=False)


def _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, relu, pool=None):
    """``batch_norm``, and with ``relu`` then ``relu`` in the same op, and with ``pool``
    (max_pool2d's ``(kernel_size, stride, padding)``) then that max pool too
    (``nn.BatchNormReLU2d``; not a PyTorch function)."""
    raw = lambda t: t.data if isinstance(t, Tensor) else t
    affine = () if weight is None else (weight, bias if bias is not None else Tensor(
        weight.backend.xp.zeros(weight.shape, dtype=weight.dtype)))
    if pool is not None and not relu:
        raise ValueError("_batch_norm: a fused max pool follows the fused ReLU (relu=True)")
    window = None if pool is None else _pool_window("max_pool2d", input, *pool)
    return BatchNorm.apply(input, *affine, running_mean=raw(running_mean),
                           running_var=raw(running_var), training=training,
                           momentum=momentum, eps=eps, relu=relu, pool=window)


# ---- softmax family and losses ---------------------------------------------------------
class LogSoftmax(Function):
    def forward(self, x, dim):
        xp = backends.get_array_module(x)
        shifted = x - x.max(axis=dim, keepdims=True)  # stable for huge logits
        self.out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        self.dim = dim
        return self.out

    def backward(self, g):
        xp = backends.get_array_module(g)
        return g - xp.exp(self.out) * g.sum(axis=self.dim, keepdims=True)


class Softmax(Function):
    def forward(self, x, dim):
        xp = backends.get_array_module(x)
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        self.out = e / e.sum(axis=dim, keepdims=True)
        self.dim = dim
        return self.out

    def backward(self, g):
        return self.out * (g - (g * self.out).sum(axis=self.dim, keepdims=True))


def log_softmax(input, dim):
    return LogSoftmax.apply(input, dim=dim)


def softmax(input, dim):
    return Softmax.apply(input, dim=dim)


_REDUCTIONS = ("mean", "sum", "none")


class NLLLoss(Function):
    def forward(self, logp, target, reduction):
        xp = backends.get_array_module(logp)
        n = logp.shape[0]
        self.rows = xp.arange(n)
        self.target, self.shape, self.dtype, self.reduction = target, logp.shape, logp.dtype, reduction
        losses = -logp[self.rows, target]
        if reduction == "none":
            return losses
        total = losses.sum()
        return total / n if reduction == "mean" else total

    def backward(self, g):
        xp = backends.get_array_module(g)
        grad = xp.zeros(self.shape, dtype=self.dtype)
        scale = g / self.shape[0] if self.reduction == "mean" else g
        grad[self.rows, self.target] = -scale
        return grad


def nll_loss(input, target, reduction="mean"):
    """Negative log-likelihood of integer class ``target`` under log-probabilities ``input``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if input.ndim != 2:
        raise ValueError(f"nll_loss expects (N, C) log-probabilities, got shape {input.shape}")
    t = target.data if isinstance(target, Tensor) else backends.get_array_module(input.data).asarray(target)
    if t.shape != (input.shape[0],) or t.dtype.kind not in "iu":
        raise ValueError(f"nll_loss expects {input.shape[0]} integer class indices as target, "
                         f"got shape {tuple(t.shape)} of {t.dtype}")
    classes = input.shape[1]
    if input.backend.xp.__name__ == "numpy":  # host arrays: checked now, at no cost
        if t.size and (t.min() < 0 or t.max() >= classes):
            bad = t[(t < 0) | (t >= classes)][0]
            raise IndexError(f"target {bad} is out of bounds for {classes} classes")
    elif t.size:  # on a GPU, checked there: raised at the next sync, never wrapped silently
        # viewed as unsigned, a negative target is huge: one comparison catches both ends
        xp = input.backend.xp
        wide = t.astype(xp.int64, copy=False).view(xp.uint64)
        input.backend.check_later((wide >= classes).any(),
                                  f"a target is out of bounds for {classes} classes (checked on the "
                                  f"device, raised at the first sync after the loss)")
    return NLLLoss.apply(input, target=t, reduction=reduction)


def cross_entropy(input, target, reduction="mean"):
    """``nll_loss(log_softmax(input, 1), target)`` on raw logits."""
    return nll_loss(log_softmax(input, 1), target, reduction)
