"""The backend seam: which array module (NumPy or CuPy) the engine computes with.

Every op body is written once against ``xp``, the array module of the active backend
(Chainer's ``get_array_module`` idea). The bodies of the image ops are methods of a
backend (``reference.py``: the plain ones, and the contract); a fast backend overrides
some of them: ``host.py`` (NumPy, C kernels and threads), ``cupy_backend.py`` (CUDA).

Backends are built on first use: importing minitorch_cnn starts no thread, changes no
allocator setting and never imports CuPy.
"""
import contextlib

import numpy as np

from . import cupy_backend
from .host import HostBackend
from .reference import OPS, Backend, BackendUnavailable, Window

# name -> how to build it; CuPy itself is imported only when "cupy" is asked for.
_FACTORIES = {
    "numpy": lambda: HostBackend("numpy"),
    "numpy-reference": lambda: Backend("numpy-reference", np),
    "cupy": cupy_backend.create,
}
_BACKENDS = {}
_current = [None]  # the process default, "numpy" until another is chosen
_host = [None]  # the backend that owns NumPy arrays: "numpy" or "numpy-reference"
_last_seed = [None]


def get_backend_by_name(name):
    """Return the backend called ``name``, building it on first use."""
    if name not in _BACKENDS:
        if name not in _FACTORIES:
            raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_FACTORIES)}")
        built = _FACTORIES[name]()  # raises BackendUnavailable with the reason
        built.seed(_last_seed[0])
        _BACKENDS[name] = built
    return _BACKENDS[name]


def use_backend(name):
    """Make ``name`` ("numpy", "numpy-reference" or "cupy") the process default; return it.
    "numpy-reference" computes NumPy arrays with the reference bodies alone."""
    chosen = get_backend_by_name(name)
    if chosen.xp is np:
        _host[0] = chosen
    _current[0] = chosen
    return chosen


def get_backend():
    """The active backend object (``.name``, ``.xp``)."""
    return _current[0] or use_backend("numpy")


@contextlib.contextmanager
def backend(name):
    """Scoped form of :func:`use_backend`: ``with mt.backend("cupy"): ...``."""
    previous, previous_host = get_backend(), _host[0]
    use_backend(name)
    try:
        yield _current[0]
    finally:
        _current[0], _host[0] = previous, previous_host


def backend_of(array):
    """The backend that owns a raw array (NumPy arrays and scalars: the NumPy backend in use)."""
    if isinstance(array, (np.ndarray, np.generic)):
        return _host[0] or get_backend_by_name("numpy")
    for b in _BACKENDS.values():
        if b.owns(array):
            return b
    raise TypeError(f"no backend owns an array of type {type(array).__module__}.{type(array).__name__}")


def get_array_module(array):
    """``xp`` for a raw array: ``numpy`` or ``cupy``."""
    return backend_of(array).xp


def set_num_threads(threads):
    """Threads the NumPy backend computes with, its matrix products included
    (PyTorch's name); the default is every core this process may use."""
    get_backend_by_name("numpy").set_num_threads(threads)


def get_num_threads():
    return get_backend_by_name("numpy").threads


def seed_all(seed):
    """Seed every backend, and any built later, with ``seed``."""
    _last_seed[0] = seed
    for b in _BACKENDS.values():
        b.seed(seed)


def host_rng():
    """The NumPy generator that draws initial weights, so they match across backends."""
    return get_backend_by_name("numpy").rng


def contract():
    """The backend contract as rows ``(op, {backend: implementation})``: each op body of
    the reference :class:`Backend` (``reference.OPS``), and for each fast backend whether
    it runs the reference body or its own, and which kernels."""
    classes = {"numpy": HostBackend, "cupy": cupy_backend.CupyBackend}
    return [(op, {name: getattr(getattr(cls, op), "implementation", "reference")
                  for name, cls in classes.items()}) for op in OPS]


def contract_table():
    """``contract()`` as the Markdown table the README shows."""
    names = list(contract()[0][1])
    lines = ["| op | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += [f"| `{op}` | " + " | ".join(cells[n] for n in names) + " |" for op, cells in contract()]
    return "\n".join(lines)
