"""The NCCL communicator (CuPy's ``cupy.cuda.nccl``), for CuPy arrays.

One GPU per process, picked from the process's rank on its node; the NCCL unique id
is made by rank 0 and handed to the others over MPI. Collectives are queued on the
current CuPy stream, the one the engine's kernels run on, so a step's all-reduce
follows its backward kernels with no host synchronisation.
"""

_DTYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "int64": "NCCL_INT64",
           "int32": "NCCL_INT32"}
_OPS = {"sum": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN"}


class NCCLCommunicator:
    """``world`` is the MPI communicator that started the job; ``cupy`` and ``nccl``
    default to the real modules (a test passes stand-ins)."""

    def __init__(self, world, cupy=None, nccl=None):
        if cupy is None:
            import cupy
            from cupy.cuda import nccl
        self.cupy, self.nccl, self.world = cupy, nccl, world
        self.rank, self.size = world.rank, world.size
        devices = cupy.cuda.runtime.getDeviceCount()
        local = world.local_rank()
        if local >= devices:
            raise RuntimeError(f"rank {self.rank} is process {local} on its node, which has "
                               f"{devices} GPU(s): start at most one process per GPU")
        self.device = local
        cupy.cuda.Device(self.device).use()
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        self.comm = nccl.NcclCommunicator(self.size, world.broadcast_object(unique_id, 0), self.rank)

    def _dtype(self, array):
        name = str(array.dtype)
        if name not in _DTYPES:
            raise TypeError(f"NCCL: no collective for arrays of {name}")
        return getattr(self.nccl, _DTYPES[name])

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def all_reduce(self, array, op="sum"):
        _contiguous(array)
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, self._dtype(array),
                            getattr(self.nccl, _OPS[op]), self._stream())

    def broadcast(self, array, root=0):
        _contiguous(array)
        self.comm.bcast(array.data.ptr, array.size, self._dtype(array), root, self._stream())

    def barrier(self):
        self.cupy.cuda.get_current_stream().synchronize()
        self.world.barrier()

    def close(self):
        self.comm.destroy()


def _contiguous(array):
    if not array.flags.c_contiguous:
        raise ValueError("NCCL collectives need a contiguous array")
