"""A NumPy-backed stand-in for CuPy: the engine's CuPy backend, run on the CPU.

It is a test double of exactly the CuPy surface that ``backends/cupy_backend.py`` and the
engine on it use, so that CI runs the CuPy backend's logic on every commit without a GPU.
The real-CuPy tests stay and run on a device; this never replaces them.

What it keeps of CuPy's contract:

- ``ndarray`` is not a NumPy array. Implicit conversion to the host raises TypeError
  exactly where CuPy's does (``np.asarray(a)``, ``a.__array__()``, a NumPy function
  CuPy does not have); ``float(a)``, ``int(a)``, ``bool(a)``, ``a.item()``, ``a.get()``,
  ``cupy.asnumpy(a)`` and stream synchronisation are allowed but are host round trips:
  each is recorded in :data:`counters` ``.syncs`` (what, and the engine line that asked),
  so a test can assert that a training step makes none.
- Host data enters only by ``asarray``/``array`` (a copy, as a transfer is) or
  ``a[...] = host``; a NumPy array passed to any other function is a TypeError.
- Every call that would be a device operation is counted in ``counters.launches`` (by
  name): raw kernels, elementwise and reduction calls, copies, fills, matrix products.
  Views (reshape of contiguous data, transposes, basic slices) and uninitialised
  allocations (``empty``) count nothing, as on a GPU.
- ``RawModule``/``RawKernel`` run the real ``kernels/*.cu`` through the g++ shim of
  ``cuda_host.py``: one thread walks each kernel's grid-stride loop.
- ``random.Generator``/``Philox4x3210`` draw with NumPy's Philox (other numbers than
  CuPy's, the same interface); each bit generator built is counted in ``counters.seeds``.

:func:`installed` makes it the engine's "cupy" backend for a ``with`` block.
"""
import collections
import contextlib
import sys
import traceback
import types
from pathlib import Path

import numpy as np

import cuda_host

__version__ = "14.2.0-standin"
PACKAGE_DIR = str(Path(__file__).resolve().parents[1] / "minitorch_cnn")


class Counters:
    """What the engine asked of the "device" since the last :meth:`reset`."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.launches = collections.Counter()
        self.syncs = []
        self.seeds = 0

    @property
    def launch_count(self):
        return sum(self.launches.values())

    def sync(self, what):
        self.syncs.append(f"{what} at {_engine_caller()}")


counters = Counters()


def _engine_caller():
    """Where the engine asked: its innermost line on the stack and, if another, its
    outermost (the caller's entry point), else the innermost line outside this file."""
    frames = [f for f in traceback.extract_stack()[:-2] if f.filename != __file__]
    inside = [f for f in frames if f.filename.startswith(PACKAGE_DIR)] or frames[-1:]
    where = f"{Path(inside[-1].filename).name}:{inside[-1].lineno}"
    if inside[0] is not inside[-1]:
        where += f" (from {Path(inside[0].filename).name}:{inside[0].lineno})"
    return where


# ---- wrapping: device arrays hold a NumPy array; calls unwrap, run NumPy, wrap ----------
def _unwrap(value, host_ok=False):
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray) and not host_ok:
        raise TypeError(f"Unsupported type {type(value)}: a host array where CuPy wants a device "
                        f"array (at {_engine_caller()})")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, host_ok) for v in value)
    if isinstance(value, slice):
        return value
    return value


