"""Which rows of each global batch this process computes.

Data-parallel training keeps ``--batch-size`` the global batch: each of N processes
takes a contiguous share of every global batch (``shard_bounds``). Two things need to
know that share while a step runs, and read it here: dropout draws its mask for the
whole global batch and keeps this share's rows (so a mask does not depend on N), and
the gradient all-reduce weights each process's gradient by its share of the batch.
A sharded ``DataLoader`` sets the share of the batch it is yielding; nothing here
communicates.
"""
from collections import namedtuple

__all__ = ["BatchShard", "shard_bounds", "current_batch_shard", "set_batch_shard", "share_weight"]


class BatchShard(namedtuple("BatchShard", ["start", "stop", "total"])):
    """Rows ``[start, stop)`` of a global batch of ``total`` rows."""

    @property
    def size(self):
        return self.stop - self.start

    @property
    def weight(self):
        """This share's part of a mean over the global batch: ``size / total``."""
        return self.size / self.total


def shard_bounds(total, world_size, rank):
    """The contiguous rows ``(start, stop)`` of a ``total``-row batch that ``rank`` of
    ``world_size`` takes: equal shares, the first ``total % world_size`` ranks one more."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


_current = [None]


def current_batch_shard():
    """The share of the global batch being computed, or None outside sharded loading."""
    return _current[0]


def set_batch_shard(shard):
    _current[0] = shard


def share_weight(world_size):
    """This process's weight in a mean over the global batch: its share of the batch
    being computed, or ``1 / world_size`` (equal shares) outside sharded loading."""
    shard = _current[0]
    return shard.weight if shard is not None else 1.0 / world_size
