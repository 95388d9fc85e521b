"""DataLoader and validation_split on NumPy (the cupy path shares the code, via xp)."""

import numpy as np
import pytest

import minitorch_cnn.data as mtd
from minitorch_cnn.data import DataLoader, validation_split


def make(n=103, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, 28, 28) if c is None else (n, c, 32, 32)
    return (rng.integers(0, 256, shape, dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8))


def collect(loader, **kw):
    return list(loader.batches(**kw)) if kw else list(loader)


def test_shapes_dtypes_and_scaling():
    x, y = make(10)
    dl = DataLoader(x, y, batch_size=4)
    assert dl.images.shape == (10, 1, 28, 28) and dl.images.dtype == np.float32
    assert dl.labels.shape == (10,) and dl.labels.dtype == np.int64
    np.testing.assert_array_equal(dl.images[:, 0], x.astype(np.float32) / np.float32(255))
    assert dl.images.min() >= 0 and dl.images.max() <= 1
    batches = collect(dl)
    assert [b[0].shape for b in batches] == [(4, 1, 28, 28), (4, 1, 28, 28), (2, 1, 28, 28)]
    assert all(bx.dtype == np.float32 and by.dtype == np.int64 for bx, by in batches)
    assert len(dl) == 3 and dl.dataset_size == 10 and dl.batch_size == 4
    assert not np.shares_memory(dl.images, x)  # converted once into its own array
    bx, _ = batches[0]
    assert np.shares_memory(bx, dl.images)  # batches never convert again


def test_normalisation_single_and_per_channel():
    x, y = make(6)
    mean, std = mtd.NORMALIZATION["fashion-mnist"]
    dl = DataLoader(x, y, mean=mean, std=std)
    want = (x.astype(np.float32)[:, None] / np.float32(255) - np.float32(mean[0])) / np.float32(std[0])
    np.testing.assert_array_equal(dl.images, want)

    xc, yc = make(5, c=3)
    mean, std = mtd.NORMALIZATION["cifar10"]
    dl = DataLoader(xc, yc, mean=mean, std=std)
    assert dl.images.shape == (5, 3, 32, 32)
    for ch in range(3):
        w = (xc[:, ch].astype(np.float32) / np.float32(255) - np.float32(mean[ch])) / np.float32(std[ch])
        np.testing.assert_allclose(dl.images[:, ch], w, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="channel"):
        DataLoader(xc, yc, mean=(0.1, 0.2), std=(1, 1))
    with pytest.raises(ValueError, match="zero"):
        DataLoader(x, y, mean=0.5, std=0)


def test_float_images_are_not_rescaled():
    x = np.linspace(0, 1, 4 * 2 * 2, dtype=np.float64).reshape(4, 2, 2)
    dl = DataLoader(x, np.arange(4), batch_size=2)
    np.testing.assert_allclose(dl.images[:, 0], x.astype(np.float32))


def test_drop_last():
    x, y = make(10)
    assert len(DataLoader(x, y, batch_size=4, drop_last=True)) == 2
    assert len(DataLoader(x, y, batch_size=5, drop_last=True)) == 2
    assert len(DataLoader(x, y, batch_size=11, drop_last=True)) == 0
    assert len(DataLoader(x, y, batch_size=11)) == 1
    for shuffle in (False, True):
        batches = collect(DataLoader(x, y, batch_size=4, drop_last=True, shuffle=shuffle))
        assert [len(b[1]) for b in batches] == [4, 4]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 32, 103, 500])
def test_every_sample_exactly_once_per_epoch(shuffle, batch_size):
    n = 103
    x = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28) % 256
    x[:, 0, 0] = np.arange(n)  # a sample's id, kept through scaling
    dl = DataLoader(x.astype(np.uint8), np.arange(n) % 10, batch_size=batch_size,
                    shuffle=shuffle, seed=3)
    for epoch in range(2):
        dl.set_epoch(epoch)
        ids = np.concatenate([np.rint(bx[:, 0, 0, 0] * 255).astype(int) for bx, _ in dl])
        labels = np.concatenate([by for _, by in dl])
        assert sorted(ids.tolist()) == list(range(n))
        np.testing.assert_array_equal(labels, ids % 10)  # images and labels stay paired
        if not shuffle:
            assert ids.tolist() == list(range(n))


def test_shuffle_order_is_the_documented_permutation():
    x, y = make(50)
    dl = DataLoader(x, y, batch_size=8, shuffle=True, seed=11)
    dl.set_epoch(4)
    perm = np.random.default_rng([11, 4]).permutation(50)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in dl]), y[perm].astype(np.int64))
    np.testing.assert_array_equal(dl.permutation(), perm)
    np.testing.assert_array_equal(DataLoader(x, y).permutation(3), np.arange(50))


