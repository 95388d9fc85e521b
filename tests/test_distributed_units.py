"""The data-parallel pieces in one process, no MPI needed: sharded loading, global-batch
dropout masks, SyncBatchNorm's Function, DistributedDataParallel's bucketed, weighted
reduction (over a stand-in communicator), and the NCCL communicator's calls (over
stand-ins for CuPy and NCCL, since no GPU is needed to check what it asks of them)."""
import subprocess
import sys

import numpy as np
import pytest

import minitorch_cnn as mt
import minitorch_cnn.distributed as dist
import minitorch_cnn.nn as nn
import minitorch_cnn.nn.functional as F
from minitorch_cnn import models
from minitorch_cnn.distributed.nccl import NCCLCommunicator
from minitorch_cnn.data.shard import BatchShard, current_batch_shard, set_batch_shard


def test_importing_the_engine_and_its_distributed_package_imports_no_mpi():
    code = ("import sys, minitorch_cnn as mt; mt.distributed.init_process_group, mt.nn.parallel; "
            "mt.nn.SyncBatchNorm; assert 'mpi4py' not in sys.modules and 'cupy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("total, world", [(64, 3), (37, 3), (10, 4), (5, 5)])
def test_shards_tile_the_batch_and_differ_in_size_by_at_most_one(total, world):
    bounds = [dist.shard_bounds(total, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_sharded_loaders_together_yield_the_unsharded_batches():
    images = np.arange(23 * 4, dtype=np.uint8).reshape(23, 2, 2)
    labels = np.arange(23)
    whole = mt.data.DataLoader(images, labels, batch_size=8, shuffle=True, seed=3)
    parts = [mt.data.DataLoader(images, labels, batch_size=8, shuffle=True, seed=3, num_replicas=3, rank=r)
             for r in range(3)]
    for epoch in (0, 1):
        shares = [list(p.batches(epoch)) for p in parts]
        for b, (x, y) in enumerate(whole.batches(epoch)):
            assert np.array_equal(np.concatenate([s[b][1] for s in shares]), y)
            assert np.array_equal(np.concatenate([s[b][0] for s in shares]), x)
    assert len(parts[0]) == len(whole) == 3


def test_a_sharded_loader_publishes_the_share_of_the_batch_it_yields():
    loader = mt.data.DataLoader(np.zeros((10, 2, 2)), np.zeros(10), batch_size=4, num_replicas=2, rank=1)
    seen = [current_batch_shard() for _ in loader]
    assert seen == [BatchShard(2, 4, 4), BatchShard(2, 4, 4), BatchShard(1, 2, 2)]
    assert current_batch_shard() is None  # cleared when the epoch ends


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_replicas=2), "give both"),
    (dict(num_replicas=2, rank=2), "rank must be within"),
    (dict(num_replicas=4, rank=0), "a global batch of 3 rows"),
])
def test_bad_sharding_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mt.data.DataLoader(np.zeros((11, 2, 2)), np.zeros(11), batch_size=4, **kwargs)


@pytest.mark.parametrize("drop", [F.dropout, F.dropout2d])
def test_a_shards_dropout_mask_is_its_rows_of_the_global_batchs_mask(drop):
    x = mt.ones(7, 3, 2, 2)
    mt.manual_seed(5)
    whole = drop(x, 0.5).numpy()
    try:
        set_batch_shard(BatchShard(4, 7, 7))
        mt.manual_seed(5)
        share = drop(mt.ones(3, 3, 2, 2), 0.5).numpy()
    finally:
        set_batch_shard(None)
    assert np.array_equal(share, whole[4:7])


# ---- SyncBatchNorm ----------------------------------------------------------------------------
def _bn_step(module, x, g):
    module.weight.data[:] = [1.5, 0.5, -1.0]
    module.bias.data[:] = [0.1, 0.2, 0.3]
    t = mt.tensor(x, requires_grad=True)
    out = module(t)
    out.backward(mt.tensor(g))
    return [out.numpy(), t.grad.numpy(), module.weight.grad.numpy(), module.bias.grad.numpy(),
            module.running_mean.numpy(), module.running_var.numpy()]


