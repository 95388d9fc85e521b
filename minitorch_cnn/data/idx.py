"""Reading and writing the IDX format (the file format of MNIST and Fashion-MNIST).

An IDX file is a 4-byte magic number -- two zero bytes, a type code and the rank --
followed by ``rank`` big-endian uint32 dimension sizes and the big-endian body.
The file may be gzip-compressed; compression is detected from the first two bytes
(``1f 8b``), never from the file name.

NumPy and the standard library only.
"""

import gzip
import os
import sys
import zlib

import numpy as np

__all__ = ["IdxFormatError", "read_idx", "write_idx", "IDX_TYPES"]

#: type code -> big-endian NumPy dtype of the body
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_CODES = {dt.newbyteorder("=").str: code for code, dt in IDX_TYPES.items()}

_GZIP_MAGIC = b"\x1f\x8b"
# Decompressed chunk handed to GzipFile.readinto at a time: the only temporary
# buffer besides the output array (GzipFile copies each decompressed piece once).
_CHUNK = 1 << 20
# deflate cannot expand data by more than about 1032:1.
_MAX_DEFLATE_RATIO = 1100


class IdxFormatError(ValueError):
    """A file is not a valid IDX file; the message starts with the file's path."""

    def __init__(self, path, fault):
        self.path = os.fspath(path)
        self.fault = fault
        super().__init__(f"{self.path}: {fault}")


def _read_into(f, view):
    """Fill the byte memoryview ``view`` from ``f``; return the number of bytes read."""
    done = 0
    total = len(view)
    while done < total:
        n = f.readinto(view[done:min(total, done + _CHUNK)])
        if not n:
            break
        done += n
    return done


def _read_exact(f, n):
    buf = bytearray(n)
    got = _read_into(f, memoryview(buf))
    return bytes(buf[:got])


def _parse(path, f, compressed_size, file_size):
    """Read header and body from the (possibly decompressing) stream ``f``."""
    magic = _read_exact(f, 4)
    if len(magic) < 4:
        raise IdxFormatError(path, f"truncated header: {len(magic)} of the 4 magic bytes")
    if magic[0] != 0 or magic[1] != 0:
        raise IdxFormatError(
            path, f"bad magic number 0x{magic.hex()}: an IDX file starts with two zero bytes")
    code, rank = magic[2], magic[3]
    if code not in IDX_TYPES:
        raise IdxFormatError(
            path,
            f"unknown IDX type code 0x{code:02X} (known: "
            + ", ".join(f"0x{c:02X}" for c in IDX_TYPES) + ")")
    raw_dims = _read_exact(f, 4 * rank)
    if len(raw_dims) < 4 * rank:
        raise IdxFormatError(
            path, f"truncated header: rank {rank} needs {4 * rank} bytes of dimension "
                  f"sizes, got {len(raw_dims)}")
    shape = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    dtype = IDX_TYPES[code]
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    header = 4 + 4 * rank

    # Refuse impossible sizes before allocating anything.
    if file_size is not None and header + nbytes != file_size:
        body = file_size - header
        kind = "shorter" if body < nbytes else "longer"
        raise IdxFormatError(
            path, f"body is {kind} than the header states: header says shape {shape} "
                  f"of {dtype.name} = {nbytes} bytes, the file holds {body}")
    if compressed_size is not None and nbytes > _MAX_DEFLATE_RATIO * compressed_size + (1 << 16):
        raise IdxFormatError(
            path, f"body is shorter than the header states: header says shape {shape} "
                  f"of {dtype.name} = {nbytes} bytes, more than a {compressed_size}-byte "
                  "gzip file can hold")

    out = np.empty(shape, dtype=dtype.newbyteorder("="))
    got = _read_into(f, memoryview(out.reshape(-1).view(np.uint8)))
    if got < nbytes:
        raise IdxFormatError(
            path, f"body is shorter than the header states: expected {nbytes} bytes "
                  f"(shape {shape}, {dtype.name}), got {got}")
    if f.read(1):
        raise IdxFormatError(
            path, f"body is longer than the header states: trailing data after the "
                  f"{nbytes} bytes of shape {shape}, {dtype.name}")
    if dtype.itemsize > 1 and sys.byteorder == "little":
        out.byteswap(inplace=True)
    return out


def read_idx(path):
    """Read an IDX file, plain or gzip-compressed, into a NumPy array.

    Returns an array of the header's shape and dtype (uint8, int8, int16, int32,
    float32 or float64) in native byte order. The body is read straight into the
    output array (decompressed chunk by chunk for gzip), so peak memory is the
    array plus about a megabyte.

    Raises :class:`IdxFormatError` (a ``ValueError``) naming the file and the fault
    for an empty file, a bad magic number, an unknown type code, a body shorter or
    longer than the header states, and a truncated or corrupt gzip stream.
    """
    path = os.fspath(path)
    with open(path, "rb", buffering=0) as raw:
        size = os.fstat(raw.fileno()).st_size
        head = _read_exact(raw, 2)
        if not head:
            raise IdxFormatError(path, "empty file (0 bytes)")
        raw.seek(0)
        if head != _GZIP_MAGIC:
            return _parse(path, raw, None, size)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                return _parse(path, gz, size, None)
        except EOFError as e:
            raise IdxFormatError(path, f"truncated gzip stream ({e})") from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise IdxFormatError(path, f"corrupt gzip stream ({e})") from None


def write_idx(path, array, compress=None):
    """Write ``array`` as an IDX file (gzip-compressed if ``compress`` is true, or,
    when ``compress`` is None, if ``path`` ends in ``.gz``). Returns the path."""
    path = os.fspath(path)
    a = np.asarray(array)
    code = _TYPE_CODES.get(a.dtype.newbyteorder("=").str)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {a.dtype}; use one of "
                         + ", ".join(dt.name for dt in IDX_TYPES.values()))
    if a.ndim > 255:
        raise ValueError("IDX rank is at most 255")
    header = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(a, dtype=IDX_TYPES[code])
    if compress is None:
        compress = path.endswith(".gz")
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header)
        f.write(memoryview(body.reshape(-1).view(np.uint8)))
    return path
