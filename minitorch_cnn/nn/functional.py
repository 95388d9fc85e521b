"""The CNN ops, each a small :class:`Function` over raw arrays of any backend.

Images are NCHW at the API. Internally the image ops (conv, pooling, batch-norm)
compute on batch-innermost ``(C, H, W, N)`` arrays (see ``backends/reference.py`` for why)
and return NCHW-shaped *views* of that memory, so a chain of them never transposes:
``_chwn`` below is free whenever its input came from another image op.
"""
import math
import warnings

import numpy as np

from .. import backends
from ..autograd import Function
from ..data.shard import current_batch_shard
from ..tensor import Cast, ReLU, Tensor, wrap_dim


def _chwn(x):
    """A contiguous (C, H, W, N) array of an NCHW-shaped array; free for our own outputs."""
    return backends.get_array_module(x).ascontiguousarray(x.transpose(1, 2, 3, 0))


def _nchw(a):
    """The NCHW-shaped view of a (C, H, W, N) array."""
    return a.transpose(3, 0, 1, 2)


def _chwn_shape(nchw_shape):
    n, c, h, w = nchw_shape
    return c, h, w, n


def pair(value, name):
    """``value``, an int or a pair of ints (kernel size, stride, padding, dilation), as a
    checked pair; ``name`` names the argument in the error. The layers parse theirs here."""
    if type(value) is int and value >= 0:  # the common case, first: every op call parses these
        return value, value
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or not all(isinstance(v, int) and v >= 0 for v in values):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return values


def _positive_pair(value, name, op):
    if type(value) is int and value > 0:
        return value, value
    values = pair(value, name)
    if min(values) < 1:
        raise ValueError(f"{op}: {name} must be positive, got {value!r}")
    return values


def _batched(input, op):
    """``input`` as a 4-D NCHW tensor, and whether it was an unbatched (C, H, W) one,
    which PyTorch's image ops also take."""
    if input.ndim == 4:
        return input, False
    if input.ndim == 3:
        return input.reshape((1,) + input.shape), True
    raise ValueError(f"Expected 3D (unbatched) or 4D (batched) input to {op}, but got input of size: "
                     f"{list(input.shape)}")


def _unbatched(output, unbatched):
    return output.reshape(output.shape[1:]) if unbatched else output


def _check_image(x, op):
    if x.ndim != 4:
        raise ValueError(f"{op} expects a 4-D NCHW input, got shape {tuple(x.shape)}")


