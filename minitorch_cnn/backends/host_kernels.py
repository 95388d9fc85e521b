"""The NumPy backend's C kernels (``kernels/*.c``): built once per machine with the
system's C compiler into one library, cached, verified, and loaded with ctypes.

They replace the reference NumPy bodies of max pooling and batch normalisation (forward
and backward, alone or fused with the ReLU and max pool after it), of ReLU (forward
and backward) and of col2im for float32 arrays, as the CUDA kernels do on the GPU, and
make small convolutions without writing their columns; see the sources for why these.
Where they cannot be built (no compiler, a read-only cache, a failed build) or are
switched off (``MINITORCH_CNN_HOST_KERNELS=0``, see :func:`switched_off`), :func:`load`
raises :class:`KernelsUnavailable` saying why, and the backend runs the reference bodies
(after one warning), which give the same numbers (to rounding, for convolutions and
batch normalisation).

Declared once: ``kernels/host_kernels.h`` holds the prototype of every kernel the
library exports, and :func:`parse_header` reads it to type each entry point, so no
signature is written here; every ``.c`` file includes the header, so the compiler checks
each definition against it.

The cache, ``$MINITORCH_CNN_CACHE`` (default ``~/.cache/minitorch_cnn``), holds
``host-<key>.so`` and its record ``host-<key>.so.json`` (its SHA-256 and size). The key
hashes the sources, the compile command, the compiler's files (resolved path, size and
modification time: a process that finds its library runs no compiler at all, not even
``--version``), and the CPU, for ``-march=native``'s sake. A build compiles to a
temporary name, syncs the file, renames it into place and syncs the folder, then writes
the record the same way; a process that finds a library loads it only once its size and
hash match the record. Loading a damaged library (a truncated one gives SIGBUS) would
kill the process, so a missing or unreadable record, or a library that does not match it
(truncated, zeroed, half-written, garbage, another machine's), is rebuilt once; where
that fails too, the error names the file. Temporary files of builds killed over
``STALE_PART_SECONDS`` ago are removed by the next build.
"""
import ctypes
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from .sources import kernel_source_path

HEADER = "host_kernels.h"
SWITCH_ENV = "MINITORCH_CNN_HOST_KERNELS"
SWITCH_OFF = ("0", "false", "off", "no")
SWITCH_ON = ("1", "true", "on", "yes")
CACHE_ENV = "MINITORCH_CNN_CACHE"
# -march=native: the kernels' branch-free loops vectorise only with the machine's own
# vector instructions (at the x86-64 baseline they branched and ran 10-20x slower);
# hence the CPU in the library's key. No -ffast-math: NaN must stay NaN.
# -fno-math-errno lets sqrtf be one instruction, with no libm call.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=c99", "-shared", "-fPIC")
BUILD_TIMEOUT_SECONDS = 300
# A build takes seconds: a temporary file this old is a killed build's, not one in flight.
STALE_PART_SECONDS = 3600
NOT_BUILT = "is not built yet"

# The C types the header's prototypes may use, each with the ctypes type it is called
# with: pointers as addresses (the backend passes ``array.ctypes.data``).
C_TYPES = {
    "const float *": ctypes.c_void_p,
    "float *": ctypes.c_void_p,
    "const uint8_t *": ctypes.c_void_p,
    "uint8_t *": ctypes.c_void_p,
    "double *": ctypes.c_void_p,
    "int64_t": ctypes.c_int64,
    "double": ctypes.c_double,
    "int": ctypes.c_int,
}
RETURN_TYPES = {"void": None, **{c: t for c, t in C_TYPES.items() if not c.endswith("*")}}


class KernelsUnavailable(RuntimeError):
    """The C kernels cannot be used here; the message says why."""


class HeaderError(ValueError):
    """The kernels' header holds a declaration the loader cannot type; the message
    names the file and line."""


class Prototype(NamedTuple):
    """One kernel's declaration: its C return type and its parameters' (C type, name)."""
    returns: str
    parameters: tuple

    @property
    def restype(self):
        return RETURN_TYPES[self.returns]

    @property
    def argtypes(self):
        return [C_TYPES[ctype] for ctype, _ in self.parameters]


_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_DIRECTIVE = re.compile(r"^[ \t]*#[^\n]*", re.M)
_PROTOTYPE = re.compile(r"(?P<returns>[A-Za-z_][\w ]*?) ?\b(?P<name>[A-Za-z_]\w*) ?\((?P<parameters>[^()]*)\)")
_PARAMETER = re.compile(r"(?P<ctype>[A-Za-z_][\w *]*?) ?\b(?P<name>[A-Za-z_]\w*)")


def _c_type(text):
    """A C type in one spelling: single spaces, ``*`` after one space (``float*`` and
    ``float  *`` are ``float *``)."""
    return re.sub(r" ?(\*+) ?", r" \1", " ".join(text.split())).strip()


