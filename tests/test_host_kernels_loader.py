"""The loader of the NumPy backend's C kernels (backends/host_kernels.py): the header it
types them from, its switch, its cache, and the backend's fallback.

The cache is damaged in every way a crash, a full disk or a copied folder can leave it,
and each time a fresh process loads it: that process must exit 0 and run working
kernels (after one rebuild), or warn once, naming the file, and run the NumPy code. So
the rebuilds are quick, these tests build with a stand-in compiler that copies a
library the real compiler built once for the module.
"""
import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from minitorch_cnn.backends import host_kernels, sources
from minitorch_cnn.backends.reference import Backend, Window
from minitorch_cnn.backends.host import HostBackend
from test_kernels import _pool_input

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "kernels"
CC = shutil.which(host_kernels.compiler()[0])


# ----------------------------------------------------------------------------- the header
def test_the_header_declares_every_kernel_the_library_exports_and_the_compiler_agrees(built, tmp_path):
    """The parser's reading of host_kernels.h is the compiler's: each prototype, written
    back as C, must accept the kernel the header declares; every function a .c file
    exports must have a prototype; and the library exports exactly the header's."""
    if shutil.which("nm") is None:
        pytest.skip("no nm (binutils) on PATH to list the library's symbols")
    prototypes = host_kernels.kernel_prototypes()
    check = tmp_path / "check.c"
    check.write_text('#include "host_kernels.h"\n' + "".join(
        f"{p.returns} (*check_{name})({', '.join(ctype for ctype, _ in p.parameters)}) = {name};\n"
        for name, p in prototypes.items()))
    run = subprocess.run([CC, "-std=c99", "-fsyntax-only", "-Werror=missing-prototypes",
                          "-Werror=incompatible-pointer-types", "-I", str(KERNEL_DIR),
                          *map(str, sorted(KERNEL_DIR.glob("*.c"))), str(check)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(built[0])], capture_output=True, text=True,
                             check=True).stdout.split("\n")
    exported = {line.split()[-1] for line in symbols if line.split()[1:2] == ["T"]}
    assert exported == set(prototypes)
    # each kernel as the backend calls it: pointers as addresses, sizes as int64
    assert prototypes["relu"].argtypes == [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    assert prototypes["batch_norm"].argtypes[-2:] == [ctypes.c_double, ctypes.c_int]
    assert all(p.restype is None for p in prototypes.values())


def test_the_parser_reads_any_spacing_and_skips_comments_and_directives():
    text = """#ifndef H
    #include <stdint.h>
    // a comment; with a semicolon
    /* and a block;
       comment */ void first(const float*x, float  * y,
                            int64_t n);
    int64_t second(void);  /* ; */
    double third(double eps, int flag, uint8_t *arg, const uint8_t * seen, double *sums);
    #endif
    """
    parsed = host_kernels.parse_header(text)
    assert list(parsed) == ["first", "second", "third"]
    assert parsed["first"] == ("void", (("const float *", "x"), ("float *", "y"), ("int64_t", "n")))
    assert parsed["second"].parameters == () and parsed["second"].restype is ctypes.c_int64
    assert parsed["third"].argtypes == [ctypes.c_double, ctypes.c_int] + [ctypes.c_void_p] * 3


@pytest.mark.parametrize("text, message", [
    ("void f(const float *x,\n       float **y);", r"h\.h:1: parameter 'y' of f has type 'float \*\*'; the loader knows const float \*, "),
    ("\n\nvoid f(long n);", r"h\.h:3: parameter 'n' of f has type 'long'"),
    ("void f(float *restrict x);", r"type 'float \*restrict'"),
    ("void f(float *);", r"parameter 'float \*' of f is not 'type name'"),
    ("float *f(int n);", r"not a prototype"),
    ("static void f(int n);", r"f returns 'static void'; the loader knows void, int64_t, double, int"),
    ("void f(int n) { }", r"does not end with ';'"),
    ("void f(int n);\nvoid f(int m);", r"h\.h:2: f is declared twice"),
    ("// nothing\n", r"h\.h: no prototypes"),
], ids=["pointer to pointer", "unknown scalar", "restrict", "unnamed", "returns a pointer",
        "storage class", "a body", "twice", "empty"])
def test_the_parser_refuses_what_it_cannot_type_naming_the_line(text, message):
    with pytest.raises(host_kernels.HeaderError, match=message):
        host_kernels.parse_header(text, "h.h")


# ----------------------------------------------------------------------------- the switch
@pytest.mark.parametrize("value", ["0", "false", "OFF", " No ", "False\n"])
def test_the_switch_turns_the_kernels_off_and_the_backend_runs_numpy_silently(value, monkeypatch):
    monkeypatch.setenv(host_kernels.SWITCH_ENV, value)
    assert host_kernels.switched_off()
    with pytest.raises(host_kernels.KernelsUnavailable, match="switched off by MINITORCH_CNN_HOST_KERNELS="):
        host_kernels.load()
    be = HostBackend("numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        be.prepare()
    assert be.kernels is None and be.kernels_unavailable.startswith("switched off")


@pytest.mark.parametrize("value", [None, "", "1", "true", " ON ", "Yes"])
def test_the_switch_leaves_the_kernels_on(value, monkeypatch):
    if value is None:
        monkeypatch.delenv(host_kernels.SWITCH_ENV, raising=False)
    else:
        monkeypatch.setenv(host_kernels.SWITCH_ENV, value)
    assert not host_kernels.switched_off()


@pytest.mark.parametrize("value", ["2", "maybe", "of", "0n"])
def test_an_unknown_switch_value_is_an_error_naming_the_variable(value, monkeypatch):
    monkeypatch.setenv(host_kernels.SWITCH_ENV, value)
    message = (f"MINITORCH_CNN_HOST_KERNELS={value!r} is not one of 0, false, off, no "
               r"\(kernels off\) or 1, true, on, yes \(on\)")
    with pytest.raises(ValueError, match=message):
        host_kernels.load()
    with pytest.raises(ValueError, match=message):  # where the backend first loads them
        HostBackend("numpy").prepare()


# ------------------------------------------------------------------------------ the cache
@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv(host_kernels.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(host_kernels.SWITCH_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A library built by the real compiler into its own cache, once for the module, and
    a small foreign one."""
    if CC is None:
        pytest.skip("no C compiler (cc or $CC) on PATH")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(host_kernels.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        env.delenv("CC", raising=False)
        library = host_kernels.build()
    folder = tmp_path_factory.mktemp("foreign")
    foreign, source = folder / "foreign.so", folder / "foreign.c"
    source.write_text("int relu(void) { return 1; }\n")
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(foreign), str(source)], check=True, timeout=120)
    return library, foreign


@pytest.fixture
def fake_cc(built, tmp_path, monkeypatch):
    """$CC: a stand-in compiler that copies the real library to its ``-o`` argument (or
    fails, with FAKE_CC_FAIL set) and logs each call."""
    script, log = tmp_path / "fake-cc", tmp_path / "fake-cc.log"
    script.write_text(f"""#!/bin/sh
echo "$@" >> "{log}"
if [ -n "$FAKE_CC_FAIL" ]; then echo "fake-cc: told to fail" >&2; exit 1; fi
while [ $# -gt 0 ]; do if [ "$1" = -o ]; then out="$2"; fi; shift; done
cp "{built[0]}" "$out"
""")
    script.chmod(0o755)
    log.write_text("")
    monkeypatch.setenv("CC", str(script))
    return script, log


def _calls(log):
    return len(log.read_text().splitlines())


def _record(library):
    return json.loads(library.with_name(library.name + ".json").read_text())


def _assert_recorded(library):
    data = library.read_bytes()
    record = _record(library)
    assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()


def test_build_caches_one_library_and_its_record(built, monkeypatch):
    library = built[0]
    _assert_recorded(library)
    assert sorted(p.name for p in library.parent.iterdir()) == [library.name, library.name + ".json"]  # no partial
    monkeypatch.setenv(host_kernels.CACHE_ENV, str(library.parent))
    monkeypatch.delenv("CC", raising=False)
    mtime = library.stat().st_mtime_ns
    assert host_kernels.build() == library and library.stat().st_mtime_ns == mtime  # reused


def test_a_process_that_finds_its_library_runs_no_compiler(cache, fake_cc, monkeypatch):
    first = host_kernels.build()
    assert _calls(fake_cc[1]) == 1

    def no_process(*args, **kwargs):
        raise AssertionError(f"ran {args[0]}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(subprocess, "run", no_process)
    assert host_kernels.build() == first
    library = host_kernels._loaded_library.__wrapped__()  # a fresh load, past the per-process cache
    x = np.array([-1.0, 2.0, np.nan], np.float32)
    y = np.empty_like(x)
    library.relu(x.ctypes.data, y.ctypes.data, x.size)
    np.testing.assert_array_equal(y, [0.0, 2.0, np.nan])


def test_another_compiler_or_an_upgraded_one_builds_its_own_library(cache, fake_cc):
    first = host_kernels.build()
    later = time.time() + 10
    os.utime(fake_cc[0], (later, later))  # a new compiler at the same path
    second = host_kernels.build()
    assert second != first and second.parent == first.parent and _calls(fake_cc[1]) == 2


def test_old_temporary_files_are_removed_by_a_build(cache, fake_cc):
    cache.mkdir()
    old, fresh = cache / "host-0.so.abc.part", cache / "host-0.so.def.part"
    for path in (old, fresh):
        path.write_bytes(b"\0" * 100)
    hours_ago = time.time() - 2 * host_kernels.STALE_PART_SECONDS
    os.utime(old, (hours_ago, hours_ago))
    host_kernels.build()
    assert not old.exists() and fresh.exists()  # a build in flight may own the fresh one


def test_a_failing_compiler_is_named_and_leaves_nothing(cache, monkeypatch):
    monkeypatch.setenv("CC", "false")
    with pytest.raises(host_kernels.KernelsUnavailable, match=r"false .*failed on .*kernels/\*\.c: exit status 1"):
        host_kernels.build()
    assert list(cache.iterdir()) == []


def test_a_missing_compiler_is_named(cache, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(host_kernels.KernelsUnavailable, match="no working C compiler '/nonexistent/cc'"):
        host_kernels.build()


def test_an_unwritable_cache_is_named(fake_cc, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(host_kernels.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(host_kernels.KernelsUnavailable, match="cannot write the kernel cache"):
        host_kernels.build()


# Damage a built cache as a crash, a full disk, a stray command or a copied folder can.
def _truncate(library, foreign):  # `head -c 32000` of the library over itself
    library.write_bytes(library.read_bytes()[:32000])


def _zero(library, foreign):
    library.write_bytes(bytes(library.stat().st_size))


def _garbage(library, foreign):
    library.write_bytes(np.random.default_rng(0).bytes(library.stat().st_size))


def _half_written_library(library, foreign):  # cut off before its record was written
    library.write_bytes(library.read_bytes()[:library.stat().st_size // 2])
    library.with_name(library.name + ".json").unlink()


def _half_written_record(library, foreign):
    record = library.with_name(library.name + ".json")
    record.write_text(record.read_text()[:40])


def _no_record(library, foreign):
    library.with_name(library.name + ".json").unlink()


def _another_machines_library(library, foreign):
    shutil.copyfile(foreign, library)


def _another_machines_library_and_record(library, foreign):
    data = foreign.read_bytes()
    library.write_bytes(data)
    record = {"key": "0" * 64, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    library.with_name(library.name + ".json").write_text(json.dumps(record))


DAMAGE = [_truncate, _zero, _garbage, _half_written_library, _half_written_record, _no_record,
          _another_machines_library, _another_machines_library_and_record]

# A fresh process: the backend's kernels (built or loaded by prepare(), before any op), a
# kernel called directly, and ops through them.
PROCESS = """
import json, warnings
import numpy as np
import minitorch_cnn as mt
import minitorch_cnn.nn.functional as F

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    be = mt.backends.get_backend_by_name("numpy")
    be.prepare()
    prepared = be.kernels is not None
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    pooled = F.max_pool2d(F.relu(mt.tensor(x)), 2).numpy()
    relu = None
    if be.kernels is not None:
        relu = np.empty_like(x)
        be.kernels.relu(x.ctypes.data, relu.ctypes.data, x.size)
want = np.maximum(x, 0).reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))
print(json.dumps({"prepared": prepared, "kernels": be.kernels is not None, "pooled": bool(np.array_equal(pooled, want)),
                  "relu": relu is None or bool(np.array_equal(relu, np.maximum(x, 0))),
                  "warnings": [str(w.message) for w in caught]}))
"""


def _run_process(env):
    run = subprocess.run([sys.executable, "-c", PROCESS], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert run.returncode == 0, f"exit status {run.returncode}:\n{run.stderr}"
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_").replace("_", " "))
def test_a_damaged_cache_is_rebuilt_once_in_a_process_that_runs_on(damage, built, cache, fake_cc):
    library = host_kernels.build()
    damage(library, built[1])
    result = _run_process({})
    assert result == {"prepared": True, "kernels": True, "pooled": True, "relu": True, "warnings": []}
    assert _calls(fake_cc[1]) == 2  # the first build, and one rebuild
    _assert_recorded(library)
    assert library.read_bytes() == built[0].read_bytes()
    assert _run_process({}) == result and _calls(fake_cc[1]) == 2  # the next process compiles nothing


@pytest.mark.parametrize("damage", [_truncate, _another_machines_library_and_record],
                         ids=lambda f: f.__name__.strip("_").replace("_", " "))
def test_a_damaged_cache_that_cannot_be_rebuilt_warns_once_naming_it(damage, built, cache, fake_cc):
    library = host_kernels.build()
    damage(library, built[1])
    result = _run_process({"FAKE_CC_FAIL": "1"})
    assert result["pooled"] and not result["kernels"]  # the NumPy code, right
    assert len(result["warnings"]) == 1, result["warnings"]
    assert f"{library} " in result["warnings"][0] and "rebuilding it failed" in result["warnings"][0]
    assert "fake-cc: told to fail" in result["warnings"][0]


def test_the_backend_warns_once_and_runs_the_generic_bodies(monkeypatch):
    def unavailable():
        raise host_kernels.KernelsUnavailable("no working C compiler 'cc' (test)")

    monkeypatch.setattr(host_kernels, "load", unavailable)
    monkeypatch.delenv(host_kernels.SWITCH_ENV, raising=False)
    be = HostBackend("numpy")
    x = _pool_input(np.random.default_rng(0), (2, 6, 6, 3), "ties", np.float32)
    tiles = Window(2, 2, 2, 2, 0, 0)
    with pytest.warns(RuntimeWarning, match=r"C kernels are unavailable \(no working C compiler"):
        out, arg = be.max_pool(x, tiles)
    assert be.kernels is None and be.kernels_unavailable.startswith("no working C compiler")
    np.testing.assert_array_equal(out, Backend.max_pool(be, x, tiles)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        be.max_pool(x, tiles)  # once only


# ---------------------------------------------------------------------------- the sources
def test_kernel_sources_are_found_and_a_missing_one_is_named(monkeypatch, tmp_path):
    assert "im2col_float32" in sources.read_kernel_source("im2col.cu")
    assert sources.kernel_source_path(host_kernels.HEADER) == KERNEL_DIR / host_kernels.HEADER
    monkeypatch.setattr(sources, "kernel_source_dirs", lambda: (tmp_path / "a", tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match=r"'im2col\.cu' not found; looked in .*a, .*b"):
        sources.read_kernel_source("im2col.cu")
    with pytest.raises(host_kernels.KernelsUnavailable, match=r"'host_kernels\.h' not found"):
        host_kernels.build()


def test_setup_installs_the_c_sources_and_headers():
    assert {"include kernels/*.c", "include kernels/*.h"} <= set((ROOT / "MANIFEST.in").read_text().splitlines())
    assert 'glob.glob("kernels/*.[ch]")' in (ROOT / "setup.py").read_text()
    assert {p.name for p in KERNEL_DIR.glob("*.c")} >= {"max_pool.c", "batch_norm.c", "conv.c"}