# ---- convolution -------------------------------------------------------------------
class Conv2d(Function):
    """im2col + a matrix product (``Backend.conv2d``); backward is the transposed
    products + col2im (``Backend.conv2d_input_grad``, and the function ``conv2d``
    returns for the weight's gradient, which gives the bias's too when both need one)."""

    def forward(self, x, w, *bias, window, groups):
        be = backends.backend_of(x)
        xc = _chwn(x)
        w2 = w.reshape(w.shape[0], -1)
        self.has_bias = bool(bias)
        out, self.weight_backward = be.conv2d(
            xc, w2, bias[0] if bias else None, window, groups, weight_grad=self.needs_grad[1],
            bias_grad=self.has_bias and self.needs_grad[1] and self.needs_grad[2])
        self.x_shape, self.w_shape, self.window, self.groups = xc.shape, w.shape, window, groups
        self.w2 = w2 if self.needs_grad[0] else None
        return _nchw(out)

    def backward(self, g):
        be = backends.backend_of(g)
        gc = _chwn(g).reshape(g.shape[1], -1)
        gx = gw = gb = None
        if self.needs_grad[0]:
            gx = _nchw(be.conv2d_input_grad(self.w2, gc, self.x_shape, self.window, self.groups))
        if self.needs_grad[1]:
            gw2, gb = self.weight_backward(gc)
            gw = gw2.reshape(self.w_shape)
        if self.has_bias and self.needs_grad[2] and gb is None:  # the weight is frozen
            gb = gc.sum(axis=1)
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def _conv_padding(padding, kernel, stride, dilation):
    """(ph, pw, eh, ew) of ``padding``: an int, a pair, "valid" or "same" (the output as
    large as the input; an odd total puts its extra row/column at the bottom/right, as
    PyTorch does)."""
    if not isinstance(padding, str):
        return (*pair(padding, "padding"), 0, 0)
    if padding == "valid":
        return 0, 0, 0, 0
    if padding != "same":
        raise ValueError(f"conv2d: invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    if stride != (1, 1):
        raise ValueError("padding='same' is not supported for strided convolutions")
    th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
    return th // 2, tw // 2, th % 2, tw % 2


def _conv_window(x, weight, bias, stride, padding, dilation, groups):
    """The :class:`~minitorch_cnn.backends.Window` of a convolution of the NCHW ``x`` by
    ``weight``, every argument checked as PyTorch checks it."""
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-D (out_channels, in_channels/groups, kH, kW), "
                         f"got shape {list(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    cout, cin, kh, kw = weight.shape
    if cout % groups:
        raise ValueError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                         f"but got weight of size {list(weight.shape)} instead")
    if x.shape[1] != cin * groups:
        raise ValueError(f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                         f"{list(x.shape)} to have {cin * groups} channels, but got {x.shape[1]} channels instead")
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
                         f"{cout} elements, but got bias of size {list(bias.shape)} instead")
    stride, dilation = _positive_pair(stride, "stride", "conv2d"), _positive_pair(dilation, "dilation", "conv2d")
    ph, pw, eh, ew = _conv_padding(padding, (kh, kw), stride, dilation)
    h, w = x.shape[2] + 2 * ph + eh, x.shape[3] + 2 * pw + ew
    if h < dilation[0] * (kh - 1) + 1 or w < dilation[1] * (kw - 1) + 1:
        raise ValueError(f"conv2d: calculated padded input size per channel: ({h} x {w}). Kernel size: "
                         f"({kh} x {kw}), dilation {dilation}. Kernel size can't be greater than actual input size")
    return backends.Window(kh, kw, *stride, ph, pw, *dilation, eh, ew)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation, as PyTorch's) of an NCHW or unbatched CHW
    ``input`` by ``weight`` (Cout, C/groups, kH, kW). ``padding``: an int, a pair,
    "valid" or "same"; ``dilation``: the kernel's taps that many pixels apart;
    ``groups``: input and output channels split into that many groups, each group's
    outputs seeing only its own inputs (depthwise: groups == C)."""
    x, unbatched = _batched(input, "conv2d")
    window = _conv_window(x, weight, bias, stride, padding, dilation, groups)
    args = (x, weight) if bias is None else (x, weight, bias)
    return _unbatched(Conv2d.apply(*args, window=window, groups=groups), unbatched)


# ---- pooling -------------------------------------------------------------------------
class MaxPool2d(Function):
    """Window maxima (``Backend.max_pool``); backward sends each window's gradient to
    its first maximum. ``routing``: a list that receives the pool's routing, for
    ``return_indices``."""

    def forward(self, x, window, routing=None):
        self.x_shape, self.window = _chwn_shape(x.shape), window
        out, self.arg = backends.backend_of(x).max_pool(_chwn(x), window)
        if routing is not None:
            routing.append(self.arg)
        return _nchw(out)

    def backward(self, g):
        be = backends.backend_of(g)
        return _nchw(be.max_pool_backward(_chwn(g), self.arg, self.x_shape, self.window))


class AvgPool2d(Function):
    """Window sums over ``divisor`` (``Backend.avg_pool``); backward shares each window's
    gradient over ``divisor`` among its elements."""

    def forward(self, x, window, divisor):
        self.x_shape, self.window, self.divisor = _chwn_shape(x.shape), window, divisor
        return _nchw(backends.backend_of(x).avg_pool(_chwn(x), window, divisor))

    def backward(self, g):
        be = backends.backend_of(g)
        return _nchw(be.avg_pool_backward(_chwn(g), self.x_shape, self.window, self.divisor))


def _pool_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Outputs of a pooling along one axis (PyTorch's pooling_output_shape): with
    ``ceil_mode`` the last window may run past the padded edge, but it must start
    inside the input or its left padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def _pool_window(op, input, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """The Window of a pooling over the NCHW ``input``, checked as PyTorch checks it; the
    extra room ``ceil_mode`` gives the last window is padding at the bottom/right."""
    kh, kw = _positive_pair(kernel_size, "kernel_size", op)
    sh, sw = (kh, kw) if stride is None or stride == [] or stride == () else _positive_pair(stride, "stride", op)
    ph, pw = pair(padding, "padding")
    dh, dw = _positive_pair(dilation, "dilation", op)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{op}: pad should be at most half of kernel size, but got pad={padding!r}, "
                         f"kernel_size={kernel_size!r}")
    c, h, w = input.shape[1:]
    oh, ow = _pool_size(h, kh, sh, ph, dh, ceil_mode), _pool_size(w, kw, sw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: given input size ({c}x{h}x{w}), calculated output size ({c}x{oh}x{ow}): "
                         f"output size is too small")
    eh, ew = (oh - 1) * sh + dh * (kh - 1) + 1 - h - 2 * ph, (ow - 1) * sw + dw * (kw - 1) + 1 - w - 2 * pw
    return backends.Window(kh, kw, sh, sw, ph, pw, dh, dw, max(eh, 0), max(ew, 0))


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling of an NCHW or unbatched CHW ``input``; pads with -inf, and the
    gradient goes to each window's first maximum. With ``return_indices`` also each
    maximum's flat index into its input plane (H*W), PyTorch's, for ``max_unpool2d``."""
    x, unbatched = _batched(input, "max_pool2d")
    window = _pool_window("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode)
    routing = [] if return_indices else None
    out = _unbatched(MaxPool2d.apply(x, window=window, routing=routing), unbatched)
    if not return_indices:
        return out
    indices = _nchw(_plane_indices(routing[0], window, x.shape[3]))
    return out, Tensor(indices[0] if unbatched else indices)


def _plane_indices(arg, window, width):
    """PyTorch's max-pool indices from a routing (C, OH, OW, N) of window offsets
    ``i * kw + j``: the flat index ``y * width + x`` of each maximum in its plane."""
    xp = backends.get_array_module(arg)
    _, oh, ow, _ = arg.shape
    i, j = xp.divmod(arg.astype(xp.int64), window.kw)
    y = (xp.arange(oh) * window.sh - window.ph)[:, None, None] + i * window.dh
    x = (xp.arange(ow) * window.sw - window.pw)[:, None] + j * window.dw
    return y * width + x


class MaxUnpool2d(Function):
    """Each value to its ``indices`` place in a zero plane of ``size`` (H, W): the
    inverse of a max pool; backward gathers the gradient from the same places."""

    def forward(self, x, indices, size):
        xp = backends.get_array_module(x)
        n, c = x.shape[:2]
        self.x_shape, self.index = x.shape, (xp.arange(n)[:, None, None], xp.arange(c)[None, :, None],
                                             indices.reshape(n, c, -1))
        out = xp.zeros((n, c, size[0] * size[1]), dtype=x.dtype)
        out[self.index] = x.reshape(n, c, -1)
        return out.reshape(n, c, *size)

    def backward(self, g):
        n, c = g.shape[:2]
        return g.reshape(n, c, -1)[self.index].reshape(self.x_shape)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """The partial inverse of ``max_pool2d``: ``input``'s values at ``indices`` (as
    ``max_pool2d(..., return_indices=True)`` gives them), zeros elsewhere, in an image of
    ``output_size`` (its last two entries; by default (H - 1) * stride - 2 * padding + kernel_size)."""
    x, unbatched = _batched(input, "max_unpool2d")
    kh, kw = _positive_pair(kernel_size, "kernel_size", "max_unpool2d")
    sh, sw = (kh, kw) if stride is None else _positive_pair(stride, "stride", "max_unpool2d")
    ph, pw = pair(padding, "padding")
    if output_size is None:
        size = ((x.shape[2] - 1) * sh - 2 * ph + kh, (x.shape[3] - 1) * sw - 2 * pw + kw)
    else:
        size = tuple(int(v) for v in tuple(output_size)[-2:])
    index = indices.data if isinstance(indices, Tensor) else indices
    if tuple(index.shape) != tuple(input.shape) or index.dtype.kind not in "iu":
        raise ValueError(f"max_unpool2d: expected integer indices of the input's shape {list(input.shape)}, "
                         f"got {index.dtype} of shape {list(index.shape)}")
    if index.size:
        bad = (index < 0) | (index >= size[0] * size[1])
        if input.backend.xp is np:
            if bad.any():
                raise IndexError(f"max_unpool2d: found an invalid max index: {index[bad][0]} (output volumes "
                                 f"are of size {size[0]}x{size[1]})")
        else:  # on a GPU, checked there and raised at the next sync, as the loss's targets
            input.backend.check_later(bad.any(), f"max_unpool2d: found an invalid max index (output volumes "
                                                 f"are of size {size[0]}x{size[1]}; checked on the device)")
    return _unbatched(MaxUnpool2d.apply(x, indices=index, size=size), unbatched)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Average pooling of an NCHW or unbatched CHW ``input``. Each window's sum is
    divided by ``divisor_override``, else by the elements it covers: with
    ``count_include_pad`` (PyTorch's default) the zero padding counts, but never the
    room ``ceil_mode`` adds past it."""
    x, unbatched = _batched(input, "avg_pool2d")
    window = _pool_window("avg_pool2d", x, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, int) or divisor_override == 0:
            raise ValueError(f"avg_pool2d: divisor_override must be a non-zero int, got {divisor_override!r}")
        divisor = divisor_override
    elif count_include_pad and not (window.eh or window.ew):
        divisor = window.kh * window.kw
    else:
        divisor = _pool_counts(x.backend, x.shape[2], x.shape[3], window, count_include_pad, x.dtype)
    return _unbatched(AvgPool2d.apply(x, window=window, divisor=divisor), unbatched)


def _pool_counts(be, h, w, window, count_include_pad, dtype):
    """How many elements each average-pool window over an h x w image counts, as
    (OH, OW, 1): the window sums of an image of ones, padded with zeros; with
    ``count_include_pad`` the padding on each side counts too, but never the extra
    room (eh, ew) that ``ceil_mode`` gives the last window (PyTorch's rule)."""
    ones = be.pad(be.xp.ones((1, h, w, 1), dtype=dtype), window)
    if count_include_pad:
        ones[:, :h + 2 * window.ph, :w + 2 * window.pw] = 1
    oh, ow = window.out_size(h, w)
    return be.windows(ones, window, oh, ow).sum(axis=(1, 2))[0]


# ---- dense layers and activations ----------------------------------------------------
class Linear(Function):
    def forward(self, x, w, *bias):
        if x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear: input has {x.shape[-1]} features, weight {tuple(w.shape)} expects {w.shape[1]}")
        self.x, self.w, self.has_bias = x, w, bool(bias)
        out = backends.backend_of(x).matmul(_rows(x), w.T)
        if x.ndim != 2:
            out = out.reshape(x.shape[:-1] + w.shape[:1])
        if bias:
            out += bias[0]
        return out

    def backward(self, g):
        x, w = self.x, self.w
        be = backends.backend_of(g)
        g2 = _rows(g)
        gx = be.matmul(g2, w).reshape(g.shape[:-1] + w.shape[1:]) if self.needs_grad[0] else None
        gw = be.matmul(g2.T, _rows(x)) if self.needs_grad[1] else None
        if self.has_bias:
            return gx, gw, g2.sum(axis=0) if self.needs_grad[2] else None
        return gx, gw


def _rows(a):
    """``a`` as a matrix of rows of its last dim (sizes spelled out: -1 is ambiguous when empty)."""
    return a if a.ndim == 2 else a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def linear(input, weight, bias=None):
    args = (input, weight) if bias is None else (input, weight, bias)
    return Linear.apply(*args)


def relu(input):
    """``max(input, 0)``: the ReLU op (tensor.py defines it, for ``Tensor.relu`` too)."""
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
    """Zero whole channels: one draw per (sample, channel). A 3-D input is taken, as
    PyTorch 2.x takes it (with its warning), as (N, C, L): one draw per (N, C)."""
    if input.ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel "
                      "dim. This behavior will change in a future release to interpret the input as one "
                      "without a batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise "
                      "dropout behavior, please switch to using dropout1d instead.", UserWarning, stacklevel=2)
        return _dropout(input, p, training, input.shape[:2] + (1,))
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
    return fused_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, relu=False)


def fused_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, relu, pool=None):
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
        shifted = x - x.max(axis=dim, keepdims=True) if x.size else x  # stable for huge logits
        self.out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        self.dim = dim
        return self.out

    def backward(self, g):
        xp = backends.get_array_module(g)
        return g - xp.exp(self.out) * g.sum(axis=self.dim, keepdims=True)


