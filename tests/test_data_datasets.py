"""load_dataset: discovery order, MNIST-family and CIFAR-10 readers, class names, and
the real Fashion-MNIST files of the Debian package (compared with torchvision)."""

import gzip
import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

import minitorch_cnn.data as mtd
from minitorch_cnn.data import datasets as ds
from minitorch_cnn.data import downloader

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_mnist(folder, n, split="train", gz=True, seed=0, n_labels=None):
    """Tiny MNIST-format files: returns the (images, labels) written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n if n_labels is None else n_labels, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    img_name, lbl_name = IDX_NAMES[split]
    mtd.write_idx(folder / (img_name + suffix), images, compress=gz)
    mtd.write_idx(folder / (lbl_name + suffix), labels, compress=gz)
    return images, labels


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $MINITORCH_DATA, a fresh current directory, a missing Debian folder and
    mirrors that refuse connections: nothing outside tmp_path is ever read."""
    monkeypatch.delenv("MINITORCH_DATA", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setitem(ds.DEBIAN_DIRS, "fashion-mnist", str(tmp_path / "debian"))
    for name in list(downloader.MIRRORS):
        monkeypatch.setitem(downloader.MIRRORS, name, ["http://127.0.0.1:9/"])
    return tmp_path


# ------------------------------------------------------------------- names, constants

def test_class_names():
    assert mtd.class_names("fashion-mnist") == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert mtd.class_names("mnist") == [str(i) for i in range(10)]
    assert mtd.class_names("cifar10") == ["airplane", "automobile", "bird", "cat", "deer",
                                          "dog", "frog", "horse", "ship", "truck"]
    assert set(mtd.CLASSES) == {"mnist", "fashion-mnist", "cifar10"}
    names = mtd.class_names("mnist")
    names.append("x")
    assert len(mtd.CLASSES["mnist"]) == 10  # a copy is returned


def test_normalization_table():
    assert mtd.NORMALIZATION == {
        "mnist": ((0.1307,), (0.3081,)),
        "fashion-mnist": ((0.2860,), (0.3530,)),
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    }


def test_unknown_name_and_split():
    with pytest.raises(ValueError) as ei:
        mtd.load_dataset("svhn", "train")
    msg = str(ei.value)
    assert "'svhn'" in msg and "mnist" in msg and "fashion-mnist" in msg and "cifar10" in msg
    with pytest.raises(ValueError, match="'valid'.*train.*test"):
        mtd.load_dataset("mnist", "valid")
    with pytest.raises(ValueError, match="svhn"):
        mtd.class_names("svhn")


def test_resource_tables_are_complete():
    for name in ("mnist", "fashion-mnist", "cifar10"):
        assert downloader.MIRRORS[name], name
        for filename, sha in downloader.RESOURCES[name].items():
            assert len(sha) == 64 and int(sha, 16) >= 0, filename
    assert set(downloader.RESOURCES["mnist"]) == {n + ".gz" for pair in IDX_NAMES.values()
                                                  for n in pair}
    assert downloader.MIRRORS["mnist"][0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"


# --------------------------------------------------------------------- MNIST family

@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_root_holding_the_files(isolated, gz, split):
    images, labels = write_mnist(isolated / "root", 7, split=split, gz=gz)
    x, y = mtd.load_dataset("mnist", split, root=isolated / "root")
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == np.int64 and y.shape == (7,)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_root_as_parent_of_name_folder(isolated):
    images, _ = write_mnist(isolated / "root" / "fashion-mnist", 4)
    write_mnist(isolated / "root" / "mnist", 5)  # another dataset beside it
    x, _ = mtd.load_dataset("fashion-mnist", "train", root=str(isolated / "root"))
    np.testing.assert_array_equal(x, images)


def test_mixed_plain_and_gzip_names(isolated):
    folder = isolated / "mixed"
    images, labels = write_mnist(folder, 3, split="test", gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    os.replace(folder / "t10k-labels-idx1-ubyte.gz", folder / "t10k-labels-idx1-ubyte")
    x, y = mtd.load_dataset("mnist", "test", root=folder)
    np.testing.assert_array_equal(y, labels)


def test_discovery_order(isolated, monkeypatch):
    root, env = isolated / "root", isolated / "env"
    write_mnist(root, 2)
    write_mnist(env / "fashion-mnist", 3)
    write_mnist(isolated / "cwd" / "data" / "fashion-mnist", 4)
    write_mnist(isolated / "debian", 5)
    monkeypatch.setenv("MINITORCH_DATA", str(env))

    def count(**kw):
        return len(mtd.load_dataset("fashion-mnist", "train", download=False, **kw)[0])

    assert count(root=root) == 2                       # 1. root / --data-dir
    assert count() == 3                                # 2. $MINITORCH_DATA
    shutil.rmtree(env / "fashion-mnist")
    write_mnist(env, 6)                                # $MINITORCH_DATA holding the files
    assert count() == 6
    shutil.rmtree(env)
    assert count() == 4                                # 3. ./data/<name>
    shutil.rmtree(isolated / "cwd" / "data")
    assert count() == 5                                # 4. the Debian folder
    with pytest.raises(mtd.DataFolderError, match="empty-root does not exist"):
        count(root=isolated / "empty-root")            # a root is authoritative: no fall-through
    assert mtd.find_dataset("fashion-mnist", "train")[0].startswith(str(isolated / "debian"))
    shutil.rmtree(isolated / "debian")
    assert mtd.find_dataset("fashion-mnist", "train") is None
    with pytest.raises(mtd.DatasetNotFoundError):
        count()


def test_debian_folder_only_for_fashion_mnist(isolated):
    write_mnist(isolated / "debian", 3)
    assert mtd.find_dataset("fashion-mnist", "train") is not None
    assert mtd.find_dataset("mnist", "train") is None


def test_a_split_needs_both_of_its_files(isolated):
    root = isolated / "root"
    write_mnist(root, 3, split="train")
    os.remove(root / "train-labels-idx1-ubyte.gz")
    write_mnist(isolated / "cwd" / "data" / "mnist", 4)
    with pytest.raises(mtd.DataFolderError, match=r"holds no MNIST 'train' split: it needs "
                                                  r"train-images-idx3-ubyte\[\.gz\] and train-labels"):
        mtd.load_dataset("mnist", "train", root=root, download=False)
    assert len(mtd.load_dataset("mnist", "train", download=False)[0]) == 4


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "is empty"),
    (lambda p: p.write_text("x"), "is not a folder"),
    (lambda p: None, "does not exist"),
])
def test_an_unusable_root_is_a_one_line_error_naming_it(isolated, make, message):
    write_mnist(isolated / "cwd" / "data" / "mnist", 4)  # never used instead
    root = isolated / "root"
    make(root)
    with pytest.raises(mtd.DataFolderError) as ei:
        mtd.load_dataset("mnist", "test", root=root, download=False)
    assert str(ei.value).startswith(f"data folder {root} {message}") and "\n" not in str(ei.value)