def test_determinism_by_seed_and_epochs_differ():
    x, y = make(64)

    def order(seed, epoch):
        dl = DataLoader(x, y, batch_size=10, shuffle=True, seed=seed)
        dl.set_epoch(epoch)
        return np.concatenate([bx.reshape(len(bx), -1)[:, :4] for bx, _ in dl])

    np.testing.assert_array_equal(order(0, 0), order(0, 0))
    np.testing.assert_array_equal(order(5, 2), order(5, 2))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    dl = DataLoader(x, y, batch_size=10, shuffle=True, seed=0)
    a = collect(dl)
    b = collect(dl)  # same epoch until set_epoch, like DistributedSampler
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(a, b))
    c = collect(dl, epoch=1)
    assert dl.epoch == 0
    dl.set_epoch(1)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(c, collect(dl)))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_with_start_equals_tail(shuffle, drop_last):
    x, y = make(45)
    dl = DataLoader(x, y, batch_size=7, shuffle=shuffle, drop_last=drop_last, seed=2)
    for epoch in (0, 3):
        full = collect(dl, epoch=epoch)
        for k in range(len(dl) + 2):
            tail = collect(dl, epoch=epoch, start=k)
            assert len(tail) == max(0, len(full) - k)
            for (fx, fy), (tx, ty) in zip(full[k:], tail):
                np.testing.assert_array_equal(fx, tx)
                np.testing.assert_array_equal(fy, ty)
    with pytest.raises(ValueError):
        dl.batches(start=-1)


def test_resume_after_interruption_in_a_fresh_loader():
    x, y = make(40)
    first = DataLoader(x, y, batch_size=6, shuffle=True, seed=9)
    first.set_epoch(2)
    it = iter(first)
    seen = [next(it) for _ in range(3)]
    rest = DataLoader(x, y, batch_size=6, shuffle=True, seed=9)
    rest.set_epoch(2)
    resumed = seen + list(rest.batches(start=3))
    full = collect(first)
    assert len(resumed) == len(full)
    for (a, b), (c, d) in zip(resumed, full):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_unshuffled_batches_are_views():
    x, y = make(20)
    dl = DataLoader(x, y, batch_size=8)
    for bx, by in dl:
        assert np.shares_memory(bx, dl.images) and np.shares_memory(by, dl.labels)
    sdl = DataLoader(x, y, batch_size=8, shuffle=True)
    for bx, by in sdl:
        assert not np.shares_memory(bx, sdl.images)
        assert bx.flags.c_contiguous


def test_labels_already_int64_are_not_copied():
    x, _ = make(5)
    y = np.arange(5, dtype=np.int64)
    assert DataLoader(x, y).labels is y


def test_constructor_errors():
    x, y = make(5)
    with pytest.raises(ValueError, match="labels"):
        DataLoader(x, y[:4])
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        DataLoader(x.reshape(5, -1), y)


def test_matches_torchvision_totensor_normalize_bitwise():
    transforms = pytest.importorskip("torchvision.transforms")
    x, y = make(8)
    mean, std = mtd.NORMALIZATION["mnist"]
    dl = DataLoader(x, y, mean=mean, std=std)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    np.testing.assert_array_equal(dl.images, np.stack([tf(img).numpy() for img in x]))
    hwc = make(6, c=3)[0].transpose(0, 2, 3, 1).copy()  # torchvision takes HWC pictures
    mean, std = mtd.NORMALIZATION["cifar10"]
    dl = DataLoader(hwc.transpose(0, 3, 1, 2), np.zeros(6), mean=mean, std=std)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    np.testing.assert_array_equal(dl.images, np.stack([tf(img).numpy() for img in hwc]))


# ----------------------------------------------------------------- validation_split

def test_validation_split_first_items_as_views():
    x, y = make(12)
    (vx, vy), (rx, ry) = validation_split(x, y, size=5)
    np.testing.assert_array_equal(vx, x[:5])
    np.testing.assert_array_equal(ry, y[5:])
    assert len(vx) == len(vy) == 5 and len(rx) == len(ry) == 7
    for part, whole in [(vx, x), (vy, y), (rx, x), (ry, y)]:
        assert np.shares_memory(part, whole) and part.base is not None
    (vx, _), (rx, _) = validation_split(x, y, size=0)
    assert len(vx) == 0 and len(rx) == 12
    with pytest.raises(ValueError):
        validation_split(x, y, size=13)
    with pytest.raises(ValueError):
        validation_split(x, y[:3])


def test_validation_split_default_is_5000():
    x = np.zeros((10000, 28, 28), np.uint8)
    y = np.zeros(10000, np.int64)
    (vx, vy), (rx, ry) = validation_split(x, y)
    assert len(vx) == 5000 and len(rx) == 5000


class _ShimXp:
    """An array module that is not numpy (as cupy is not), backed by numpy: checks the
    loader goes through ``xp`` for every array it makes (the cupy path, without a GPU)."""

    float32, int64 = np.float32, np.int64

    def __init__(self):
        self.calls = 0

    def asarray(self, a, dtype=None):
        self.calls += 1
        return np.asarray(a, dtype=dtype)


def test_array_module_other_than_numpy():
    x, y = make(30, c=3)
    xp = _ShimXp()
    dl = DataLoader(x, y, batch_size=8, shuffle=True, seed=1,
                    mean=mtd.NORMALIZATION["cifar10"][0], std=mtd.NORMALIZATION["cifar10"][1],
                    xp=xp)
    ref = DataLoader(x, y, batch_size=8, shuffle=True, seed=1,
                     mean=mtd.NORMALIZATION["cifar10"][0], std=mtd.NORMALIZATION["cifar10"][1])
    assert dl.xp is xp
    before = xp.calls
    got = collect(dl)
    assert xp.calls == before + 1  # the epoch's order moves to xp once, not per batch
    for (a, b), (c, d) in zip(got, collect(ref)):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