def _wrap(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _arrays(values):
    for v in values:
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _arrays(v)


# Calls that allocate without writing: no device work.
ALLOCATIONS = {"empty", "empty_like", "ndarray.view"}


def _call(name, fn, args, kwargs, host_ok=False):
    """Run NumPy's ``fn`` on the unwrapped arguments; count it as one device operation
    unless it only allocates or its result is a view of an input."""
    raw_args = _unwrap(args, host_ok)
    raw_kwargs = {k: _unwrap(v, host_ok) for k, v in kwargs.items()}
    result = fn(*raw_args, **raw_kwargs)
    is_view = ("out" not in kwargs and isinstance(result, np.ndarray)
               and any(np.may_share_memory(result, a) for a in _arrays(raw_args)))
    if name not in ALLOCATIONS and not is_view:
        counters.launches[name] += 1
    if "out" in kwargs and result is raw_kwargs["out"]:
        return kwargs["out"]
    return _wrap(result)


def _sized_one(a, what):
    if a._a.size != 1:
        raise TypeError(f"{what}: only size-1 arrays convert to Python scalars")
    counters.sync(what)


def _wrapped_indices(key, shape):
    """``key`` as a tuple, its integer index arrays taken modulo their axis' length: CuPy
    wraps out-of-bounds integer array indices around where NumPy raises."""
    key = key if isinstance(key, tuple) else (key,)
    spans = [0 if k is None else _unwrap(k, host_ok=True).ndim if getattr(k, "dtype", None) == bool else 1
             for k in key]
    if any(k is Ellipsis for k in key):
        spans[next(i for i, k in enumerate(key) if k is Ellipsis)] = len(shape) - (sum(spans) - 1)
    out, axis = [], 0
    for k, span in zip(key, spans):
        raw = k._a if isinstance(k, ndarray) else k
        if isinstance(raw, np.ndarray) and raw.dtype.kind in "iu":
            k = ndarray(np.mod(raw, shape[axis]))
        out.append(k)
        axis += span
    return tuple(out)


class ndarray:
    """A "device" array: NumPy memory that refuses to become a host array implicitly."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100  # NumPy defers binary operators to ours
    __hash__ = None

    def __init__(self, array):
        self._a = array

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    # ---- the host boundary -----------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """``np.add(a, b)`` on device arrays runs ``cupy.add`` (CuPy does the same)."""
        if isinstance(kwargs.get("out"), tuple) and len(kwargs["out"]) == 1:
            kwargs["out"] = kwargs["out"][0]
        ours = _Ufunc(ufunc)
        return (ours if method == "__call__" else getattr(ours, method))(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        """A NumPy function on device arrays runs CuPy's of that name, if it has one."""
        ours = _NAMES.get(func.__name__) if func.__module__ == "numpy" else None
        return NotImplemented if ours is None else ours(*args, **kwargs)

    def get(self):
        counters.sync("ndarray.get()")
        return self._a.copy()

    def item(self):
        _sized_one(self, "ndarray.item()")
        return self._a.item()

    def tolist(self):
        counters.sync("ndarray.tolist()")
        return self._a.tolist()

    def __float__(self):
        _sized_one(self, "float()")
        return float(self._a)

    def __int__(self):
        _sized_one(self, "int()")
        return int(self._a)

    def __bool__(self):
        if self._a.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        counters.sync("bool()")
        return bool(self._a)

    def __repr__(self):
        counters.sync("repr()")
        return "fake_cupy." + repr(self._a)

    # ---- indexing ----------------------------------------------------------------------------
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, key):
        # a trailing Ellipsis makes NumPy return a 0-d view, not a scalar copy, as CuPy does
        key = _wrapped_indices(key, self.shape)
        if not any(k is Ellipsis for k in key):
            key += (Ellipsis,)
        return _call("ndarray.__getitem__", np.ndarray.__getitem__, (self, key), {}, host_ok=True)

    def __setitem__(self, key, value):
        self._a[_unwrap(_wrapped_indices(key, self.shape), host_ok=True)] = _unwrap(value, host_ok=True)
        counters.launches["ndarray.__setitem__"] += 1

    def __getattr__(self, name):
        if name.startswith("__"):  # never NumPy's __array_interface__ and the like
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        method = getattr(np.ndarray, name)
        # a host array here is a shape or axes (CuPy iterates those), not an operand
        return lambda *args, **kwargs: _call(f"ndarray.{name}", method, (self,) + args, kwargs, host_ok=True)


