"""Downloading the raw dataset files from their public mirrors, checked by SHA-256.

Each file is streamed into a temporary file in the destination folder and hashed
while it is written; it is renamed into place only when its SHA-256 matches, and the
temporary file is removed on any failure, so a half-written file is never left
behind. Mirrors are tried in order; a 404, a connection error, a timeout, a short
read or a wrong checksum moves on to the next one.

The tables :data:`MIRRORS` and :data:`RESOURCES` may be changed in place (tests point
them at a local server), or :func:`download` given ``mirrors=`` / ``resources=``.

(This module is named ``downloader`` so that it is not shadowed by the function
``minitorch_cnn.data.download``.)
"""

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

__all__ = ["MIRRORS", "RESOURCES", "DatasetNotFoundError", "DownloadError",
           "download", "sha256_file"]

#: Base URLs per dataset, tried in order (a file's URL is base + file name).
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
    "cifar10": [
        "https://www.cs.toronto.edu/~kriz/",
    ],
}

#: File name -> SHA-256 of the file as served by the mirrors, per dataset.
#: Source: tensorflow/datasets, tensorflow_datasets/url_checksums/{mnist,fashion_mnist,cifar10}.txt
RESOURCES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    "cifar10": {
        "cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    },
}

_BLOCK = 1 << 16
_USER_AGENT = "minitorch_cnn-data/0.1 (+urllib)"


class DatasetNotFoundError(RuntimeError):
    """A dataset's files were found nowhere and could not be downloaded."""


class DownloadError(DatasetNotFoundError):
    """Every mirror failed for a file; ``failures`` lists ``(url, reason)``."""

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)


class _ChecksumMismatch(ValueError):
    pass


class _ShortRead(OSError):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0


class _Progress:
    """A one-line progress bar on a stream: bytes done / total and percentage.

    Drawn with carriage returns when enabled; when disabled it prints nothing."""

    def __init__(self, label, total, enabled, stream=None):
        self.label = label
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._last = 0.0

    def _draw(self, end=""):
        if self.total:
            frac = min(1.0, self.done / self.total)
            width = 30
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            text = (f"\r{self.label} [{bar}] {_fmt_bytes(self.done)} / "
                    f"{_fmt_bytes(self.total)} {100 * frac:5.1f}%")
        else:
            text = f"\r{self.label} {_fmt_bytes(self.done)}"
        try:
            self.stream.write(text + end)
            self.stream.flush()
        except (OSError, ValueError, AttributeError):
            self.enabled = False  # a closed or odd stream never breaks a download

    def update(self, n):
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last >= 0.1:
                self._last = now
                self._draw()

    def close(self, ok):
        if self.enabled:
            self._draw("\n" if ok else " failed\n")


def _want_progress(progress):
    if progress is None:
        try:
            return sys.stderr is not None and sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False
    return bool(progress)


def _fetch(url, dest_dir, filename, sha256, timeout, progress):
    """Download ``url`` to ``dest_dir/filename``; raise on any failure, leaving no file."""
    final = os.path.join(dest_dir, filename)
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    ok = False
    bar = None
    try:
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                bar = _Progress(f"Downloading {filename}", total, progress)
                h = hashlib.sha256()
                while True:
                    block = resp.read(_BLOCK)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
                if total is not None and bar.done < total:
                    raise _ShortRead(f"connection closed after {bar.done} of {total} bytes")
        digest = h.hexdigest()
        if digest != sha256.lower():
            raise _ChecksumMismatch(f"SHA-256 mismatch: got {digest}, expected {sha256.lower()}")
        os.replace(tmp, final)
        ok = True
        return final
    finally:
        if bar is not None:
            bar.close(ok)
        if not ok:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _reason(exc):
    if isinstance(exc, (_ChecksumMismatch, _ShortRead)):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"connection failed ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return "timed out" if str(exc) in ("", "timed out") else f"timed out ({exc})"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection dropped ({exc!r})"
    return f"{type(exc).__name__}: {exc}"


def download(name, dest_dir, files=None, mirrors=None, resources=None, timeout=30.0,
             progress=None):
    """Download dataset files into ``dest_dir`` from its mirrors, checked by SHA-256.

    ``name`` is a key of :data:`MIRRORS` / :data:`RESOURCES`; ``files`` the file names
    wanted (default: all of the dataset's); ``mirrors`` a list of base URLs and
    ``resources`` a ``{file name: sha256}`` mapping overriding the tables;
    ``timeout`` the seconds urlopen waits on a connect or a read; ``progress`` draws
    a bar on stderr (None: only when stderr is a terminal).

    A file already in ``dest_dir`` with the right checksum is kept. Returns the list
    of paths. Raises :class:`DownloadError` (a ``RuntimeError``) listing every
    mirror's failure when a file cannot be had from any of them.
    """
    mirrors = list(MIRRORS.get(name, ()) if mirrors is None else mirrors)
    resources = dict(RESOURCES.get(name, {}) if resources is None else resources)
    if files is None:
        files = list(resources)
    if not mirrors:
        raise DownloadError(f"no download mirrors known for dataset {name!r}")
    progress = _want_progress(progress)
    os.makedirs(dest_dir, exist_ok=True)
    paths = []
    for filename in files:
        sha = resources.get(filename)
        if not sha:
            raise ValueError(f"no SHA-256 known for {filename!r} of dataset {name!r}")
        final = os.path.join(dest_dir, filename)
        if os.path.isfile(final) and sha256_file(final) == sha.lower():
            paths.append(final)
            continue
        failures = []
        for i, base in enumerate(mirrors):
            url = base if base.endswith("/") else base + "/"
            url += filename
            try:
                paths.append(_fetch(url, dest_dir, filename, sha, timeout, progress))
                break
            except (urllib.error.URLError, http.client.HTTPException, OSError,
                    ValueError) as e:
                failures.append((url, _reason(e)))
                if progress:
                    more = "; trying the next mirror" if i + 1 < len(mirrors) else ""
                    print(f"  {url}: {_reason(e)}{more}", file=sys.stderr)
        else:
            lines = "\n".join(f"  - {u}: {r}" for u, r in failures)
            raise DownloadError(
                f"could not download {filename} of {name} into {dest_dir}; "
                f"every mirror failed:\n{lines}", failures)
    return paths
