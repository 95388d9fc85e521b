"""Data-parallel training across processes, under ``torch.distributed``'s names.

The runtime is an established one, not the engine's own: MPI through ``mpi4py`` for
NumPy tensors (a laptop, a CPU cluster), and NCCL through CuPy's ``cupy.cuda.nccl`` for
GPU tensors, its communicator set up over MPI. Processes are started by the MPI
launcher::

    mpiexec -n 4 python -m mpi4py my_training.py

(``-m mpi4py`` makes an exception in any rank abort the whole job, never a hang).
Importing this package imports neither mpi4py nor CuPy; :func:`init_process_group` does.
``nn.parallel.DistributedDataParallel`` and ``nn.SyncBatchNorm`` build on these calls,
and a ``DataLoader`` with ``num_replicas``/``rank`` gives each process its share of
every global batch (``data/shard.py``).
"""
from ..data.shard import BatchShard, current_batch_shard, shard_bounds

__all__ = ["ReduceOp", "init_process_group", "is_initialized", "get_rank", "get_world_size",
           "all_reduce", "broadcast", "barrier", "destroy_process_group", "get_communicator",
           "BatchShard", "shard_bounds", "current_batch_shard"]


class ReduceOp:
    SUM = "sum"
    MAX = "max"
    MIN = "min"


_group = [None]


def init_process_group(backend=None):
    """Join the job that the MPI launcher started. ``backend``: ``"mpi"`` (NumPy tensors)
    or ``"nccl"`` (CuPy tensors, one GPU per process, picked by the rank on its node);
    by default ``"nccl"`` when the engine's active backend is CuPy, else ``"mpi"``."""
    if _group[0] is not None:
        raise RuntimeError("init_process_group() was already called in this process")
    if backend is None:
        from .. import backends
        backend = "nccl" if backends.get_backend().name == "cupy" else "mpi"
    if backend not in ("mpi", "nccl"):
        raise ValueError(f"init_process_group: backend must be 'mpi' or 'nccl', got {backend!r}")
    from .mpi import MPICommunicator  # the first import of mpi4py starts MPI
    world = MPICommunicator()
    world.abort_on_uncaught_exception()
    if backend == "nccl":
        from .nccl import NCCLCommunicator
        _group[0] = NCCLCommunicator(world)
    else:
        _group[0] = world


def is_initialized():
    return _group[0] is not None


def get_communicator():
    """The process group's communicator (``.rank``, ``.size``, ``.all_reduce(array, op)``,
    ``.broadcast(array, root)``, ``.barrier()``), for the engine's own layers."""
    if _group[0] is None:
        raise RuntimeError("distributed: call minitorch_cnn.distributed.init_process_group() first")
    return _group[0]


def get_rank():
    return get_communicator().rank


def get_world_size():
    return get_communicator().size


def all_reduce(tensor, op=ReduceOp.SUM):
    """Combine ``tensor`` across all processes with ``op``, in place (every process gets
    the result)."""
    get_communicator().all_reduce(tensor.data, op)


def broadcast(tensor, src=0):
    """Overwrite ``tensor``, in place, with process ``src``'s values."""
    get_communicator().broadcast(tensor.data, src)


def barrier():
    """Return once every process has called ``barrier()``."""
    get_communicator().barrier()


def destroy_process_group():
    """Leave the process group (MPI itself is finalised when the process exits)."""
    if _group[0] is not None:
        _group[0].close()
        _group[0] = None
