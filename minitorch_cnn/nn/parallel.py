"""``DistributedDataParallel``: the same model in every process, gradients summed.

Every process holds a full copy of the model and computes its share of each global
batch; after ``backward()``, :meth:`DistributedDataParallel.reduce_gradients` sums the
gradients of all processes, each weighted by its share of the batch (``n_local /
n_global``), so every process steps with the gradient that one process would compute
on the whole global batch, and the copies stay identical.

The gradients travel in buckets: one flat buffer per bucket, one all-reduce each.
With the default 25 MB cap the seed networks fit in one bucket, so a step costs one
message, which also carries any per-step values (loss sums, correct counts, a stop
flag) that the training loop passes in. The reduction runs after backward, not
overlapped with it: overlapping pays when the network's latency to hide is comparable
to a step, which on one machine it is not (docs/distributed.md has the numbers).
"""
import numpy as np

from .. import distributed
from ..autograd import is_grad_enabled
from ..data.shard import share_weight
from ..tensor import Tensor
from .modules import Module

__all__ = ["DistributedDataParallel"]


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training (call ``init_process_group()`` first).
    Rank 0's parameters and buffers are copied to every process here. A training step::

        loss = F.cross_entropy(ddp(x), y)   # x, y: this process's share of the batch
        loss.backward()
        ddp.reduce_gradients()
        opt.step()

    Each process's BatchNorm layers use its own batch statistics (and keep their own
    running statistics) unless converted with ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    ``state_dict()`` keys start with ``module.``, as PyTorch's."""

    def __init__(self, module, bucket_cap_mb=25):
        super().__init__()
        self.module = module
        self._comm = distributed.get_communicator()
        for t in list(module.parameters()) + list(module.buffers()):
            self._comm.broadcast(t.data, 0)
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("DistributedDataParallel: the module has no parameter that requires grad")
        # Last layers first: the order their gradients are ready in backward (PyTorch's).
        self._buckets = _buckets(trainable[::-1], int(bucket_cap_mb * 2 ** 20))
        self._buffers_by_extra = {}
        self._awaiting_reduce = False

    def forward(self, *inputs, **kwargs):
        if self.training and is_grad_enabled():
            if self._awaiting_reduce:
                raise RuntimeError("DistributedDataParallel: the last step's gradients were never summed "
                                   "across processes; call reduce_gradients() after backward()")
            self._awaiting_reduce = True
        return self.module(*inputs, **kwargs)

    def reduce_gradients(self, *values):
        """Replace every gradient by the weighted sum over all processes (a parameter
        without a gradient counts as zeros): each process's weight is its share of the
        global batch under a sharded DataLoader, else ``1 / world_size`` (PyTorch's
        average over equal shares). Return ``values`` (numbers or 0-d arrays, such as a
        loss sum, a correct count, a stop flag) summed over all processes, unweighted,
        as an array of the gradients' dtype and backend: they ride in the last bucket's
        message."""
        self._awaiting_reduce = False
        weight = share_weight(self._comm.size)
        totals = None
        for i, bucket in enumerate(self._buckets):
            extra = len(values) if i == len(self._buckets) - 1 else 0
            buffer, end = self._buffer(i, bucket, extra), bucket[-1][2]
            for p, lo, hi in bucket:
                if p.grad is None:
                    buffer[lo:hi] = 0
                else:
                    p.backend.xp.multiply(p.grad.data.reshape(-1), weight, out=buffer[lo:hi])
            for k, v in enumerate(values if extra else ()):
                buffer[end + k] = v
            self._comm.all_reduce(buffer, "sum")
            for p, lo, hi in bucket:
                summed = buffer[lo:hi].reshape(p.shape)
                if p.grad is None:
                    p.grad = Tensor(summed.copy())
                else:
                    p.grad.data[...] = summed
            if extra:
                totals = buffer[end:].copy()
        return totals

    def _buffer(self, index, bucket, extra):
        key = index, extra
        if key not in self._buffers_by_extra:
            first = bucket[0][0]
            self._buffers_by_extra[key] = first.backend.xp.empty(bucket[-1][2] + extra, dtype=first.dtype)
        return self._buffers_by_extra[key]


def _buckets(params, cap_bytes):
    """Consecutive parameters grouped into lists of ``(param, start, stop)`` slots of one
    flat buffer each; a parameter that would take its bucket past ``cap_bytes``, or is of
    another dtype, starts the next."""
    buckets, current, size = [], [], 0
    for p in params:
        n = int(np.prod(p.shape))
        if current and ((size + n) * p.dtype.itemsize > cap_bytes or p.dtype != current[0][0].dtype):
            buckets.append(current)
            current, size = [], 0
        current.append((p, size, size + n))
        size += n
    if current:
        buckets.append(current)
    return buckets