def parse_header(text, filename=HEADER):
    """``{kernel: Prototype}`` of every prototype in a header's text, in order.

    Comments and preprocessor lines are skipped; everything else must be a prototype
    ``returns name(type name, ...);`` whose return type is ``void`` or one of the scalar
    C_TYPES and whose parameters, each named, are of C_TYPES. Anything else raises
    HeaderError naming the line: the loader never guesses how to call a kernel."""
    def blank(match):  # keep line numbers
        return re.sub(r"[^\n]", " ", match.group())

    code = _DIRECTIVE.sub(blank, _COMMENT.sub(blank, text))
    prototypes, start = {}, 0
    statements = code.split(";")
    for index, statement in enumerate(statements):
        line = code.count("\n", 0, start + len(statement) - len(statement.lstrip())) + 1
        start += len(statement) + 1
        declaration = " ".join(statement.split())
        if not declaration:
            continue
        where = f"{filename}:{line}"
        if index == len(statements) - 1:
            raise HeaderError(f"{where}: {declaration[:60]!r} does not end with ';'")
        match = _PROTOTYPE.fullmatch(declaration)
        if match is None:
            raise HeaderError(f"{where}: not a prototype 'returns name(type name, ...)': {declaration[:80]!r}")
        name, returns = match["name"], _c_type(match["returns"])
        if returns not in RETURN_TYPES:
            raise HeaderError(f"{where}: {name} returns {returns!r}; the loader knows "
                              + ", ".join(RETURN_TYPES))
        if name in prototypes:
            raise HeaderError(f"{where}: {name} is declared twice")
        parameters = []
        listed = match["parameters"].strip()
        for parameter in ([] if listed in ("", "void") else listed.split(",")):
            part = _PARAMETER.fullmatch(" ".join(parameter.split()))
            if part is None:
                raise HeaderError(f"{where}: parameter {parameter.strip()!r} of {name} is not 'type name'")
            ctype = _c_type(part["ctype"])
            if ctype not in C_TYPES:
                raise HeaderError(f"{where}: parameter {part['name']!r} of {name} has type {ctype!r}; "
                                  "the loader knows " + ", ".join(C_TYPES))
            parameters.append((ctype, part["name"]))
        prototypes[name] = Prototype(returns, tuple(parameters))
    if not prototypes:
        raise HeaderError(f"{filename}: no prototypes")
    return prototypes


def cache_dir():
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minitorch_cnn"


def compiler():
    """The C compiler's command: ``$CC``, else ``cc``."""
    return shlex.split(os.environ.get("CC") or "cc")


def switched_off():
    """Whether ``MINITORCH_CNN_HOST_KERNELS`` switches the kernels off: 0, false, off or
    no (any case, spaces trimmed) do; 1, true, on, yes, empty or unset leave them on.
    Anything else raises ValueError naming the variable and the accepted values: it is
    the user's mistake to fix, not a property of the machine to fall back from (as
    KernelsUnavailable is), and a typo must not silently choose which code runs."""
    value = os.environ.get(SWITCH_ENV, "").strip().lower()
    if value in SWITCH_OFF:
        return True
    if value in SWITCH_ON or not value:
        return False
    raise ValueError(f"{SWITCH_ENV}={os.environ[SWITCH_ENV]!r} is not one of "
                     f"{', '.join(SWITCH_OFF)} (kernels off) or {', '.join(SWITCH_ON)} (on)")


def kernel_prototypes():
    """``{kernel: Prototype}`` as ``kernels/host_kernels.h`` declares them."""
    path = _header_path()
    return parse_header(path.read_text(encoding="utf-8"), str(path))


def load():
    """The loaded library, every kernel of the header typed (``lib.<kernel>(...)``).
    Raises KernelsUnavailable, or ValueError for a switch it does not know. The switch is
    read on every call; the library is built and loaded once per process."""
    if switched_off():
        raise KernelsUnavailable(f"switched off by {SWITCH_ENV}={os.environ[SWITCH_ENV].strip()}")
    return _loaded_library()


@functools.lru_cache(maxsize=None)
def _loaded_library():
    prototypes = kernel_prototypes()
    path = build()
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:  # verified, so whole: a noexec folder, say
        raise KernelsUnavailable(f"cannot load {path} ({exc})") from None
    for name, prototype in prototypes.items():
        try:
            entry = getattr(library, name)
        except AttributeError:
            raise KernelsUnavailable(f"{path} has no {name}, which {HEADER} declares") from None
        entry.argtypes, entry.restype = prototype.argtypes, prototype.restype
    return library


def build():
    """The path of this machine's library, verified against its record: built first if
    the cache has none, or rebuilt once if what it has is damaged."""
    plan = _plan()
    damage = _damage(plan)
    if damage is None:
        return plan.library
    try:
        _compile(plan)
    except KernelsUnavailable as exc:
        if damage == NOT_BUILT:
            raise
        raise KernelsUnavailable(f"{plan.library} {damage}, and rebuilding it failed: {exc}") from None
    return plan.library


