"""The MPI communicator (mpi4py), for NumPy arrays; its first import starts MPI."""
import sys

import numpy as np
from mpi4py import MPI

_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


class MPICommunicator:
    def __init__(self, comm=None):
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def local_rank(self):
        """This process's rank among the processes on its own node."""
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank()
        finally:
            node.Free()

    def all_reduce(self, array, op="sum"):
        _in_place(array, lambda a: self.comm.Allreduce(MPI.IN_PLACE, a, op=_OPS[op]))

    def broadcast(self, array, root=0):
        _in_place(array, lambda a: self.comm.Bcast(a, root=root))

    def broadcast_object(self, value, root=0):
        return self.comm.bcast(value, root=root)

    def barrier(self):
        self.comm.Barrier()

    def abort_on_uncaught_exception(self):
        """Make an uncaught exception end every process of the job, after printing it
        (as ``python -m mpi4py`` does): the others would otherwise wait in their next
        collective forever."""
        previous = sys.excepthook

        def abort(kind, value, traceback):
            previous(kind, value, traceback)
            sys.stderr.flush()
            self.comm.Abort(1)

        sys.excepthook = abort

    def close(self):
        pass


def _in_place(array, operation):
    """Run ``operation`` on ``array``'s memory, through a contiguous copy where needed."""
    if isinstance(array, np.ndarray) and array.flags.c_contiguous and array.flags.writeable:
        operation(array)
        return
    buffer = np.ascontiguousarray(array)
    operation(buffer)
    array[...] = buffer