class Softmax(Function):
    def forward(self, x, dim):
        xp = backends.get_array_module(x)
        e = xp.exp(x - x.max(axis=dim, keepdims=True) if x.size else x)
        self.out = e / e.sum(axis=dim, keepdims=True)
        self.dim = dim
        return self.out

    def backward(self, g):
        return self.out * (g - (g * self.out).sum(axis=self.dim, keepdims=True))


def _softmax_apply(fn, name, input, dim, stacklevel, dtype):
    """``fn`` (LogSoftmax or Softmax) along ``dim`` of ``input``, cast to ``dtype`` first
    if given. ``dim=None`` picks PyTorch's legacy implicit dim, with its warning."""
    if dim is None:
        warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                      "Change the call to include dim=X as an argument.", stacklevel=stacklevel)
        dim = 0 if input.ndim in (0, 1, 3) else 1
    dim = wrap_dim(dim, input.ndim)
    if dtype is not None:
        input = Cast.apply(input, dtype=np.dtype(dtype))
    return fn.apply(input, dim=dim if input.ndim else None)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    return _softmax_apply(LogSoftmax, "log_softmax", input, dim, _stacklevel, dtype)


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    return _softmax_apply(Softmax, "softmax", input, dim, _stacklevel, dtype)


_REDUCTIONS = ("mean", "sum", "none")