class _Plan(NamedTuple):
    """This machine's library: what it is built from and where it is cached."""
    sources: Path  # the folder of the sources
    c_files: tuple
    command: list  # the compiler and FLAGS
    key: str
    library: Path

    @property
    def record(self):
        return self.library.with_name(self.library.name + ".json")


def _header_path():
    try:
        return kernel_source_path(HEADER)
    except FileNotFoundError as exc:
        raise KernelsUnavailable(str(exc)) from None


def _plan():
    folder = _header_path().parent
    command = compiler() + list(FLAGS)
    key = hashlib.sha256()
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix in (".c", ".h"))
        for path in files:
            key.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError as exc:
        raise KernelsUnavailable(f"cannot read the kernel sources in {folder}: {exc}") from None
    for part in (shlex.join(command), _compiler_identity(), platform.machine(), _cpu()):
        key.update(part.encode() + b"\0")
    key = key.hexdigest()
    return _Plan(folder, tuple(p.name for p in files if p.suffix == ".c"), command, key,
                 cache_dir() / f"host-{key[:16]}.so")


def _compiler_identity():
    """Each file of the compiler's command as the key sees it: resolved path, size and
    modification time, which a compiler upgrade changes."""
    identity = []
    for word in compiler():
        found = shutil.which(word)
        if found:
            path = os.path.realpath(found)
            stat = os.stat(path)
            identity.append(f"{path} {stat.st_size} {stat.st_mtime_ns}")
        elif not identity:
            raise KernelsUnavailable(f"no working C compiler {word!r} (not found)")
    return "\n".join(identity)


def _damage(plan):
    """None if the cached library matches its record, else what is wrong with it."""
    if not plan.library.is_file():
        return NOT_BUILT
    try:
        record = json.loads(plan.record.read_text(encoding="utf-8"))
        size, sha256, key = record["size"], record["sha256"], record["key"]
    except FileNotFoundError:
        return "has no record of its size and hash"
    except (OSError, ValueError, TypeError, KeyError):  # half-written or damaged
        return "has an unreadable record"
    if key != plan.key:
        return "was recorded for another machine or other sources"
    try:
        data = plan.library.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if len(data) != size:
        return f"is {len(data)} bytes where its record says {size}"
    if hashlib.sha256(data).hexdigest() != sha256:
        return "does not match the SHA-256 in its record"
    return None


def _compile(plan):
    """Build the library and its record into the cache. Each is written to a temporary
    name, synced and renamed into place, the library first, so that at any moment (a
    crash or power cut included) the cache holds a whole library with a record or
    without one (then rebuilt), never part of a file under either name."""
    folder = plan.library.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(folder)
        with _temporary(plan.library) as partial:
            _run_compiler(plan, partial)
            data = partial.read_bytes()
            _publish(partial, plan.library)
        record = {"key": plan.key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        with _temporary(plan.record) as partial:
            partial.write_text(json.dumps(record) + "\n", encoding="utf-8")
            _publish(partial, plan.record)
    except OSError as exc:
        raise KernelsUnavailable(f"cannot write the kernel cache {folder}: {exc.strerror or exc}") from None


def _run_compiler(plan, output):
    # One compiler call over every .c file, each its own translation unit: a file's
    # static helpers stay its own, conv.c's multiply-add contraction cannot reach another
    # file's loops, and each is checked against the header alone; one library results.
    command = plan.command + ["-o", str(output)] + [str(plan.sources / name) for name in plan.c_files]
    where = f"{plan.sources}{os.sep}*.c"
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise KernelsUnavailable(f"{shlex.join(plan.command)} took over {BUILD_TIMEOUT_SECONDS} s on {where}") from None
    except OSError as exc:
        raise KernelsUnavailable(f"no working C compiler {plan.command[0]!r} ({exc})") from None
    if run.returncode != 0:
        detail = " ".join(run.stderr.split())[:300] or f"exit status {run.returncode}"
        raise KernelsUnavailable(f"{shlex.join(plan.command)} failed on {where}: {detail}")


@contextmanager
def _temporary(target):
    """A new temporary file's path beside ``target``, removed afterwards unless it was
    renamed."""
    fd, name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        if os.path.exists(name):
            os.remove(name)


def _publish(partial, target):
    """Rename a written file over ``target`` durably: its data synced first, the folder
    (the rename itself) after, where the platform can sync a folder."""
    _fsync(partial)
    os.replace(partial, target)
    try:
        _fsync(target.parent)
    except OSError:
        pass


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_parts(folder):
    for path in folder.glob("*.part"):
        try:
            if time.time() - path.stat().st_mtime > STALE_PART_SECONDS:
                path.unlink()
        except OSError:  # gone already, or not ours to remove
            pass


def _cpu():
    """The CPU's model and feature flags (Linux), for -march=native's sake."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
