"""MNIST, Fashion-MNIST and CIFAR-10 from their raw files: discovery, download, reading.

Discovery for ``load_dataset(name, split, root)``. A ``root`` (the ``--data-dir``
option) is authoritative: the split is read from the folder itself or ``root/<name>``,
or (``download=True``) downloaded into ``root/<name>``, and nowhere else; a ``root`` that
is not a readable folder, or lacks the split where nothing is downloaded, is a
:class:`DataFolderError`. Without ``root``, the first of:

1. ``$MINITORCH_DATA``: the folder itself, then ``$MINITORCH_DATA/<name>``;
2. ``./data/<name>`` (relative to the current directory);
3. the Debian dataset folder (``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST,
   from ``apt-get install dataset-fashion-mnist``);
4. download from the dataset's mirrors into ``<base>/<name>`` of the first writable of
   ``$MINITORCH_DATA`` and ``./data`` (a per-dataset folder, because MNIST and
   Fashion-MNIST use the same file names).

:func:`dataset_files` names the files a split is read from (what a run records, with
their SHA-256); :func:`read_dataset_files` reads them.

NumPy and the standard library only.
"""

import os
import shutil
import tarfile
import tempfile
import zlib

import numpy as np

from . import downloader
from .downloader import DatasetNotFoundError, DownloadError
from .idx import read_idx

__all__ = [
    "DATASETS", "CLASSES", "NORMALIZATION", "DEBIAN_DIRS", "DEBIAN_PACKAGES", "ENV_VAR",
    "DataFolderError", "class_names", "load_dataset", "dataset_files", "read_dataset_files",
    "find_dataset", "search_locations",
    "read_mnist_files", "read_cifar10_files", "extract_cifar10",
]

DATASETS = ("mnist", "fashion-mnist", "cifar10")
SPLITS = ("train", "test")
TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}

CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
}

#: Per-channel (mean, std) of the training images scaled to [0, 1].
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

#: Folders where a Debian package installs a dataset's files (searched 4th).
DEBIAN_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}

#: Environment variable naming a data folder (searched 2nd).
ENV_VAR = "MINITORCH_DATA"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_CIFAR_RECORD = 1 + 3 * 32 * 32


class DataFolderError(DatasetNotFoundError):
    """The data folder given as ``root`` (``--data-dir``) does not exist, cannot be
    read, or lacks the split; raised instead of looking anywhere else."""


def _check_name(name):
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def class_names(name):
    """The class names of a dataset, in label order."""
    return list(CLASSES[_check_name(name)])


# ----------------------------------------------------------------------------- reading