class NLLLoss(Function):
    """``-weight[t] * input[t]`` for each target class ``t`` (along dim 1 of an (N, C, ...)
    input), 0 where ``t == ignore_index``; "mean" divides the sum by the summed weights
    of the targets counted, as PyTorch. It works on (rows, C): the class dim moved last
    and every other dim flattened, so (N, C) and spatial inputs are one case.
    ``ignore_index=None`` says that no target equals it, and ``weight=None`` that every
    class weighs 1: then each row weighs 1, and the op skips the weighing (the training
    loop's case, on every step)."""

    def forward(self, logp, target, weight, ignore_index, reduction):
        xp = backends.get_array_module(logp)
        self.shape, self.reduction = logp.shape, reduction
        classes = logp.shape[1]
        rows = logp if logp.ndim == 2 else xp.moveaxis(logp, 1, -1).reshape(-1, classes)
        t = target.reshape(-1)
        self.counted = None if ignore_index is None else t != ignore_index
        picks = t if self.counted is None else xp.where(self.counted, t, 0)  # an ignored row picks class 0
        self.index = xp.arange(t.shape[0]), picks
        # Each row's weight (its class's, 0 where ignored), or None where every row weighs 1.
        self.w = None if weight is None else weight[picks]
        if self.counted is not None:
            self.w = self.counted.astype(logp.dtype) if self.w is None else self.w * self.counted
        losses = -rows[self.index] if self.w is None else -rows[self.index] * self.w
        if self.counted is not None:
            losses = xp.where(self.counted, losses, 0)  # exactly 0, even where log p is -inf
        if reduction == "none":
            return losses.reshape(target.shape)
        if reduction == "sum":
            return losses.sum()
        self.total_weight = t.shape[0] if self.w is None else self.w.sum()
        return _divide(losses.sum(), self.total_weight)

    def backward(self, g):
        xp = backends.get_array_module(g)
        n, classes = self.shape[0], self.shape[1]
        if self.reduction == "mean":
            g = _divide(g, self.total_weight)
        if self.w is None:
            g = -g.reshape(-1)
        else:
            with np.errstate(invalid="ignore"):  # 0 * inf when nothing counted: replaced by 0 below
                g = -self.w * g.reshape(-1)
        if self.counted is not None:
            g = xp.where(self.counted, g, 0)
        grad = xp.zeros((self.index[0].shape[0], classes), dtype=g.dtype)
        grad[self.index] = g
        if len(self.shape) == 2:
            return grad
        return xp.moveaxis(grad.reshape((n,) + self.shape[2:] + (classes,)), -1, 1)