def test_sync_batchnorm_in_one_process_is_batchnorm():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 3, 5, 5)) * 2 + 1).astype(np.float32)
    g = rng.standard_normal((8, 3, 5, 5)).astype(np.float32)
    for ours, plain in zip(_bn_step(nn.SyncBatchNorm(3), x, g), _bn_step(nn.BatchNorm2d(3), x, g)):
        np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-6)


def test_convert_sync_batchnorm_swaps_every_batchnorm_and_keeps_its_tensors():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Sequential(nn.BatchNorm2d(3)))
    weight, running_mean = model[1].weight, model[3][0].running_mean
    before = model.state_dict()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model
    assert type(model[1]) is nn.SyncBatchNorm and type(model[3][0]) is nn.SyncBatchNorm
    assert model[1].weight is weight and model[3][0].running_mean is running_mean
    assert list(model.state_dict()) == list(before)
    model.eval()  # evaluation uses the running statistics, as BatchNorm2d
    x = mt.randn(2, 1, 6, 6)
    out = model(x).numpy()
    plain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(3)))
    plain.load_state_dict(before)
    np.testing.assert_allclose(out, plain.eval()(x).numpy(), rtol=1e-6)


# ---- DistributedDataParallel over a stand-in communicator -------------------------------------
class TwinsCommunicator:
    """A world of ``size`` processes that all hold what this one holds: a sum is
    ``size`` times the value."""

    def __init__(self, size=2):
        self.rank, self.size, self.reduced = 0, size, []

    def all_reduce(self, array, op):
        self.reduced.append(array.size)
        array *= self.size

    def broadcast(self, array, root):
        pass


@pytest.fixture
def twins():
    comm = TwinsCommunicator()
    dist._group[0] = comm
    yield comm
    dist._group[0] = None


def _lenet_grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(mt.tensor(x)), mt.tensor(y)).backward()


def test_ddp_sums_weighted_gradients_in_one_message_with_the_values(twins):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 6)
    mt.manual_seed(0)
    model = models.get_model("lenet")
    _lenet_grads(model, x, y)
    expected = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    ddp = nn.parallel.DistributedDataParallel(model)
    _lenet_grads(ddp, x, y)
    totals = ddp.reduce_gradients(2.5, 3)
    assert twins.reduced == [sum(p.numel() for p in model.parameters()) + 2]  # one bucket
    np.testing.assert_array_equal(totals, [5.0, 6.0])
    for k, p in model.named_parameters():  # two equal halves of a batch: the same gradient
        np.testing.assert_allclose(p.grad.numpy(), expected[k], rtol=1e-6, atol=1e-9)
    assert list(ddp.state_dict())[0].startswith("module.")


def test_ddp_weights_each_share_by_its_rows_of_the_global_batch(twins):
    model = nn.Linear(2, 1)
    ddp = nn.parallel.DistributedDataParallel(model)
    ddp(mt.ones(3, 2)).sum().backward()
    set_batch_shard(BatchShard(0, 3, 12))
    try:
        ddp.reduce_gradients()
    finally:
        set_batch_shard(None)
    # The local gradient 3 (three rows), weighted 3/12, summed over the two twins.
    np.testing.assert_allclose(model.bias.grad.numpy(), [3 * (3 / 12) * 2])


def test_ddp_buckets_by_size_and_refuses_a_step_without_reduction(twins):
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=100 * 100 * 4 / 2 ** 20)
    ddp(mt.ones(2, 100)).sum().backward()
    ddp.reduce_gradients()
    assert twins.reduced == [10 + 10 * 100 + 100, 100 * 100]  # last layers first
    ddp(mt.ones(2, 100)).sum().backward()
    with pytest.raises(RuntimeError, match="call reduce_gradients"):
        ddp(mt.ones(2, 100))
    with mt.no_grad():
        ddp(mt.ones(2, 100))  # evaluation needs no reduction