def read_mnist_files(images_path, labels_path):
    """Read an MNIST-format image/label file pair (plain or gzip).

    Returns ``(images uint8 (N, 28, 28), labels int64 (N,))``; raises ValueError
    naming the files when their shapes, dtypes or counts are wrong."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, 28, 28), "
                         f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (N,), "
                         f"got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"image and label counts differ: {images_path} holds "
                         f"{images.shape[0]} images, {labels_path} holds "
                         f"{labels.shape[0]} labels")
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return images, labels.astype(np.int64)


def read_cifar10_files(paths):
    """Read CIFAR-10 binary batch files (records of 1 label byte + 3072 pixel bytes).

    Returns ``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` of all files in order."""
    paths = [os.fspath(p) for p in paths]
    counts = []
    for p in paths:
        size = os.path.getsize(p)
        if size == 0 or size % _CIFAR_RECORD:
            raise ValueError(f"{p}: {size} bytes is not a whole, non-zero number of "
                             f"{_CIFAR_RECORD}-byte CIFAR-10 records")
        counts.append(size // _CIFAR_RECORD)
    n = sum(counts)
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    start = 0
    for p, count in zip(paths, counts):
        records = np.fromfile(p, dtype=np.uint8)
        if records.size != count * _CIFAR_RECORD:
            raise ValueError(f"{p}: file changed while being read")
        records = records.reshape(count, _CIFAR_RECORD)
        if int(records[:, 0].max()) > 9:
            raise ValueError(f"{p}: label {int(records[:, 0].max())} out of range 0..9")
        labels[start:start + count] = records[:, 0]
        images[start:start + count] = records[:, 1:].reshape(count, 3, 32, 32)
        start += count
    if images.shape[0] != labels.shape[0]:  # cannot happen; kept as the stated check
        raise ValueError(f"image and label counts differ in {paths}")
    return images, labels


def _safe_members(tf, archive):
    members = []
    for m in tf.getmembers():
        name = m.name
        parts = name.replace("\\", "/").split("/")
        if (os.path.isabs(name) or name.startswith(("/", "\\"))
                or (len(name) > 1 and name[1] == ":") or ".." in parts):
            raise ValueError(f"{archive}: unsafe member path {name!r} "
                             "(absolute or containing '..'); refusing to extract")
        if not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: member {name!r} is a link or special file; "
                             "refusing to extract")
        members.append(m)
    return members


def _extract_safely(archive, dest):
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = _safe_members(tf, archive)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, members=members, **kwargs)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if isinstance(e, (PermissionError, FileNotFoundError)):
            raise
        raise ValueError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from None


def _writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def extract_cifar10(archive, dest=None):
    """Extract ``cifar-10-binary.tar.gz`` safely into ``dest`` (default: the archive's
    folder) and return the path of its ``cifar-10-batches-bin`` folder.

    Members with absolute paths, ``..`` components, links or special files are
    refused (ValueError). The folder appears only complete: it is extracted into a
    temporary folder beside it and renamed into place."""
    archive = os.fspath(archive)
    dest = os.path.dirname(os.path.abspath(archive)) if dest is None else os.fspath(dest)
    target = os.path.join(dest, CIFAR_DIR)
    os.makedirs(dest, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".cifar-10-extract-", dir=dest)
    try:
        _extract_safely(archive, tmp)
        src = os.path.join(tmp, CIFAR_DIR)
        if not os.path.isdir(src):
            raise ValueError(f"{archive}: no {CIFAR_DIR}/ folder inside")
        if not os.path.exists(target):
            os.replace(src, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_cifar_archive(archive, split):
    """Extract the archive (beside it when that folder is writable, else into a
    temporary folder) and read the split's batch files."""
    parent = os.path.dirname(os.path.abspath(archive))
    wanted = _CIFAR_FILES[split]
    keep = _writable_dir(parent)
    tmp = tempfile.mkdtemp(prefix=".cifar-10-extract-", dir=parent if keep else None)
    try:
        _extract_safely(archive, tmp)
        src = os.path.join(tmp, CIFAR_DIR)
        missing = [f for f in wanted if not os.path.isfile(os.path.join(src, f))]
        if missing:
            raise ValueError(f"{archive}: missing {', '.join(CIFAR_DIR + '/' + f for f in missing)}")
        target = os.path.join(parent, CIFAR_DIR)
        if keep and not os.path.exists(target):
            try:
                os.replace(src, target)
                src = target
            except OSError:
                pass
        return read_cifar10_files([os.path.join(src, f) for f in wanted])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- discovery

def _files_needed(name, split):
    if name == "cifar10":
        return (f"{CIFAR_DIR}/{_CIFAR_FILES[split][0]}"
                + (f" .. {_CIFAR_FILES[split][-1]}" if len(_CIFAR_FILES[split]) > 1 else "")
                + f", or {CIFAR_ARCHIVE}")
    return " and ".join(f"{f}[.gz]" for f in _IDX_FILES[split])


def _find_in_dir(name, split, folder):
    """What of the split lies in ``folder``: ("idx", (images, labels)),
    ("cifar", [batch files]), ("archive", path) or None."""
    if not os.path.isdir(folder):
        return None
    if name == "cifar10":
        for d in (os.path.join(folder, CIFAR_DIR), folder):
            paths = [os.path.join(d, f) for f in _CIFAR_FILES[split]]
            if all(os.path.isfile(p) for p in paths):
                return ("cifar", paths)
        archive = os.path.join(folder, CIFAR_ARCHIVE)
        return ("archive", archive) if os.path.isfile(archive) else None
    found = []
    for base in _IDX_FILES[split]:
        for candidate in (base, base + ".gz"):
            p = os.path.join(folder, candidate)
            if os.path.isfile(p):
                found.append(p)
                break
        else:
            return None
    return ("idx", tuple(found))


def search_locations(name, root=None):
    """The places searched for a dataset, in order: a list of ``(label, [folders])``
    (an empty list where the place is not given or not set)."""
    name = _check_name(name)
    if root is not None:  # authoritative: nowhere else is looked at
        root = os.path.expanduser(os.fspath(root))
        return [("root / --data-dir", [root, os.path.join(root, name)])]
    places = [("root / --data-dir", [])]
    env = os.environ.get(ENV_VAR)
    if env:
        env = os.path.expanduser(env)
        places.append((f"${ENV_VAR}", [env, os.path.join(env, name)]))
    else:
        places.append((f"${ENV_VAR}", []))
    places.append((f"./data/{name}", [os.path.join(os.getcwd(), "data", name)]))
    debian = DEBIAN_DIRS.get(name)
    places.append(("Debian dataset folder", [debian] if debian else []))
    return places


def _download_dirs(name, root):
    if root is not None:
        return [os.path.join(os.path.expanduser(os.fspath(root)), name)]
    bases = []
    env = os.environ.get(ENV_VAR)
    if env:
        bases.append(os.path.expanduser(env))
    bases.append(os.path.join(os.getcwd(), "data"))
    return [os.path.join(b, name) for b in bases]


def _locate(name, split, root):
    for _label, folders in search_locations(name, root):
        for folder in folders:
            hit = _find_in_dir(name, split, folder)
            if hit is not None:
                return hit
    return None


def find_dataset(name, split, root=None):
    """Search (without downloading) for a split's files; return their paths as a
    tuple (MNIST family: images, labels; CIFAR-10: the batch files or the archive),
    or None."""
    name, split = _check_name(name), _check_split(split)
    hit = _locate(name, split, root)
    return None if hit is None else _hit_paths(hit)


def _hit_paths(hit):
    kind, paths = hit
    return (paths,) if kind == "archive" else tuple(paths)


def read_dataset_files(name, split, paths):
    """Read a split from the files :func:`dataset_files` named (the MNIST family: images
    and labels; CIFAR-10: the batch files, or the archive alone)."""
    name, split = _check_name(name), _check_split(split)
    paths = [os.fspath(p) for p in paths]
    if name != "cifar10":
        return read_mnist_files(*paths)
    if len(paths) == 1 and paths[0].endswith(CIFAR_ARCHIVE):
        return _read_cifar_archive(paths[0], split)
    return read_cifar10_files(paths)


def _download_files(name, split):
    if name == "cifar10":
        return [CIFAR_ARCHIVE]
    return [f + ".gz" for f in _IDX_FILES[split]]


def _not_found(name, split, root, download_note, failures=()):
    title = TITLES[name]
    lines = [f"{title} ({name}, split {split!r}) was not found. Places searched, in order:"]
    places = search_locations(name, root)
    for i, (label, folders) in enumerate(places, 1):
        if folders:
            where = ", ".join(folders)
        elif label.startswith("$"):
            where = "(not set)"
        else:
            where = "(not given)" if label.startswith("root") else "(none for this dataset)"
        lines.append(f"  {i}. {label}: {where}")
    lines.append(f"  {len(places) + 1}. download: {download_note}")
    for url, reason in failures:
        lines.append(f"       - {url}: {reason}")
    lines.append(f"Files needed in one of these folders: {_files_needed(name, split)}")
    lines.append("How to get them:")
    if name in DEBIAN_PACKAGES:
        lines.append(f"  - apt-get install {DEBIAN_PACKAGES[name]}   "
                     f"(installs them in {DEBIAN_DIRS.get(name)})")
    mirrors = downloader.MIRRORS.get(name, [])
    lines.append("  - download " + ", ".join(_download_files(name, split))
                 + " from " + " or ".join(mirrors))
    lines.append(f"    and pass their folder with --data-dir DIR (root=DIR), set {ENV_VAR}=DIR, "
                 f"or put them in ./data/{name}/")
    return "\n".join(lines)


def _check_root(root, download):
    """Refuse a ``root`` that cannot hold the data: one line naming the folder."""
    if not os.path.exists(root):
        if not download:
            raise DataFolderError(f"data folder {root} does not exist")
    elif not os.path.isdir(root):
        raise DataFolderError(f"data folder {root} is not a folder")
    elif not os.access(root, os.R_OK | os.X_OK):
        raise DataFolderError(f"data folder {root} cannot be read (permission denied)")


def _missing_in_root(name, split, root):
    what = "is empty" if not os.listdir(root) else f"holds no {TITLES[name]} {split!r} split"
    return (f"data folder {root} {what}: it needs {_files_needed(name, split)} in it "
            f"or in {os.path.join(root, name)}")


def dataset_files(name, split, root=None, download=True):
    """The files ``load_dataset(name, split, root, download)`` reads, as a tuple of paths
    (found, or downloaded first); the same errors as :func:`load_dataset`."""
    name, split = _check_name(name), _check_split(split)
    if root is not None:
        root = os.path.expanduser(os.fspath(root))
        _check_root(root, download)
    hit = _locate(name, split, root)
    if hit is not None:
        return _hit_paths(hit)
    if root is not None and not download:
        raise DataFolderError(_missing_in_root(name, split, root))
    if not download:
        raise DatasetNotFoundError(_not_found(name, split, root, "skipped (download=False)"))
    unwritable = []
    for dest in _download_dirs(name, root):
        if not _writable_dir(dest):
            unwritable.append(dest)
            continue
        try:
            downloader.download(name, dest, files=_download_files(name, split))
        except DownloadError as e:
            raise DatasetNotFoundError(_not_found(
                name, split, root, f"into {dest}: every mirror failed:", e.failures)) from e
        hit = _find_in_dir(name, split, dest)
        if hit is None:  # the download worked but left nothing usable: say so
            raise DatasetNotFoundError(_not_found(
                name, split, root, f"into {dest} gave no usable files"))
        return _hit_paths(hit)
    raise DatasetNotFoundError(_not_found(
        name, split, root, "no writable folder among " + ", ".join(unwritable)))


def load_dataset(name, split, root=None, download=True):
    """Load a split of ``mnist``, ``fashion-mnist`` or ``cifar10`` as NumPy arrays.

    Returns ``(images, labels)``: MNIST family images uint8 (N, 28, 28), CIFAR-10
    images uint8 (N, 3, 32, 32), labels int64 (N,). The files are searched for in the
    order of this module's docstring (only in ``root`` when it is given); with
    ``download=True`` (default) they are downloaded when found nowhere. Raises
    :class:`DataFolderError` for an unusable ``root`` and :class:`DatasetNotFoundError`
    (a ``RuntimeError``) listing every place searched and how to get the files."""
    return read_dataset_files(name, split, dataset_files(name, split, root, download))
