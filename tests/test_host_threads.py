"""The NumPy backend's threads (backends/host.py): split work equals whole work, the
mode logic keeps small work whole with BLAS untouched, and BLAS's setting comes back.

The op suites run again with every piece of work split (``numpy-threads`` in
optest.py); this file checks the splitting itself, with 2 and 3 threads (an uneven
split), whatever the cores of the machine."""
import time

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

import minitorch_cnn as mt
import minitorch_cnn.nn.functional as F
from minitorch_cnn.backends import host as host_module
from optest import split_everything

RNG = np.random.default_rng(0)


def blas_threads():
    return [lib.num_threads for lib in ThreadpoolController().select(user_api="blas").lib_controllers]


@pytest.fixture
def host():
    be = mt.backends.get_backend_by_name("numpy")
    previous = be.threads
    yield be
    be.set_num_threads(previous)


@pytest.fixture
def split_calls(monkeypatch):
    """How many times work was split across threads."""
    calls = []
    real = host_module.HostBackend._run_split

    def counting(self, body, count):
        calls.append(count)
        return real(self, body, count)

    monkeypatch.setattr(host_module.HostBackend, "_run_split", counting)
    return calls


def test_default_is_every_available_core(host):
    assert host_module.available_cores() >= 1
    fresh = host_module.HostBackend("numpy")
    assert fresh.threads == host_module.available_cores()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects(host, bad):
    with pytest.raises(ValueError, match="number of threads"):
        mt.set_num_threads(bad)


def test_set_and_get_num_threads(host):
    mt.set_num_threads(3)
    assert mt.get_num_threads() == 3 and host.threads == 3
    mt.set_num_threads(1)
    assert mt.get_num_threads() == 1


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


PRODUCTS = {  # name: (a, b); each takes a different split
    "by rows": (f32(70, 9), f32(9, 5)),
    "by columns": (f32(5, 9), f32(9, 70)),
    "by depth": (f32(3, 900), f32(900, 4)),
    "by depth, in chunks": (f32(3, 5000), f32(5000, 4)),
    "transposed views": (f32(9, 70).T, f32(5, 9).T),
    "matrix-vector": (f32(40, 30), f32(30)),
    "stack": (f32(7, 1, 30), f32(7, 30, 1)),
    "narrow, in column blocks": (f32(6, 25), f32(25, 9000)),
    "empty": (f32(0, 4), f32(4, 6)),
}


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", PRODUCTS)
def test_split_product_equals_numpy(host, split_calls, threads, case):
    a, b = PRODUCTS[case]
    host.set_num_threads(threads)
    with threadpool_limits(1, "blas"):
        unsplit = host.matmul(a, b)  # small work: whole (a deep product from the same parts)
    assert split_calls == []
    with split_everything(threads):
        got = host.matmul(a, b)
        into = np.full(got.shape, np.nan, dtype=np.float32)
        assert host.matmul(a, b, out=into) is into
    expected = a @ b
    np.testing.assert_array_equal(got, unsplit)  # bit for bit, for these shapes
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(into, expected, rtol=1e-5, atol=1e-5)
    assert bool(split_calls) == (case != "empty")


@pytest.mark.parametrize("threads", [2, 3])
def test_split_network_step_equals_one_thread(host, split_calls, threads):
    """Conv (row blocks and whole), batch-norm, ReLU, pooling, linear: forward and
    every gradient as on one thread."""
    x, w1, w2, fc, g = f32(4, 3, 12, 11), f32(6, 3, 3, 3), f32(5, 6, 3, 3), f32(7, 5), f32(4, 7)

    def run():
        params = [mt.tensor(a, requires_grad=True) for a in (w1, w2, fc)]
        mean, var = np.zeros(6, np.float32), np.ones(6, np.float32)
        h = F.conv2d(mt.tensor(x), params[0], padding=1)
        h = F.relu(F.batch_norm(h, mean, var, training=True))  # 12x11
        h = F.relu(F.conv2d(F.max_pool2d(h, 2), params[1]))  # 6x5 -> 4x3
        h = F.avg_pool2d(F.max_pool2d(h, 2, stride=1), 2)  # 3x2 -> 1x1
        out = F.linear(h.flatten(1), params[2])
        (out * mt.tensor(g)).sum().backward()
        return [out.numpy()] + [p.grad.numpy() for p in params] + [mean, var]

    host.set_num_threads(1)
    one_thread = run()
    host.set_num_threads(threads)
    host.cache_block_bytes, block = 1, host.cache_block_bytes  # conv in row blocks too
    try:
        with threadpool_limits(1, "blas"):
            whole = run()  # small work: nothing split
            assert split_calls == []
            with split_everything(threads):
                split = run()
    finally:
        host.cache_block_bytes = block
    assert len(split_calls) > 10
    for a, b, c in zip(split, whole, one_thread):
        np.testing.assert_array_equal(a, b)  # the same numbers, split or not
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


