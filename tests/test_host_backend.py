"""The NumPy backend's channel-parallel image kernels give the same bits as one thread."""
import numpy as np
import pytest

import minitorch_cnn as mt
from minitorch_cnn import backends


@pytest.fixture
def host(monkeypatch):
    be = backends.get_backend_by_name("numpy")
    before = be.threads
    monkeypatch.setattr(type(be), "PARALLEL_MIN_BYTES", 0)  # split even tiny arrays
    yield be
    be.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("count", [1, 2, 7])
def test_for_ranges_covers_every_index_once(host, threads, count):
    host.set_num_threads(threads)
    seen = []
    host.for_ranges(lambda a, b: seen.extend(range(a, b)), count, nbytes=1 << 30)
    assert sorted(seen) == list(range(count))


def _kernels(be, x, dout_pool, cols_shape_seed):
    rng = np.random.default_rng(cols_shape_seed)
    out = {"im2col": be.im2col(x, 3, 2, 2, 1, 1, 0)}
    cols = rng.standard_normal(out["im2col"].shape).astype(x.dtype)
    out["col2im"] = be.col2im(cols, x.shape, 2, 1, 1, 0)
    pooled, routing = be.max_pool(x, 2, 2, 2, 2, 0, 0)
    out["max_pool"] = pooled
    out["max_pool_backward"] = be.max_pool_backward(dout_pool, routing, x.shape, 2, 2, 2, 2, 0, 0)
    return out


@pytest.mark.parametrize("channels", [1, 3, 8])
def test_parallel_kernels_equal_one_thread(host, channels):
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=(channels, 9, 8, 5)).astype(np.float32)  # many ties
    x[x < 0] = 0
    dout = rng.standard_normal((channels, 4, 4, 5)).astype(np.float32)
    host.set_num_threads(1)
    single = _kernels(host, x, dout, 1)
    host.set_num_threads(3)
    parallel = _kernels(host, x, dout, 1)
    for name in single:
        np.testing.assert_array_equal(parallel[name], single[name], err_msg=name)


def test_set_num_threads_is_checked_and_visible():
    before = mt.get_num_threads()
    try:
        mt.set_num_threads(1)
        assert mt.get_num_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            mt.set_num_threads(0)
    finally:
        mt.set_num_threads(before)