def test_ddp_and_collectives_need_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.get_rank()
    with pytest.raises(ValueError, match="backend must be"):
        dist.init_process_group("gloo")


# ---- the NCCL communicator over stand-ins ------------------------------------------------------
class FakeNccl:
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT64, NCCL_INT32 = 7, 8, 4, 2
    NCCL_SUM, NCCL_MAX, NCCL_MIN = 0, 2, 3
    calls = []

    @staticmethod
    def get_unique_id():
        return ("unique", 42)

    class NcclCommunicator:
        def __init__(self, size, unique_id, rank):
            FakeNccl.calls.append(("init", size, unique_id, rank))

        def allReduce(self, send, recv, count, dtype, op, stream):
            FakeNccl.calls.append(("allReduce", send, recv, count, dtype, op, stream))

        def bcast(self, buffer, count, dtype, root, stream):
            FakeNccl.calls.append(("bcast", buffer, count, dtype, root, stream))


class FakeCupy:
    """Just what the communicator touches: device count and choice, the current stream."""
    used = []

    class cuda:
        class runtime:
            @staticmethod
            def getDeviceCount():
                return 2

        class Device:
            def __init__(self, index):
                self.index = index

            def use(self):
                FakeCupy.used.append(self.index)

        @staticmethod
        def get_current_stream():
            return type("Stream", (), {"ptr": 1234})()


class FakeWorld:
    def __init__(self, rank, size, local):
        self.rank, self.size, self.local, self.broadcasts = rank, size, local, []

    def local_rank(self):
        return self.local

    def broadcast_object(self, value, root):
        self.broadcasts.append((value, root))
        return ("unique", 42)


class DeviceArray:
    """A stand-in CuPy array: a pointer, a size, a dtype, contiguity."""

    def __init__(self, ptr, size, dtype):
        self.data = type("Pointer", (), {"ptr": ptr})()
        self.size, self.dtype = size, np.dtype(dtype)
        self.flags = type("Flags", (), {"c_contiguous": True})()


def test_nccl_picks_the_gpu_by_local_rank_and_reduces_on_the_current_stream():
    FakeNccl.calls.clear()
    FakeCupy.used.clear()
    world = FakeWorld(rank=3, size=4, local=1)
    comm = NCCLCommunicator(world, cupy=FakeCupy, nccl=FakeNccl)
    assert FakeCupy.used == [1] and (comm.rank, comm.size) == (3, 4)
    assert world.broadcasts == [(None, 0)]  # only rank 0 makes the unique id
    comm.all_reduce(DeviceArray(5000, 10, np.float32), "sum")
    comm.broadcast(DeviceArray(6000, 3, np.int64), 0)
    assert FakeNccl.calls == [("init", 4, ("unique", 42), 3),
                              ("allReduce", 5000, 5000, 10, FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM, 1234),
                              ("bcast", 6000, 3, FakeNccl.NCCL_INT64, 0, 1234)]


def test_nccl_refuses_more_processes_on_a_node_than_gpus():
    with pytest.raises(RuntimeError, match="at most one process per GPU"):
        NCCLCommunicator(FakeWorld(rank=2, size=3, local=2), cupy=FakeCupy, nccl=FakeNccl)


# ---- the benchmark's alpha-beta model ---------------------------------------------------------
def test_the_alpha_beta_fit_recovers_latency_and_bandwidth_and_the_ring_costs_2_p_minus_1_steps():
    from benchmarks.distributed import alpha_beta, ring_allreduce
    alpha, beta = 5e-6, 1 / 2e9
    measured = {str(b): alpha + b * beta for b in (4, 1 << 10, 1 << 17, 1 << 20, 1 << 24)}
    measured[str(1 << 24)] *= 10  # past 1 MB the fit ignores protocol switches
    fitted = alpha_beta(measured)
    np.testing.assert_allclose(fitted, (alpha, beta), rtol=1e-6)
    assert ring_allreduce(2, 1000, alpha, beta) == pytest.approx(2 * (alpha + 500 * beta))
    assert ring_allreduce(64, 0, alpha, beta) == pytest.approx(126 * alpha)
