"""read_idx / write_idx: the IDX format in full, plain and gzip, and every bad input."""

import gzip
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import minitorch_cnn.data as mtd
from minitorch_cnn.data import IdxFormatError, read_idx, write_idx

REPO = Path(__file__).resolve().parents[1]

# type code -> big-endian dtype, written out independently of the module's table
CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)]


def idx_bytes(array, code, dims=None):
    """IDX bytes built by hand (not with write_idx), so round trips test the reader."""
    a = np.asarray(array)
    dims = a.shape if dims is None else dims
    return (bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
            + a.astype(CODES[code]).tobytes())


def sample(code, shape, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(CODES[code]).newbyteorder("=")
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 1e3).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dt)


def expect_error(path, *fragments):
    with pytest.raises(IdxFormatError) as ei:
        read_idx(path)
    msg = str(ei.value)
    assert msg.startswith(str(path)), msg
    for f in fragments:
        assert f in msg, msg
    assert isinstance(ei.value, ValueError)
    return msg


# ------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("code", sorted(CODES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
@pytest.mark.parametrize("form", ["plain", "gzip", "gzip-named-plain"])
def test_round_trip_every_type_and_rank(tmp_path, code, shape, form):
    a = sample(code, shape, seed=code * 10 + len(shape))
    data = idx_bytes(a, code)
    name = {"plain": "a.idx", "gzip": "a.idx.gz", "gzip-named-plain": "a-ubyte"}[form]
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if form != "plain" else data)
    out = read_idx(p)
    assert out.dtype == np.dtype(CODES[code]).newbyteorder("=")
    assert out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out, a)
    assert out.flags.c_contiguous and out.flags.writeable


def test_plain_file_named_gz_is_read_as_plain(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    p = tmp_path / "looks-compressed.gz"
    p.write_bytes(idx_bytes(a, 0x0C))
    np.testing.assert_array_equal(read_idx(p), a)


def test_known_big_endian_bytes(tmp_path):
    p = tmp_path / "k.idx"
    p.write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2]) + b"\x01\x02\xff\xfe")
    np.testing.assert_array_equal(read_idx(p), np.array([258, -2], dtype=np.int16))
    p.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\x3f\x80\x00\x00")
    assert read_idx(p).tolist() == [1.0]
    p.write_bytes(bytes([0, 0, 0x09, 1, 0, 0, 0, 1]) + b"\xff")
    assert read_idx(p).tolist() == [-1]


def test_zero_sized_dimension(tmp_path):
    p = tmp_path / "empty-body.idx"
    p.write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8), 0x08))
    assert read_idx(p).shape == (0, 28, 28)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8", ">i4", "<f8"])
def test_write_idx_round_trip(tmp_path, compress, dtype):
    a = np.arange(24).reshape(2, 3, 4).astype(dtype)
    p = write_idx(tmp_path / "w.bin", a, compress=compress)
    assert (Path(p).read_bytes()[:2] == b"\x1f\x8b") == compress
    out = read_idx(p)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_write_idx_bytes_match_hand_written(tmp_path):
    a = sample(0x0B, (3, 2))
    p = write_idx(tmp_path / "w.idx", a)
    assert Path(p).read_bytes() == idx_bytes(a, 0x0B)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="uint16|dtype"):
        write_idx(tmp_path / "x.idx", np.zeros(3, np.uint16))


# ------------------------------------------------------------------------- bad inputs

def test_empty_file(tmp_path):
    p = tmp_path / "empty.gz"
    p.write_bytes(b"")
    expect_error(p, "empty file")


@pytest.mark.parametrize("compress", [False, True])
def test_bad_magic(tmp_path, compress):
    data = b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc"
    p = tmp_path / "magic.idx"
    p.write_bytes(gzip.compress(data) if compress else data)
    expect_error(p, "bad magic")


@pytest.mark.parametrize("code", [0x00, 0x07, 0x0A, 0x0F, 0xFF])
@pytest.mark.parametrize("compress", [False, True])
def test_unknown_type_code(tmp_path, code, compress):
    data = bytes([0, 0, code, 1]) + struct.pack(">I", 2) + b"\0\0"
    p = tmp_path / "train.gz"
    p.write_bytes(gzip.compress(data) if compress else data)
    msg = expect_error(p, "unknown IDX type code", f"0x{code:02X}")
    if code == 0x07:
        assert msg == f"{p}: unknown IDX type code 0x07 (known: 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)"


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("data", [b"\0\0\x08", bytes([0, 0, 8, 2]) + struct.pack(">I", 2)],
                         ids=["in-magic", "in-dimensions"])
def test_truncated_header(tmp_path, compress, data):
    p = tmp_path / "hdr.idx"
    p.write_bytes(gzip.compress(data) if compress else data)
    expect_error(p, "truncated header")


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("code", [0x08, 0x0C, 0x0E])
def test_body_too_short(tmp_path, compress, code):
    data = idx_bytes(sample(code, (4, 5)), code)[:-3]
    p = tmp_path / "short.idx"
    p.write_bytes(gzip.compress(data) if compress else data)
    expect_error(p, "body is shorter than the header states")


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("extra", [1, 1000])
def test_body_too_long(tmp_path, compress, extra):
    data = idx_bytes(sample(0x0B, (4, 5)), 0x0B) + b"\x07" * extra
    p = tmp_path / "long.idx"
    p.write_bytes(gzip.compress(data) if compress else data)
    expect_error(p, "body is longer than the header states")