def test_dataset_files_names_what_load_dataset_reads(isolated):
    images, labels = write_mnist(isolated / "root", 3, split="test", gz=False)
    paths = mtd.dataset_files("mnist", "test", root=isolated / "root")
    assert [os.path.basename(p) for p in paths] == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    x, y = mtd.read_dataset_files("mnist", "test", paths)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_not_found_error_lists_every_place(isolated, monkeypatch):
    env = isolated / "env"
    monkeypatch.setenv("MINITORCH_DATA", str(env))
    with pytest.raises(mtd.DatasetNotFoundError) as ei:
        mtd.load_dataset("fashion-mnist", "test", download=False)
    msg = str(ei.value)
    assert isinstance(ei.value, RuntimeError)
    for place in [env, env / "fashion-mnist", isolated / "cwd" / "data" / "fashion-mnist",
                  isolated / "debian"]:
        assert str(place) in msg, (place, msg)
    order = [msg.index(s) for s in ["--data-dir", "$MINITORCH_DATA", "./data/fashion-mnist",
                                   "Debian", "download"]]
    assert order == sorted(order), msg
    assert "download=False" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "http://127.0.0.1:9/" in msg  # the (patched) mirrors
    assert "--data-dir" in msg and "MINITORCH_DATA" in msg


def test_not_found_message_without_root_env_or_debian(isolated, monkeypatch):
    monkeypatch.setitem(downloader.MIRRORS, "mnist", ["https://example.invalid/mnist/"])
    with pytest.raises(mtd.DatasetNotFoundError) as ei:
        mtd.load_dataset("mnist", "train", download=False)
    msg = str(ei.value)
    assert "(not given)" in msg and "(not set)" in msg and "apt-get" not in msg
    assert "https://example.invalid/mnist/" in msg