def test_deep_product_with_small_result_is_summed_in_chunks(host):
    """On one thread too: the chunks are for OpenBLAS's speed, not for threads."""
    host.set_num_threads(1)
    a, b = f32(3, 5000), f32(5000, 4)
    chunked = host.matmul(a, b)
    expected = sum(a[:, lo:lo + host.DEPTH_CHUNK] @ b[lo:lo + host.DEPTH_CHUNK]
                   for lo in range(0, 5000, host.DEPTH_CHUNK))
    np.testing.assert_array_equal(chunked, expected)
    np.testing.assert_allclose(chunked, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-4)


def test_narrow_product_is_made_in_column_blocks(host, monkeypatch):
    """On one thread too: the blocks are for OpenBLAS's speed."""
    host.set_num_threads(1)
    a, b = f32(6, 25), f32(25, 2 * host.NARROW_BLOCK + 100)
    calls = []
    real = np.matmul
    monkeypatch.setattr(np, "matmul", lambda *args, **kw: calls.append(args[1].shape) or real(*args, **kw))
    got = host.matmul(a, b)
    monkeypatch.undo()
    assert calls == [(25, host.NARROW_BLOCK), (25, host.NARROW_BLOCK + 100)]  # the rest joins the last
    with threadpool_limits(1):  # one thread: BLAS's too, whose kernel choice changes the rounding
        want = np.concatenate([a @ b[:, :host.NARROW_BLOCK], a @ b[:, host.NARROW_BLOCK:]], axis=1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_small_work_stays_whole_with_blas_untouched(host, split_calls):
    host.set_num_threads(2)
    host._ours_left = 0
    before = blas_threads()
    seen = []
    host.parallel(lambda a, b: seen.append((a, b, blas_threads())), 8, 1024)
    host.matmul(f32(8, 8), f32(8, 8))
    assert split_calls == [] and seen == [(0, 8, before)]


def test_large_work_splits_and_restores_blas(host, split_calls, monkeypatch):
    host.set_num_threads(2)
    before = blas_threads()
    seen = []
    monkeypatch.setattr(host, "WAKE_BYTES", 100)
    host.parallel(lambda a, b: seen.append((a, b, blas_threads())), 8, 1000)
    assert sorted(s[:2] for s in seen) == [(0, 4), (4, 8)]
    assert all(set(s[2]) == {1} for s in seen)  # one BLAS thread per block
    assert blas_threads() == before
    # Our mode lasts: work too small to wake threads is now split (if over SPLIT_BYTES)
    # or run whole with BLAS on one thread, so BLAS's threads stay asleep.
    # It ends KEEP_CALLS calls after the last split, however long they take.
    time.sleep(0.2)
    for _ in range(host.KEEP_CALLS):
        seen.clear()
        host.parallel(lambda a, b: seen.append((a, b, blas_threads())), 8, 10)
        assert seen == [(0, 8, [1] * len(before))]
    seen.clear()
    host.parallel(lambda a, b: seen.append((a, b, blas_threads())), 8, 10)
    assert seen == [(0, 8, before)]


def test_one_thread_means_one_blas_thread_too(host, monkeypatch):
    """set_num_threads(1) runs every product and kernel on one BLAS thread (PyTorch's
    meaning: BLAS set once, not around every call), and more threads give BLAS back its
    own setting."""
    before = blas_threads()
    host.set_num_threads(1)
    assert blas_threads() == [1] * len(before)
    seen = []
    real = np.matmul
    monkeypatch.setattr(np, "matmul", lambda *a, **k: seen.append(blas_threads()) or real(*a, **k))
    host.matmul(f32(8, 8), f32(8, 8))
    host.parallel(lambda a, b: seen.append(blas_threads()), 8, 1 << 30)
    assert seen == [[1] * len(before)] * 2
    host.set_num_threads(2)
    assert blas_threads() == before


def test_seeding_ends_our_mode(host, monkeypatch):
    """A seeded run starts in the plain mode, whatever ran before the seed."""
    host.set_num_threads(2)
    before = blas_threads()
    monkeypatch.setattr(host, "WAKE_BYTES", 100)
    host.parallel(lambda a, b: None, 8, 1000)  # large: our mode
    mt.manual_seed(0)
    seen = []
    host.parallel(lambda a, b: seen.append((a, b, blas_threads())), 8, 10)
    assert seen == [(0, 8, before)]


def test_an_error_in_a_block_reaches_the_caller(host):
    def body(a, b):
        if a > 0:
            raise RuntimeError(f"block {a}:{b} failed")

    with split_everything(2):
        with pytest.raises(RuntimeError, match="block 4:8 failed"):
            host.parallel(body, 8, 1 << 30)
