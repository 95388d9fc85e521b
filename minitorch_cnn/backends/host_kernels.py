"""The NumPy backend's C kernels (``kernels/host.c``): built once per machine with the
system's C compiler, cached, and loaded with ctypes.

They replace the generic NumPy bodies of max pooling and batch normalisation (forward
and backward, alone or fused with the ReLU and max pool after it) and of ReLU (forward
and backward) for float32 arrays, as the CUDA kernels do on the GPU, and make small
convolutions without writing their columns; see the source for why these. Where they
cannot be built (no compiler, a read-only cache, a failed build) or are switched off
(``MINITORCH_CNN_HOST_KERNELS=0``), :func:`load` says why and the backend runs the
generic bodies, which give the same numbers (to rounding, for convolutions and batch
normalisation).

The library is built into ``$MINITORCH_CNN_CACHE`` (default ``~/.cache/minitorch_cnn``)
under a name hashed from the source, the compiler's command and version, and the CPU,
written to a temporary name and renamed, so processes that build at once, or a build
cut short, never leave a broken library behind.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path

from .sources import read_kernel_source

SOURCE = "host.c"
SWITCH_ENV = "MINITORCH_CNN_HOST_KERNELS"
CACHE_ENV = "MINITORCH_CNN_CACHE"
# -march=native: the kernels' branch-free loops vectorise only with the machine's own
# vector instructions (at the x86-64 baseline they branched and ran 10-20x slower,
# measured); hence the CPU in the library's hash. No -ffast-math: NaN must stay NaN.
# -fno-math-errno lets sqrtf be one instruction, with no libm call.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=c99", "-shared", "-fPIC")

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_GEOMETRY = [_I64] * 12  # C, H, W, N, kh, kw, sh, sw, ph, pw, OH, OW
SIGNATURES = {
    "max_pool": [_PTR, _PTR, _PTR] + _GEOMETRY,
    "max_pool_backward": [_PTR, _PTR, _PTR] + _GEOMETRY,
    "relu": [_PTR, _PTR, _I64],
    "relu_backward": [_PTR, _PTR, _PTR, _I64],
    "col2im_add": [_PTR, _PTR] + [_I64] * 16,
    "batch_norm": [_PTR] * 7 + [_I64, _I64, ctypes.c_double, ctypes.c_int],
    "batch_norm_backward": [_PTR] * 8 + [_I64, _I64, _PTR],
    "batch_norm_relu_pool": [_PTR] * 8 + _GEOMETRY + [ctypes.c_double],
    "batch_norm_relu_pool_backward": [_PTR] * 10 + _GEOMETRY,
    "scale_shift_relu_pool": [_PTR] * 5 + _GEOMETRY,
    # C, H, W, N, Cout, kh, kw, ph, pw, OH, OW, then the output rows to compute
    "conv_forward": [_PTR] * 4 + [_I64] * 13,
    # C, Hp, Wp, N (padded), Cout, kh, kw, OH, OW, then the columns to compute
    "conv_weight_grad": [_PTR] * 4 + [_I64] * 11,
}


class KernelsUnavailable(RuntimeError):
    """The C kernels cannot be used here; the message says why."""


def cache_dir():
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minitorch_cnn"


def compiler():
    """The C compiler's command: ``$CC``, else ``cc``."""
    return shlex.split(os.environ.get("CC") or "cc")


def switched_off():
    """Whether the user asked for the NumPy code instead (``MINITORCH_CNN_HOST_KERNELS=0``)."""
    return os.environ.get(SWITCH_ENV, "1").strip() == "0"


@functools.lru_cache(maxsize=None)
def load():
    """The loaded library, its entry points typed; raises KernelsUnavailable."""
    if switched_off():
        raise KernelsUnavailable(f"switched off by {SWITCH_ENV}=0")
    path = build()
    try:
        library = ctypes.CDLL(str(path))
        entries = {name: getattr(library, name) for name in SIGNATURES}
    except (OSError, AttributeError) as exc:  # a damaged file: the cache is only ever renamed into
        raise KernelsUnavailable(f"cannot load {path} ({exc}); delete it to build it again") from None
    for name, arguments in SIGNATURES.items():
        entries[name].argtypes, entries[name].restype = arguments, None
    return library


def build():
    """The path of the built library, building it if this machine has none yet."""
    source = read_kernel_source(SOURCE)
    command = compiler() + list(FLAGS)
    try:
        version = subprocess.run(command[:1] + ["--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelsUnavailable(f"no working C compiler {shlex.join(command[:1])!r} ({exc})") from None
    key = "\0".join([source, shlex.join(command), version, platform.machine(), _cpu()])
    target = cache_dir() / f"host-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=target.stem, suffix=".part", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise KernelsUnavailable(f"cannot write the kernel cache {target.parent}: {exc.strerror}") from None
    try:
        try:
            run = subprocess.run(command + ["-x", "c", "-o", partial, "-"], input=source,
                                 capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise KernelsUnavailable(f"{shlex.join(command)} took over 300 s on {SOURCE}") from None
        if run.returncode != 0:
            detail = " ".join(run.stderr.split())[:300] or f"exit status {run.returncode}"
            raise KernelsUnavailable(f"{shlex.join(command)} failed on {SOURCE}: {detail}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def _cpu():
    """The CPU's model and feature flags (Linux), for -march=native's sake."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