def test_counts_must_agree(isolated):
    root = isolated / "root"
    write_mnist(root, 5, n_labels=4)
    with pytest.raises(ValueError) as ei:
        mtd.load_dataset("mnist", "train", root=root)
    msg = str(ei.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert "5" in msg and "4" in msg


def test_wrong_image_shape_or_type(isolated):
    root = isolated / "root"
    write_mnist(root, 2)
    mtd.write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((2, 27, 28), np.uint8))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*28, 28"):
        mtd.load_dataset("mnist", "train", root=root)
    mtd.write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.int32))
    with pytest.raises(ValueError, match="uint8"):
        mtd.load_dataset("mnist", "train", root=root)
    mtd.write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    mtd.write_idx(root / "train-labels-idx1-ubyte.gz", np.array([1, 10], np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        mtd.load_dataset("mnist", "train", root=root)


def test_bad_idx_file_reports_the_file(isolated):
    root = isolated / "root"
    write_mnist(root, 2)
    (root / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(mtd.IdxFormatError, match="train-labels-idx1-ubyte.gz: empty file"):
        mtd.load_dataset("mnist", "train", root=root)


# ------------------------------------------------------------------------- CIFAR-10

def cifar_records(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels[:, None], pixels], axis=1), labels, pixels


def write_cifar(folder, per_batch=2, n_test=3):
    """A tiny cifar-10-batches-bin: returns {split: (images, labels)} expected."""
    batches = Path(folder) / "cifar-10-batches-bin"
    batches.mkdir(parents=True, exist_ok=True)
    want = {}
    parts = []
    for i in range(1, 6):
        rec, lab, pix = cifar_records(per_batch, seed=i)
        rec.tofile(batches / f"data_batch_{i}.bin")
        parts.append((lab, pix))
    want["train"] = (np.concatenate([p for _, p in parts]).reshape(-1, 3, 32, 32),
                     np.concatenate([l for l, _ in parts]).astype(np.int64))
    rec, lab, pix = cifar_records(n_test, seed=99)
    rec.tofile(batches / "test_batch.bin")
    want["test"] = (pix.reshape(-1, 3, 32, 32), lab.astype(np.int64))
    (batches / "batches.meta.txt").write_text("\n".join(mtd.class_names("cifar10")) + "\n")
    return want


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_folder(isolated, split):
    want = write_cifar(isolated / "root")
    x, y = mtd.load_dataset("cifar10", split, root=isolated / "root")
    assert x.dtype == np.uint8 and x.shape == want[split][0].shape
    assert x.shape[1:] == (3, 32, 32)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x, want[split][0])
    np.testing.assert_array_equal(y, want[split][1])


def test_cifar10_pixel_layout(isolated):
    batches = isolated / "root" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    rec = np.zeros((1, 3073), np.uint8)
    rec[0, 0] = 7
    rec[0, 1 + 2 * 1024 + 5 * 32 + 9] = 200   # channel 2 (blue), row 5, column 9
    rec.tofile(batches / "test_batch.bin")
    x, y = mtd.load_dataset("cifar10", "test", root=isolated / "root")
    assert y.tolist() == [7]
    assert x[0, 2, 5, 9] == 200 and int(x.sum()) == 200


def test_cifar10_root_pointing_at_batches_folder_and_name_folder(isolated):
    want = write_cifar(isolated / "a" / "cifar10")
    x, _ = mtd.load_dataset("cifar10", "test", root=isolated / "a")
    np.testing.assert_array_equal(x, want["test"][0])
    x, _ = mtd.load_dataset("cifar10", "test", root=isolated / "a" / "cifar10" / "cifar-10-batches-bin")
    np.testing.assert_array_equal(x, want["test"][0])


def test_cifar10_bad_record_size(isolated):
    write_cifar(isolated / "root")
    with open(isolated / "root" / "cifar-10-batches-bin" / "test_batch.bin", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(ValueError, match="test_batch.bin.*3073"):
        mtd.load_dataset("cifar10", "test", root=isolated / "root")


def make_tar(path, src_dir=None, extra=()):
    with tarfile.open(path, "w:gz") as tf:
        if src_dir is not None:
            tf.add(src_dir, arcname="cifar-10-batches-bin")
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_cifar10_archive_is_extracted_safely(isolated):
    staging = isolated / "staging"
    want = write_cifar(staging)
    root = isolated / "root"
    root.mkdir()
    make_tar(root / "cifar-10-binary.tar.gz", staging / "cifar-10-batches-bin")
    x, y = mtd.load_dataset("cifar10", "train", root=root)
    np.testing.assert_array_equal(x, want["train"][0])
    np.testing.assert_array_equal(y, want["train"][1])
    assert (root / "cifar-10-batches-bin" / "test_batch.bin").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-bin",
                                                      "cifar-10-binary.tar.gz"]
    x, _ = mtd.load_dataset("cifar10", "test", root=root)  # now from the folder
    np.testing.assert_array_equal(x, want["test"][0])


@pytest.mark.parametrize("evil", ["../evil.bin", "cifar-10-batches-bin/../../evil.bin",
                                  "/tmp/minitorch-evil-absolute.bin"])
def test_cifar10_archive_with_unsafe_member_is_refused(isolated, evil):
    staging = isolated / "staging"
    write_cifar(staging)
    root = isolated / "deep" / "root"
    root.mkdir(parents=True)
    make_tar(root / "cifar-10-binary.tar.gz", staging / "cifar-10-batches-bin",
             extra=[(evil, b"gotcha")])
    with pytest.raises(ValueError, match="unsafe member"):
        mtd.load_dataset("cifar10", "test", root=root)
    assert not (isolated / "deep" / "evil.bin").exists()
    assert not (isolated / "evil.bin").exists()
    assert not Path("/tmp/minitorch-evil-absolute.bin").exists()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_cifar10_archive_with_link_is_refused(isolated):
    root = isolated / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-binary.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ValueError, match="link"):
        mtd.load_dataset("cifar10", "test", root=root)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_cifar10_corrupt_archive(isolated):
    root = isolated / "root"
    root.mkdir()
    (root / "cifar-10-binary.tar.gz").write_bytes(gzip.compress(b"not a tar file" * 100)[:50])
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz"):
        mtd.load_dataset("cifar10", "test", root=root)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_extract_cifar10_function(isolated):
    staging = isolated / "staging"
    write_cifar(staging)
    archive = make_tar(isolated / "cifar-10-binary.tar.gz", staging / "cifar-10-batches-bin")
    out = mtd.extract_cifar10(archive, isolated / "out")
    assert out == str(isolated / "out" / "cifar-10-batches-bin")
    assert sorted(os.listdir(out))[:2] == ["batches.meta.txt", "data_batch_1.bin"]
    assert os.listdir(isolated / "out") == ["cifar-10-batches-bin"]