def _divide(a, b):
    """``a / b``; NaN (PyTorch's mean of nothing) without NumPy's warning when b is 0."""
    if isinstance(b, int) and b:
        return a / b
    with np.errstate(invalid="ignore", divide="ignore"):
        return a / b


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _raw_on(value, input):
    """``value`` (a Tensor or array-like) as a raw array of ``input``'s backend."""
    return value.data if isinstance(value, Tensor) else input.backend.xp.asarray(value)


def _class_targets(op, input, target, ignore_index):
    """``target``'s class indices as a raw int64 array, checked against ``input``:
    (N, d1, ...) for an (N, C, d1, ...) input, 0-d for an unbatched (C,) one; and
    ``ignore_index``, or None where the host's check shows that no target equals it."""
    if input.ndim == 0:
        raise ValueError(f"{op}: expected an input of 1 or more dims (C,), (N, C) or (N, C, d1, ...), got a 0-d one")
    t = _raw_on(target, input)
    if t.dtype.kind not in "iu":
        raise ValueError(f"{op}: target must hold integer class indices, got {t.dtype} "
                         "(class probabilities need cross_entropy and a target of the input's shape)")
    expected = () if input.ndim == 1 else input.shape[:1] + input.shape[2:]
    if tuple(t.shape) != expected:
        raise ValueError(f"{op}: expected a target of shape {expected} for an input of shape {input.shape}, "
                         f"got {tuple(t.shape)}")
    t = t.astype(np.int64, copy=False)
    classes = input.shape[0 if input.ndim == 1 else 1]
    if input.backend.xp is not np:
        # On a GPU, checked there and raised at the next sync (checking now would wait for
        # the device every step), never wrapped silently. As unsigned, a negative target
        # is huge: one comparison catches both ends.
        bad = (t.view(np.uint64) >= classes) & (t != ignore_index)
        input.backend.check_later(bad.any(), f"{op}: a target is out of bounds for {classes} classes (checked "
                                             f"on the device, raised at the first sync after the loss)")
        return t, ignore_index
    low, high = (t.min(), t.max()) if t.size else (0, -1)
    if low < 0 or high >= classes:
        bad = t[((t < 0) | (t >= classes)) & (t != ignore_index)]
        if bad.size:
            raise IndexError(f"{op}: target {bad[0]} is out of bounds for {classes} classes")
    return t, ignore_index if low <= ignore_index <= high else None


