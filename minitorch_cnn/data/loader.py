"""Batches over a dataset held once in memory, with PyTorch's feel.

NumPy only at import; an array module ``xp`` (numpy or cupy) is passed in by the
caller, so the whole dataset can live on the GPU.
"""

import numpy as np

from .shard import BatchShard, set_batch_shard, shard_bounds

__all__ = ["DataLoader", "validation_split"]


def _per_channel(xp, value, channels, what):
    v = xp.asarray(value, dtype=xp.float32).reshape(-1)
    if v.size not in (1, channels):
        raise ValueError(f"{what} has {v.size} values; the images have {channels} "
                         "channel(s): give 1 or one per channel")
    return v.reshape(1, -1, 1, 1)


class DataLoader:
    """Iterate over ``(x, y)`` batches of a dataset held once in memory.

    At construction the whole image array is converted ONCE, on the array module
    ``xp`` (default numpy; with cupy the dataset moves to the GPU once), to float32
    NCHW -- an (N, H, W) input becomes (N, 1, H, W) --, integer images scaled to
    [0, 1] by dividing by 255 (float images are taken as already scaled), then
    normalised per channel as ``(x - mean) / std`` when ``mean``/``std`` are given
    (as torchvision's ``ToTensor`` + ``Normalize`` do). Labels become int64.

    Iteration yields raw ``xp`` arrays ``(x float32 (B, C, H, W), y int64 (B,))``.
    Without ``shuffle`` the batches are slices (views) of the converted arrays; with
    it, epoch ``e`` visits the samples in the order
    ``np.random.default_rng([seed, e]).permutation(N)`` (computed on the CPU) with one
    gather per batch. The epoch is set with :meth:`set_epoch` (as with PyTorch's
    ``DistributedSampler``: call it at the start of every epoch, or pass ``epoch=`` to
    :meth:`batches`); the same seed and epoch always give the same order.

    For data-parallel training, ``num_replicas`` processes each pass their own ``rank``:
    ``batch_size`` stays the global batch, and each process gets its contiguous share
    of every global batch (``shard.shard_bounds``; sizes differ by at most one),
    so all processes together see exactly the batches of one unsharded loader. While a
    batch is out, its share is published (``distributed.current_batch_shard``) for
    dropout and the gradient all-reduce.
    """

    def __init__(self, images, labels, batch_size=64, shuffle=False, drop_last=False,
                 seed=0, mean=None, std=None, xp=None, num_replicas=None, rank=None):
        xp = np if xp is None else xp
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = len(images)
        if len(labels) != n:
            raise ValueError(f"{n} images but {len(labels)} labels")
        x = xp.asarray(images)
        if x.ndim == 3:
            x = x.reshape(n, 1, x.shape[1], x.shape[2])
        elif x.ndim != 4:
            raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
        kind = np.dtype(x.dtype).kind
        out = x.astype(xp.float32, order="C")  # the one conversion; C order keeps batch gathers contiguous
        if kind in "uib":
            out /= xp.float32(255)
        if mean is not None or std is not None:
            channels = out.shape[1]
            m = _per_channel(xp, 0.0 if mean is None else mean, channels, "mean")
            s = _per_channel(xp, 1.0 if std is None else std, channels, "std")
            if bool((s == 0).any()):
                raise ValueError("std must not be zero")
            out -= m
            out /= s
        self.images = out
        self.labels = xp.asarray(labels).astype(xp.int64, copy=False)
        if self.labels.ndim != 1:
            raise ValueError(f"labels must be (N,), got shape {self.labels.shape}")
        self.xp = xp
        self.batch_size = batch_size
        self.dataset_size = n
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        self.num_replicas, self.rank = _check_replicas(num_replicas, rank, n, batch_size, self.drop_last)

    def __len__(self):
        if self.drop_last:
            return self.dataset_size // self.batch_size
        return -(-self.dataset_size // self.batch_size)

    def set_epoch(self, epoch):
        """Set the epoch whose order the next iteration follows."""
        self.epoch = int(epoch)

    def permutation(self, epoch=None):
        """The order (a NumPy int64 array) in which ``epoch`` visits the samples."""
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return np.arange(self.dataset_size, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size)

    def batches(self, epoch=None, start=0):
        """Yield the batches of ``epoch`` (default: the current one) from batch index
        ``start`` on; resuming at ``start=k`` yields exactly the batches an
        uninterrupted iteration yields after its first ``k``."""
        epoch = self.epoch if epoch is None else int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        start = int(start)
        if start < 0:
            raise ValueError(f"start must be non-negative, got {start}")
        return self._batches(epoch, start)

    def _batches(self, epoch, start):
        bs, n = self.batch_size, self.dataset_size
        x, y = self.images, self.labels
        order = None
        if self.shuffle:
            order = self.permutation(epoch)
            if self.xp is not np:
                order = self.xp.asarray(order)  # one transfer per epoch
        try:
            for b in range(start, len(self)):
                lo, hi = b * bs, min(n, (b + 1) * bs)
                if self.num_replicas is not None:
                    first, last = shard_bounds(hi - lo, self.num_replicas, self.rank)
                    set_batch_shard(BatchShard(first, last, hi - lo))
                    lo, hi = lo + first, lo + last
                if order is None:
                    yield x[lo:hi], y[lo:hi]
                else:
                    idx = order[lo:hi]
                    yield x.take(idx, axis=0), y.take(idx, axis=0)
        finally:
            if self.num_replicas is not None:
                set_batch_shard(None)

    def __iter__(self):
        return self.batches()

    def __repr__(self):
        sharding = f", num_replicas={self.num_replicas}, rank={self.rank}" if self.num_replicas else ""
        return (f"DataLoader(dataset_size={self.dataset_size}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, "
                f"epoch={self.epoch}, shape={tuple(self.images.shape)}{sharding})")


def _check_replicas(num_replicas, rank, n, batch_size, drop_last):
    """``(num_replicas, rank)`` checked: both None (no sharding) or a rank among that
    many processes, each of which gets at least one row of every global batch."""
    if num_replicas is None and rank is None:
        return None, None
    if num_replicas is None or rank is None:
        raise ValueError("DataLoader: give both num_replicas and rank, or neither")
    num_replicas, rank = int(num_replicas), int(rank)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"DataLoader: rank must be within 0..num_replicas-1, got rank={rank} "
                         f"of num_replicas={num_replicas}")
    smallest = min(batch_size, n) if drop_last or n % batch_size == 0 else n % batch_size
    if smallest < num_replicas:
        raise ValueError(f"DataLoader: a global batch of {smallest} rows cannot give each of "
                         f"num_replicas={num_replicas} processes a row; use drop_last=True or "
                         "another batch_size")
    return num_replicas, rank


def validation_split(images, labels, size=5000):
    """Split off the FIRST ``size`` items as a validation set, as the tutorials do
    with the test set: returns ``((val_images, val_labels), (rest_images,
    rest_labels))``, all views of the inputs (no copies)."""
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    size = int(size)
    if not 0 <= size <= n:
        raise ValueError(f"validation size {size} is not within 0..{n}")
    return (images[:size], labels[:size]), (images[size:], labels[size:])