# ------------------------------------------------------- real Fashion-MNIST (Debian)

needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / f).is_file() for f in FASHION_FILES),
    reason=f"real Fashion-MNIST not installed at {FASHION_DIR} "
           "(apt-get install dataset-fashion-mnist, as `make setup` does as root)")


@pytest.fixture(scope="module")
def fashion():
    return {split: mtd.load_dataset("fashion-mnist", split, root=FASHION_DIR, download=False)
            for split in ("train", "test")}


@needs_fashion
def test_real_fashion_mnist_shapes_and_histograms(fashion):
    for split, n, per_class in [("train", 60000, 6000), ("test", 10000, 1000)]:
        x, y = fashion[split]
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert np.bincount(y, minlength=10).tolist() == [per_class] * 10
        assert x.min() == 0 and x.max() == 255


@needs_fashion
def test_real_fashion_mnist_found_in_debian_folder_by_discovery(monkeypatch, tmp_path, fashion):
    monkeypatch.delenv("MINITORCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert ds.DEBIAN_DIRS["fashion-mnist"] == str(FASHION_DIR)
    found = mtd.find_dataset("fashion-mnist", "test")
    assert found == (str(FASHION_DIR / "t10k-images-idx3-ubyte.gz"),
                     str(FASHION_DIR / "t10k-labels-idx1-ubyte.gz"))
    x, y = mtd.load_dataset("fashion-mnist", "test", download=False)
    np.testing.assert_array_equal(x, fashion["test"][0])


@needs_fashion
def test_real_fashion_mnist_matches_torchvision(tmp_path, fashion):
    torch = pytest.importorskip("torch")
    tv_mnist = pytest.importorskip("torchvision.datasets.mnist")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in FASHION_FILES:  # torchvision reads the decompressed files
        with gzip.open(FASHION_DIR / f) as src, open(raw / f[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        x, y = fashion[split]
        tv_x = tv_mnist.read_image_file(str(raw / f"{prefix}-images-idx3-ubyte"))
        tv_y = tv_mnist.read_label_file(str(raw / f"{prefix}-labels-idx1-ubyte"))
        assert tv_x.dtype == torch.uint8 and tv_y.dtype == torch.int64
        np.testing.assert_array_equal(x, tv_x.numpy())
        np.testing.assert_array_equal(y, tv_y.numpy())
        ref = tv_mnist.FashionMNIST(str(tmp_path), train=(split == "train"), download=False)
        np.testing.assert_array_equal(x, ref.data.numpy())
        np.testing.assert_array_equal(y, ref.targets.numpy())
        assert ref.classes == mtd.class_names("fashion-mnist")
    # the decompressed (plain) files read the same through discovery
    x, y = mtd.load_dataset("fashion-mnist", "test", root=raw, download=False)
    np.testing.assert_array_equal(x, fashion["test"][0])


@needs_fashion
def test_fashion_mnist_checksums_match_the_debian_files():
    """RESOURCES' SHA-256 values (from the tensorflow/datasets checksum list) hold for the
    real files: the Debian package keeps the mirrors' deflate streams and drops only the
    gzip header's file name, with a new MTIME; putting the original header back (FNAME
    set, the file's name, the 2017-08-31 MTIME) gives the canonical download, byte for
    byte, and torchvision's MD5 values agree."""
    mtimes = {"train": 1504176606, "t10k": 1504176627}
    torchvision_md5 = {  # torchvision.datasets.FashionMNIST.resources
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    assert set(downloader.RESOURCES["fashion-mnist"]) == set(torchvision_md5)
    for filename, want in downloader.RESOURCES["fashion-mnist"].items():
        blob = (FASHION_DIR / filename).read_bytes()
        assert blob[:3] == b"\x1f\x8b\x08" and blob[3] & 0x08 == 0  # no FNAME stored
        mtime = mtimes[filename.split("-")[0]]
        canonical = (blob[:3] + bytes([blob[3] | 0x08]) + mtime.to_bytes(4, "little")
                     + blob[8:10] + filename[:-3].encode() + b"\0" + blob[10:])
        assert hashlib.sha256(canonical).hexdigest() == want, filename
        assert hashlib.md5(canonical).hexdigest() == torchvision_md5[filename], filename