def _binary(name):
    method = getattr(np.ndarray, name)
    return lambda self, other: _call(name, method, (self, other), {})


def _unary(name):
    method = getattr(np.ndarray, name)
    return lambda self: _call(name, method, (self,), {})


def _in_place(name):
    method = getattr(np.ndarray, name)

    def update(self, other):
        method(self._a, _unwrap(other))
        counters.launches[name] += 1
        return self

    return update


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
            "and", "or", "xor", "lshift", "rshift"):
    setattr(ndarray, f"__{_op}__", _binary(f"__{_op}__"))
    setattr(ndarray, f"__r{_op}__", _binary(f"__r{_op}__"))
    setattr(ndarray, f"__i{_op}__", _in_place(f"__i{_op}__"))
for _op in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(ndarray, f"__{_op}__", _binary(f"__{_op}__"))
for _op in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_op}__", _unary(f"__{_op}__"))


class _Ufunc:
    """A NumPy ufunc on device arrays (``cupy.add``, ``cupy.add.at``, ...)."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _call(self.__name__, self._ufunc, args, kwargs)

    def __getattr__(self, method):
        return lambda *args, **kwargs: _call(f"{self.__name__}.{method}", getattr(self._ufunc, method),
                                             args, kwargs)


class _Namespace(types.ModuleType):
    """A NumPy (sub)module whose functions take and return device arrays; types (dtypes)
    and constants pass through as they are."""

    def __init__(self, name, module, overrides=None):
        super().__init__(name)
        self._module = module
        self._overrides = overrides or {}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._overrides:
            value = self._overrides[name]
        else:
            attr = getattr(self._module, name)
            if isinstance(attr, np.ufunc):
                value = _Ufunc(attr)
            elif isinstance(attr, types.ModuleType):
                value = _Namespace(f"{self.__name__}.{name}", attr)
            elif isinstance(attr, type) or not callable(attr):
                value = attr
            else:
                value = (lambda fn, qual: lambda *args, **kwargs: _call(qual, fn, args, kwargs))(attr, name)
        setattr(self, name, value)  # memoized: later lookups skip __getattr__
        return value


# ---- creation and transfers ------------------------------------------------------------------
def asarray(a, dtype=None, order=None):
    """Device arrays as they are (cast if ``dtype`` differs); host data copied over."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    counters.launches["asarray(host)"] += 1
    return ndarray(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(obj, ndarray) and not copy:
        return asarray(obj, dtype)
    counters.launches["array"] += 1
    return ndarray(np.array(_unwrap(obj, host_ok=True), dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None):
    """The explicit device-to-host copy."""
    if not isinstance(a, ndarray):
        return np.asarray(a, order=order)
    counters.sync("cupy.asnumpy()")
    return np.array(a._a, order=order, copy=True)


def get_array_module(*args):
    return _module if any(isinstance(a, ndarray) for a in args) else np


# ---- random numbers --------------------------------------------------------------------------
class Philox4x3210:
    """CuPy's Philox bit generator's interface (NumPy's Philox inside)."""

    def __init__(self, seed=None):
        counters.seeds += 1
        self._bits = np.random.Philox(seed)


class XORWOW(Philox4x3210):
    """CuPy's default bit generator's name (NumPy's Philox inside, as above)."""


class Generator:
    def __init__(self, bit_generator):
        self._generator = np.random.Generator(bit_generator._bits)

    def random(self, size=None, dtype=np.float64, out=None):
        counters.launches["Generator.random"] += 1
        values = self._generator.random(size, dtype=dtype)
        if out is None:
            return ndarray(np.asarray(values))
        out._a[...] = values
        return out

    def standard_normal(self, size=None, dtype=np.float64):
        counters.launches["Generator.standard_normal"] += 1
        return ndarray(np.asarray(self._generator.standard_normal(size, dtype=dtype)))


def default_rng(seed=None):
    return Generator(XORWOW(seed))


random = types.SimpleNamespace(Generator=Generator, Philox4x3210=Philox4x3210, XORWOW=XORWOW,
                               default_rng=default_rng)


# ---- CUDA: device queries, streams, kernels ----------------------------------------------------
class CUDARuntimeError(RuntimeError):
    def __init__(self, status, text="cudaError"):
        super().__init__(text)
        self.status = status


class OutOfMemoryError(MemoryError):
    pass


class _Stream:
    def synchronize(self):
        counters.sync("Stream.synchronize()")


_STREAM = _Stream()
cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(CUDARuntimeError=CUDARuntimeError, getDeviceCount=lambda: 1,
                                  driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 13000),
    memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
    get_current_stream=lambda: _STREAM,
)


class RawKernel:
    """A kernel entry point of host-compiled CUDA source; ``kernel(grid, block, args)``."""

    def __init__(self, code=None, name=None, options=(), _library=None):
        self.name = name
        self._library = _library if _library is not None else RawModule(code=code, options=options)._library
        getattr(self._library, name)  # AttributeError now, as CuPy's lookup fails at once

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        counters.launches[f"kernel {self.name}"] += 1
        cuda_host.call(self._library, self.name, [_unwrap(a) for a in args])


class RawModule:
    """CUDA source compiled for the CPU (g++ with the host shim; ``-std=`` honoured)."""

    def __init__(self, code=None, options=(), **kwargs):
        std = next((o.split("=", 1)[1] for o in options if o.startswith("-std=")), "c++14")
        self._library = cuda_host.compile_source(code, std)

    def get_function(self, name):
        return RawKernel(name=name, _library=self._library)


# ---- the module: our names first, then NumPy's, wrapped ------------------------------------------
_OVERRIDES = dict(ndarray=ndarray, asarray=asarray, array=array, asnumpy=asnumpy,
                  get_array_module=get_array_module, random=random, cuda=cuda,
                  RawKernel=RawKernel, RawModule=RawModule, __version__=__version__)
_module = _Namespace("cupy", np, _OVERRIDES)  # what it stands in for
_module.__file__ = __file__


class _Lookup:
    """``_NAMES.get(name)``: our function of that name, or None (``__array_function__``
    finds the CuPy function a NumPy function call on device arrays stands for)."""

    def __init__(self, module):
        self._module = module

    def get(self, name):
        try:
            value = getattr(self._module, name)
        except AttributeError:
            return None
        return value if callable(value) and not isinstance(value, type) else None


_NAMES = _Lookup(_module)
_BACKEND = []


def backend():
    """The engine's CuPy backend over this stand-in, built (by ``cupy_backend.create``,
    probe and kernel compilation included) once per process."""
    if not _BACKEND:
        from minitorch_cnn.backends import cupy_backend

        with _as_cupy():
            _BACKEND.append(cupy_backend.create())
    return _BACKEND[0]


@contextlib.contextmanager
def _as_cupy():
    previous = sys.modules.get("cupy")
    sys.modules["cupy"] = _module
    try:
        yield _module
    finally:
        if previous is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = previous


@contextlib.contextmanager
def installed():
    """The stand-in as ``import cupy`` and as the engine's "cupy" backend (seeded like the
    others), for a ``with`` block; whatever was there before comes back after."""
    from minitorch_cnn import backends

    be = backend()
    previous, active = backends._BACKENDS.get("cupy"), backends.get_backend().name
    with _as_cupy():
        backends._BACKENDS["cupy"] = be
        be.seed(backends._last_seed[0])
        try:
            yield be
        finally:
            if backends.get_backend() is be:  # e.g. the train command chose it: not past the block
                backends.use_backend(active if active != "cupy" else "numpy")
            if previous is None:
                backends._BACKENDS.pop("cupy", None)
            else:
                backends._BACKENDS["cupy"] = previous


_module.counters = counters
_module.installed = installed
_module.backend = backend