def test_header_claiming_huge_body_in_small_gzip_is_refused_before_allocating(tmp_path):
    data = bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", 1 << 20, 1 << 20, 1 << 10) + b"\0" * 64
    p = tmp_path / "huge.gz"
    p.write_bytes(gzip.compress(data))
    expect_error(p, "body is shorter than the header states")


def _gz_sample(tmp_path, name="s.gz"):
    data = idx_bytes(sample(0x08, (50, 28, 28), seed=3), 0x08)
    blob = bytearray(gzip.compress(data, mtime=0))
    return tmp_path / name, blob


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_gzip(tmp_path, keep):
    p, blob = _gz_sample(tmp_path)
    p.write_bytes(bytes(blob[:int(len(blob) * keep)]))
    expect_error(p, "truncated gzip stream")


def test_gzip_cut_inside_trailer(tmp_path):
    p, blob = _gz_sample(tmp_path)
    p.write_bytes(bytes(blob[:-3]))
    expect_error(p, "truncated gzip stream")


def test_corrupt_gzip_crc(tmp_path):
    p, blob = _gz_sample(tmp_path)
    blob[-8] ^= 0xFF  # first byte of the CRC-32 in the trailer
    p.write_bytes(bytes(blob))
    expect_error(p, "corrupt gzip stream", "CRC")


def test_corrupt_gzip_length_field(tmp_path):
    p, blob = _gz_sample(tmp_path)
    blob[-1] ^= 0x01  # ISIZE
    p.write_bytes(bytes(blob))
    expect_error(p, "corrupt gzip stream")


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_corrupt_gzip_deflate_stream(tmp_path, where):
    p, blob = _gz_sample(tmp_path)
    i = 10 + int((len(blob) - 18) * where)  # inside the deflate data
    blob[i:i + 4] = bytes(b ^ 0xA5 for b in blob[i:i + 4])
    p.write_bytes(bytes(blob))
    msg = expect_error(p)
    assert "gzip stream" in msg or "body is" in msg, msg


def test_corrupt_gzip_header(tmp_path):
    p, blob = _gz_sample(tmp_path)
    blob[2] = 0x07  # compression method other than deflate
    p.write_bytes(bytes(blob))
    expect_error(p, "corrupt gzip stream")


def test_garbage_after_gzip_member(tmp_path):
    p, blob = _gz_sample(tmp_path)
    p.write_bytes(bytes(blob) + b"not gzip at all")
    expect_error(p, "corrupt gzip stream")


def test_missing_file_is_oserror_not_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.idx")


# ---------------------------------------------------------------------------- memory

@pytest.mark.parametrize("compress", [False, True])
def test_large_file_read_with_no_extra_copy(tmp_path, compress):
    n = 60000  # the size of MNIST's training images: 47 MB
    body = np.resize(np.arange(251, dtype=np.uint8), n * 28 * 28).reshape(n, 28, 28)
    data = idx_bytes(body, 0x08)
    p = tmp_path / ("big.gz" if compress else "big")
    p.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)
    del data
    tracemalloc.start()
    try:
        out = read_idx(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (n, 28, 28)
    assert np.array_equal(out, body)
    # the output array itself plus a few MiB of buffers; one full extra copy would be 2x
    assert peak < out.nbytes + (4 << 20), (peak, out.nbytes)


# ---------------------------------------------------------------- standalone package

def test_data_package_imports_numpy_and_stdlib_only():
    """minitorch_cnn.data must work without the engine, torch, torchvision or tqdm."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys, types
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "tqdm", "cupy", "matplotlib"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        # an empty parent package: the engine's __init__ is NOT run
        pkg = types.ModuleType("minitorch_cnn")
        pkg.__path__ = [{str(REPO / "minitorch_cnn")!r}]
        sys.modules["minitorch_cnn"] = pkg
        import minitorch_cnn.data as d
        others = sorted(m for m in sys.modules
                        if m.startswith("minitorch_cnn") and not m.startswith("minitorch_cnn.data")
                        and m != "minitorch_cnn")
        assert not others, others
        assert callable(d.read_idx) and callable(d.load_dataset) and d.DataLoader
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_public_names():
    for name in ["read_idx", "write_idx", "IdxFormatError", "load_dataset", "download",
                 "DataLoader", "validation_split", "CLASSES", "class_names", "NORMALIZATION",
                 "MIRRORS", "RESOURCES", "DatasetNotFoundError"]:
        assert hasattr(mtd, name), name
    assert issubclass(mtd.IdxFormatError, ValueError)
    assert issubclass(mtd.DatasetNotFoundError, RuntimeError)
