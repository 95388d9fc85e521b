"""``SyncBatchNorm``: batch normalisation over the global batch of every process.

In data-parallel training each process sees only its share of a batch. BatchNorm2d
normalises with that share's statistics, which is not what one process on the whole
batch computes; SyncBatchNorm sums, over all processes, each channel's count, sum and
sum of squares in the forward pass, and the two sums the input gradient needs,
``sum(g)`` and ``sum(g * xhat)``, in the backward pass, so every process normalises
with the global batch's mean and variance. Written in plain array code of its own:
two small all-reduces per layer and step, a few passes over the activation.
"""
from collections import OrderedDict

import numpy as np

from .. import backends, distributed
from ..autograd import Function
from ..data.shard import share_weight
from . import functional as F
from .modules import BatchNorm2d

__all__ = ["SyncBatchNorm"]

_AXES = (0, 2, 3)  # all but the channel axis of NCHW


def _channel(v):
    return v.reshape(1, -1, 1, 1)


def _world():
    """The communicator, or None in a single process (then SyncBatchNorm is BatchNorm)."""
    return distributed.get_communicator() if distributed.is_initialized() else None


class SyncBatchNormFunction(Function):
    """Training-mode batch normalisation with statistics summed across processes."""

    def forward(self, x, weight, bias, running_mean, running_var, momentum, eps):
        xp = backends.get_array_module(x)
        self.world = _world()
        channels = x.shape[1]
        # Float64 sums: the variance is E[x^2] - E[x]^2, which float32 would round badly.
        stats = xp.concatenate([x.sum(axis=_AXES, dtype=np.float64),
                                (x * x).sum(axis=_AXES, dtype=np.float64),
                                xp.full(1, x.size // channels, dtype=np.float64)])
        if self.world is not None:
            self.world.all_reduce(stats, "sum")
        count = stats[-1]
        if xp is np and count < 2:  # (on a GPU, reading the count would stall the stream)
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel when training, "
                             f"got {int(count)} across all processes")
        mean = stats[:channels] / count
        var = stats[channels:2 * channels] / count - mean * mean
        inv_std = (1 / xp.sqrt(var + eps)).astype(x.dtype)
        self.xhat = (x - _channel(mean.astype(x.dtype))) * _channel(inv_std)
        self.inv_std, self.weight, self.count = inv_std, weight, count
        if running_mean is not None:
            # PyTorch's update: the unbiased variance of the global batch.
            running_mean *= 1 - momentum
            running_mean += (momentum * mean).astype(running_mean.dtype)
            running_var *= 1 - momentum
            running_var += (momentum * var * (count / (count - 1))).astype(running_var.dtype)
        return self.xhat * _channel(weight) + _channel(bias)

    def backward(self, g):
        xp = backends.get_array_module(g)
        xhat, channels = self.xhat, g.shape[1]
        g_sum = g.sum(axis=_AXES, dtype=np.float64)
        g_xhat_sum = (g * xhat).sum(axis=_AXES, dtype=np.float64)
        # g is this process's gradient of its own mean loss; the weight puts it on the
        # scale of the global batch's mean loss before the processes' sums are added.
        sums, weight = xp.concatenate([g_sum, g_xhat_sum]), 1.0
        if self.world is not None:
            weight = share_weight(self.world.size)
            sums *= weight
            self.world.all_reduce(sums, "sum")
        # Back on this process's scale: divide the global means by the weight.
        mean_g = (sums[:channels] / (self.count * weight)).astype(g.dtype)
        mean_g_xhat = (sums[channels:] / (self.count * weight)).astype(g.dtype)
        gx = _channel(self.weight * self.inv_std) * (g - _channel(mean_g) - xhat * _channel(mean_g_xhat))
        # The parameters' gradients stay this process's own: DistributedDataParallel sums them.
        return gx, g_xhat_sum.astype(g.dtype), g_sum.astype(g.dtype)


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch across
    all processes (PyTorch's ``nn.SyncBatchNorm``, for NCHW input). In evaluation, or
    without ``init_process_group()``, it is BatchNorm2d."""

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"SyncBatchNorm expects a 4-D NCHW input, got shape {x.shape}")
        if not self.training:
            return super().forward(x)
        if self.weight is None:
            raise ValueError("SyncBatchNorm supports affine=True only")
        momentum = self.momentum
        if self.running_mean is not None:
            self.num_batches_tracked.data = self.num_batches_tracked.data + 1
            if momentum is None:  # a cumulative average, as PyTorch
                momentum = 1.0 / float(self.num_batches_tracked.data)
        raw = lambda t: None if t is None else t.data
        return SyncBatchNormFunction.apply(x, self.weight, self.bias, running_mean=raw(self.running_mean),
                                           running_var=raw(self.running_var), momentum=momentum, eps=self.eps)

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """``module`` with every BatchNorm2d in it replaced by a SyncBatchNorm that shares
        its parameters and buffers (the module itself is changed, and returned)."""
        if isinstance(module, BatchNorm2d) and not isinstance(module, cls):
            converted = cls.__new__(cls)
            converted.__dict__.update(module.__dict__)
            for table in ("_parameters", "_buffers", "_modules"):
                converted.__dict__[table] = OrderedDict(module.__dict__[table])
            return converted
        for name, child in list(module.named_children()):
            module.add_module(name, cls.convert_sync_batchnorm(child))
        return module