def _class_weights(op, input, weight):
    """``weight`` (one per class, or None) as a raw array of ``input``'s dtype."""
    if weight is None:
        return None
    w = _raw_on(weight, input)
    classes = input.shape[0 if input.ndim == 1 else 1]
    if tuple(w.shape) != (classes,):
        raise ValueError(f"{op}: weight must hold one value per class, {classes}, got shape {tuple(w.shape)}")
    return w.astype(input.dtype, copy=False)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of integer class ``target`` under log-probabilities
    ``input``: (N, C) with (N,) targets, (N, C, d1, ...) with (N, d1, ...), or one
    unbatched (C,) sample with a 0-d target. ``weight`` scales each class's terms;
    targets equal to ``ignore_index`` count for nothing, in the mean too."""
    _check_reduction(reduction)
    t, ignore_index = _class_targets("nll_loss", input, target, ignore_index)
    w = _class_weights("nll_loss", input, weight)
    if input.ndim == 1:  # one sample: a batch of one
        loss = NLLLoss.apply(input.reshape(1, -1), target=t.reshape(1), weight=w,
                             ignore_index=ignore_index, reduction=reduction)
        return loss.reshape(()) if reduction == "none" else loss
    return NLLLoss.apply(input, target=t, weight=w, ignore_index=ignore_index, reduction=reduction)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """``nll_loss(log_softmax(input, class_dim), target)`` on raw logits, with PyTorch's
    options: class-index targets or, in a target of the input's shape, class
    probabilities; ``label_smoothing`` mixes the target with the uniform distribution."""
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if input.ndim == 0:
        raise ValueError("cross_entropy: expected an input of 1 or more dims (C,), (N, C) or (N, C, d1, ...), "
                         "got a 0-d one")
    class_dim = 0 if input.ndim == 1 else 1
    logp = log_softmax(input, class_dim)
    if np.shape(target.data if isinstance(target, Tensor) else target) == input.shape:
        return _cross_entropy_soft(logp, target, weight, ignore_index, reduction, label_smoothing, class_dim)
    loss = nll_loss(logp, target, weight, ignore_index, reduction)
    if label_smoothing == 0.0:
        return loss
    # The smoothing term: the (weighted) sum of -log p over all classes, as PyTorch's
    # cross_entropy_loss_label_smoothing, ignored targets counting for nothing.
    t, _ = _class_targets("cross_entropy", input, target, ignore_index)
    w = _class_weights("cross_entropy", input, weight)
    counted = t != ignore_index
    weighted = logp if w is None else logp * Tensor(w.reshape(_class_shape(input.ndim, class_dim)))
    smooth = (-weighted.sum(class_dim)).masked_fill(~counted, 0.0)
    if reduction == "mean":
        xp = input.backend.xp
        total = counted.sum() if w is None else xp.where(counted, w[xp.where(counted, t, 0)], 0).sum()
        smooth = smooth.sum() / Tensor(total.astype(input.dtype))
    elif reduction == "sum":
        smooth = smooth.sum()
    return loss * (1 - label_smoothing) + smooth * (label_smoothing / input.shape[class_dim])


def _class_shape(ndim, class_dim):
    """The shape that broadcasts a per-class vector along ``class_dim`` of an ``ndim``-D input."""
    return (-1,) + (1,) * (ndim - class_dim - 1)


def _cross_entropy_soft(logp, target, weight, ignore_index, reduction, label_smoothing, class_dim):
    """Cross entropy against class probabilities ``target`` (the input's shape): the
    mean divides by the number of samples (every position of every batch item)."""
    if ignore_index >= 0:
        raise ValueError("cross_entropy: ignore_index is not supported for class-probability targets")
    if not isinstance(target, Tensor):
        target = Tensor(_raw_on(target, logp))
    if target.dtype.kind != "f":
        raise ValueError(f"cross_entropy: a target of the input's shape {logp.shape} holds class probabilities "
                         f"and must be floating point, got {target.dtype}")
    classes = logp.shape[class_dim]
    if label_smoothing > 0.0:
        target = target * (1 - label_smoothing) + label_smoothing / classes
    product = logp * target
    w = _class_weights("cross_entropy", logp, weight)
    if w is not None:
        product = product * Tensor(w.reshape(_class_shape(logp.ndim, class_dim)))
    if reduction == "none":
        return -product.sum(class_dim)
    total = -product.sum()
    if reduction == "sum":
        return total
    samples = logp.numel() // classes if classes else 0
    return total / samples if samples else total * float("nan")
