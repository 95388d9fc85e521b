"""CUDA kernel sources run on the CPU: compiled as C++ by g++, with a few lines standing
in for the CUDA keywords and built-in variables the kernels use.

Every launch is one block of one thread, so each kernel's grid-stride loop visits every
element in order. Shared by the kernel tests (``test_kernels.py``) and the CuPy stand-in
(``fake_cupy.py``), whose ``RawModule`` compiles through :func:`compile_source`.
"""
import ctypes
import functools
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HOST_SHIM = """\
#include <cmath>
using std::sqrt;  // device code has CUDA's math functions without an include
#define __global__
#define __device__
#define __shared__ static
inline void __syncthreads() {}
struct mt_dim3 { unsigned x, y, z; };
static const mt_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
static const mt_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
"""


class HostCompileError(RuntimeError):
    """g++ rejected a CUDA source; the message holds its diagnostics."""


def compiler():
    """The C++ compiler's path, or None."""
    return shutil.which("g++")


@functools.lru_cache(maxsize=None)
def _build_dir():
    return Path(tempfile.mkdtemp(prefix="mt_cuda_host_"))


@functools.lru_cache(maxsize=None)
def compile_source(code, std="c++14"):
    """``code`` (the text of CUDA sources) as a loaded shared library; compiled once per
    process and text. Raises :class:`HostCompileError` with g++'s diagnostics."""
    if compiler() is None:
        raise HostCompileError("no C++ compiler (g++) to run CUDA kernels on the CPU")
    folder = _build_dir()
    name = hashlib.sha256(code.encode()).hexdigest()[:16]
    shim, source, library = folder / "cuda_host_shim.h", folder / f"{name}.cu", folder / f"{name}.so"
    shim.write_text(HOST_SHIM)
    source.write_text(code)
    run = subprocess.run([compiler(), "-O1", f"-std={std}", "-shared", "-fPIC", "-x", "c++",
                          "-include", str(shim), "-o", str(library), str(source)],
                         capture_output=True, text=True, timeout=120)
    if run.returncode:
        raise HostCompileError(f"g++ failed on the kernel source:\n{run.stderr}")
    return ctypes.CDLL(str(library))


def compile_files(paths):
    """The CUDA source files ``paths`` compiled together into one library."""
    return compile_source("\n".join(Path(p).read_text() for p in paths))


def c_argument(value):
    """A kernel argument as ctypes passes it: an array as the address of its data (which
    must be C-contiguous: the kernels index it so), a NumPy scalar by value as its C type,
    and a Python int, float or bool as CuPy passes them (64-bit, double, bool)."""
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError(f"a raw kernel got a non-contiguous array {value.shape} {value.strides}")
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, np.generic):
        return np.ctypeslib.as_ctypes_type(value.dtype)(value.item())
    if isinstance(value, bool):
        return ctypes.c_bool(value)
    if isinstance(value, int):
        return ctypes.c_int64(value)
    if isinstance(value, float):
        return ctypes.c_double(value)
    raise TypeError(f"unsupported raw kernel argument type {type(value).__name__}")


def call(library, entry, args):
    """Run the kernel ``entry`` of ``library`` once on host arrays and scalars ``args``."""
    function = getattr(library, entry)
    c_args = [c_argument(a) for a in args]
    function.argtypes = [type(a) for a in c_args]
    function.restype = None
    function(*c_args)
