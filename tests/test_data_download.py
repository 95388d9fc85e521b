"""download / load_dataset's download path, against a local HTTP server on 127.0.0.1.

The server serves files the tests generate; routes can answer normally, 404, drop the
connection part-way (a Content-Length never reached), or stall past the timeout."""

import gzip
import hashlib
import io
import os
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import minitorch_cnn.data as mtd
from minitorch_cnn.data import datasets as ds
from minitorch_cnn.data import downloader

TIMEOUT = 2.0  # seconds; every request here answers at once unless told to stall


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        kind, body = route
        if kind == "ok":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind == "nolength":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        elif kind == "drop":  # promise far more than is sent, then hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) * 10 + 100000))
            self.end_headers()
            self.wfile.write(body[: max(1, len(body) // 2)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif kind == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:10])
            self.wfile.flush()
            time.sleep(1.5)
            self.close_connection = True
        else:  # pragma: no cover
            raise AssertionError(kind)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.routes = {}
    srv.requests = []
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha(data):
    return hashlib.sha256(data).hexdigest()


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def idx_gz(array):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        a = np.asarray(array)
        code = {np.dtype(np.uint8): 0x08}[a.dtype]
        f.write(bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes())
    return buf.getvalue()


@pytest.fixture
def payload():
    data = os.urandom(300_000)
    return "blob.bin", data, {"blob.bin": sha(data)}


# ------------------------------------------------------------------------ download()

def test_success_with_checksum(server, tmp_path, payload, capsys):
    name, data, res = payload
    server.routes["/m1/blob.bin"] = ("ok", data)
    paths = mtd.download("x", tmp_path, mirrors=[server.base + "/m1/"], resources=res,
                         timeout=TIMEOUT, progress=False)
    assert paths == [str(tmp_path / name)]
    assert (tmp_path / name).read_bytes() == data
    assert listing(tmp_path) == [name]
    assert server.requests == ["/m1/blob.bin"]
    assert capsys.readouterr().err == ""  # progress=False is quiet


def test_base_url_without_trailing_slash(server, tmp_path, payload):
    name, data, res = payload
    server.routes["/m1/blob.bin"] = ("ok", data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1"], resources=res, timeout=TIMEOUT)
    assert (tmp_path / name).read_bytes() == data


def test_wrong_checksum_then_next_mirror(server, tmp_path, payload):
    name, data, res = payload
    server.routes["/m1/blob.bin"] = ("ok", data[:-1] + bytes([data[-1] ^ 1]))
    server.routes["/m2/blob.bin"] = ("ok", data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1/", server.base + "/m2/"],
                 resources=res, timeout=TIMEOUT, progress=False)
    assert (tmp_path / name).read_bytes() == data
    assert listing(tmp_path) == [name]
    assert server.requests == ["/m1/blob.bin", "/m2/blob.bin"]


def test_404_on_first_mirror(server, tmp_path, payload):
    name, data, res = payload
    server.routes["/m2/blob.bin"] = ("ok", data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1/", server.base + "/m2/"],
                 resources=res, timeout=TIMEOUT)
    assert (tmp_path / name).read_bytes() == data
    assert server.requests == ["/m1/blob.bin", "/m2/blob.bin"]


def test_dropped_connection_then_next_mirror(server, tmp_path, payload):
    name, data, res = payload
    server.routes["/m1/blob.bin"] = ("drop", data)
    server.routes["/m2/blob.bin"] = ("ok", data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1/", server.base + "/m2/"],
                 resources=res, timeout=TIMEOUT)
    assert (tmp_path / name).read_bytes() == data
    assert listing(tmp_path) == [name]
    assert server.requests == ["/m1/blob.bin", "/m2/blob.bin"]


def test_dropped_connection_alone_fails_and_leaves_nothing(server, tmp_path, payload):
    name, data, res = payload
    server.routes["/m1/blob.bin"] = ("drop", data)
    with pytest.raises(mtd.DownloadError) as ei:
        mtd.download("x", tmp_path, mirrors=[server.base + "/m1/"], resources=res,
                     timeout=TIMEOUT)
    assert "connection" in str(ei.value)
    assert listing(tmp_path) == []


def test_no_content_length_is_fine(server, tmp_path, payload, capsys):
    name, data, res = payload
    server.routes["/m1/blob.bin"] = ("nolength", data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1/"], resources=res,
                 timeout=TIMEOUT, progress=True)
    assert (tmp_path / name).read_bytes() == data
    assert "blob.bin" in capsys.readouterr().err


def test_all_mirrors_fail_lists_each_and_leaves_nothing(server, tmp_path, payload, closed_port):
    name, data, res = payload
    server.routes["/bad/blob.bin"] = ("ok", b"something else")
    server.routes["/drop/blob.bin"] = ("drop", data)
    mirrors = [server.base + "/missing/", server.base + "/bad/", server.base + "/drop/",
               f"http://127.0.0.1:{closed_port}/refused/"]
    t0 = time.monotonic()
    with pytest.raises(mtd.DownloadError) as ei:
        mtd.download("x", tmp_path, mirrors=mirrors, resources=res, timeout=TIMEOUT)
    assert time.monotonic() - t0 < 10
    err = ei.value
    assert isinstance(err, RuntimeError) and isinstance(err, mtd.DatasetNotFoundError)
    msg = str(err)
    for m in mirrors:
        assert m + "blob.bin" in msg, msg
    assert "HTTP 404" in msg
    assert "SHA-256 mismatch" in msg and res["blob.bin"] in msg
    assert "connection closed after" in msg or "dropped" in msg
    assert "connection failed" in msg
    assert [u for u, _ in err.failures] == [m + "blob.bin" for m in mirrors]
    assert listing(tmp_path) == []
    assert server.requests == ["/missing/blob.bin", "/bad/blob.bin", "/drop/blob.bin"]


def test_stalled_mirror_times_out(server, tmp_path, payload):
    name, data, res = payload
    server.routes["/slow/blob.bin"] = ("stall", data)
    server.routes["/m2/blob.bin"] = ("ok", data)
    t0 = time.monotonic()
    mtd.download("x", tmp_path, mirrors=[server.base + "/slow/", server.base + "/m2/"],
                 resources=res, timeout=0.3)
    assert time.monotonic() - t0 < 1.4  # did not wait for the stalled server
    assert (tmp_path / name).read_bytes() == data
    assert listing(tmp_path) == [name]


def test_existing_good_file_is_kept_bad_one_replaced(server, tmp_path, payload):
    name, data, res = payload
    (tmp_path / name).write_bytes(data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1/"], resources=res, timeout=TIMEOUT)
    assert server.requests == []
    (tmp_path / name).write_bytes(b"half a fi")
    server.routes["/m1/blob.bin"] = ("ok", data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1/"], resources=res, timeout=TIMEOUT)
    assert (tmp_path / name).read_bytes() == data
    assert server.requests == ["/m1/blob.bin"]


def test_failed_download_does_not_touch_an_existing_file(server, tmp_path, payload):
    name, data, res = payload
    (tmp_path / name).write_bytes(b"old")
    server.routes["/m1/blob.bin"] = ("drop", data)
    with pytest.raises(mtd.DownloadError):
        mtd.download("x", tmp_path, mirrors=[server.base + "/m1/"], resources=res,
                     timeout=TIMEOUT)
    assert listing(tmp_path) == [name]
    assert (tmp_path / name).read_bytes() == b"old"


def test_progress_bar_on_stderr(server, tmp_path, payload, capsys):
    name, data, res = payload
    server.routes["/m1/blob.bin"] = ("ok", data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1/"], resources=res,
                 timeout=TIMEOUT, progress=True)
    err = capsys.readouterr().err
    assert "Downloading blob.bin" in err and "100.0%" in err
    assert "293.0 KiB / 293.0 KiB" in err


def test_progress_default_is_quiet_when_not_a_tty(server, tmp_path, payload, capsys):
    name, data, res = payload
    server.routes["/m1/blob.bin"] = ("ok", data)
    mtd.download("x", tmp_path, mirrors=[server.base + "/m1/"], resources=res, timeout=TIMEOUT)
    assert capsys.readouterr().err == ""


def test_unknown_file_and_no_mirrors(tmp_path):
    with pytest.raises(ValueError, match="no SHA-256"):
        mtd.download("x", tmp_path, files=["a"], mirrors=["http://127.0.0.1:9/"], resources={})
    with pytest.raises(mtd.DownloadError, match="no download mirrors"):
        mtd.download("x", tmp_path, mirrors=[], resources={"a": "0" * 64})


# ----------------------------------------------------------- load_dataset downloading

@pytest.fixture
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("MINITORCH_DATA", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setitem(ds.DEBIAN_DIRS, "fashion-mnist", str(tmp_path / "debian"))
    return tmp_path


@pytest.fixture
def mnist_server(server, monkeypatch):
    """The server holds a tiny MNIST under /a/ and /b/; MNIST's mirrors point at it."""
    rng = np.random.default_rng(5)
    arrays = {"train": (rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, 6, dtype=np.uint8)),
              "test": (rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
                       rng.integers(0, 10, 3, dtype=np.uint8))}
    files = {}
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        files[f"{prefix}-images-idx3-ubyte.gz"] = idx_gz(arrays[split][0])
        files[f"{prefix}-labels-idx1-ubyte.gz"] = idx_gz(arrays[split][1])
    for fname, blob in files.items():
        server.routes[f"/b/{fname}"] = ("ok", blob)
    monkeypatch.setitem(downloader.MIRRORS, "mnist", [server.base + "/a/", server.base + "/b/"])
    monkeypatch.setitem(downloader.RESOURCES, "mnist", {f: sha(b) for f, b in files.items()})
    server.arrays = arrays
    return server


def test_load_dataset_downloads_into_root_name_folder(isolated, mnist_server):
    root = isolated / "root"
    x, y = mtd.load_dataset("mnist", "test", root=root)
    np.testing.assert_array_equal(x, mnist_server.arrays["test"][0])
    np.testing.assert_array_equal(y, mnist_server.arrays["test"][1])
    assert listing(root / "mnist") == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # /a/ answers 404, /b/ serves: the test split's two files only
    assert mnist_server.requests == ["/a/t10k-images-idx3-ubyte.gz", "/b/t10k-images-idx3-ubyte.gz",
                                     "/a/t10k-labels-idx1-ubyte.gz", "/b/t10k-labels-idx1-ubyte.gz"]
    n = len(mnist_server.requests)
    x2, _ = mtd.load_dataset("mnist", "test", root=root)  # found on disk now
    np.testing.assert_array_equal(x2, x)
    assert len(mnist_server.requests) == n


def test_load_dataset_downloads_into_env_then_cwd(isolated, mnist_server, monkeypatch):
    env = isolated / "env"
    monkeypatch.setenv("MINITORCH_DATA", str(env))
    mtd.load_dataset("mnist", "train")
    assert listing(env / "mnist") == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    monkeypatch.delenv("MINITORCH_DATA")
    mtd.load_dataset("mnist", "test")
    assert listing(isolated / "cwd" / "data" / "mnist") == ["t10k-images-idx3-ubyte.gz",
                                                            "t10k-labels-idx1-ubyte.gz"]


def test_load_dataset_refuses_a_root_that_is_a_file(isolated, mnist_server):
    not_a_dir = isolated / "a-file"
    not_a_dir.write_text("x")
    with pytest.raises(mtd.DataFolderError, match="a-file is not a folder"):
        mtd.load_dataset("mnist", "test", root=not_a_dir)
    assert mnist_server.requests == [] and not (isolated / "cwd" / "data").exists()


def test_load_dataset_download_false_makes_no_request(isolated, mnist_server):
    with pytest.raises(mtd.DataFolderError, match="root does not exist"):
        mtd.load_dataset("mnist", "test", root=isolated / "root", download=False)
    with pytest.raises(mtd.DatasetNotFoundError, match="download=False"):
        mtd.load_dataset("mnist", "test", download=False)
    assert mnist_server.requests == []
    assert not (isolated / "root").exists()


def test_load_dataset_all_mirrors_failing(isolated, mnist_server, monkeypatch):
    monkeypatch.setitem(downloader.RESOURCES["mnist"], "t10k-images-idx3-ubyte.gz", "0" * 64)
    root = isolated / "root"
    with pytest.raises(mtd.DatasetNotFoundError) as ei:
        mtd.load_dataset("mnist", "test", root=root)
    msg = str(ei.value)
    assert str(root) in msg and str(isolated / "cwd" / "data") not in msg  # root only
    assert mnist_server.base + "/a/t10k-images-idx3-ubyte.gz: HTTP 404" in msg
    assert mnist_server.base + "/b/t10k-images-idx3-ubyte.gz: SHA-256 mismatch" in msg
    assert "--data-dir" in msg
    assert listing(root / "mnist") == []  # no partial or temporary file left behind
    assert isinstance(ei.value.__cause__, mtd.DownloadError)


def test_load_dataset_downloads_cifar10_archive(isolated, server, monkeypatch):
    rng = np.random.default_rng(1)
    rec = np.concatenate([rng.integers(0, 10, (4, 1), dtype=np.uint8),
                          rng.integers(0, 256, (4, 3072), dtype=np.uint8)], axis=1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for member in ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                       "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"]:
            info = tarfile.TarInfo("cifar-10-batches-bin/" + member)
            info.size = rec.nbytes
            tf.addfile(info, io.BytesIO(rec.tobytes()))
    blob = buf.getvalue()
    server.routes["/kriz/cifar-10-binary.tar.gz"] = ("ok", blob)
    monkeypatch.setitem(downloader.MIRRORS, "cifar10", [server.base + "/kriz/"])
    monkeypatch.setitem(downloader.RESOURCES, "cifar10", {"cifar-10-binary.tar.gz": sha(blob)})
    x, y = mtd.load_dataset("cifar10", "train", root=isolated / "root")
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(y[:4], rec[:, 0])
    np.testing.assert_array_equal(x[4:8].reshape(4, -1), rec[:, 1:])
    assert listing(isolated / "root" / "cifar10") == ["cifar-10-batches-bin",
                                                      "cifar-10-binary.tar.gz"]
    assert server.requests == ["/kriz/cifar-10-binary.tar.gz"]
