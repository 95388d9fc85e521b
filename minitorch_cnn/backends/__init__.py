"""The backend seam: which array module (NumPy or CuPy) the engine computes with.

Every op body is written once against ``xp``, the array module of the active backend
(Chainer's ``get_array_module`` idea). The few kernels a backend may want to replace
with its own (im2col/col2im, max pooling) are methods of :class:`Backend`, so a
backend swaps them in one place: ``backends/cupy_backend.py``.
"""
import contextlib
import importlib

import numpy as np

from .base import Backend, BackendUnavailable
from .host import HostBackend, core_cache_bytes
from .host_memory import keep_freed_memory

keep_freed_memory()
# 4 MB blocks: measured best on the conv layers of the zoo (L2-sized blocks lose BLAS
# speed), except where one buffer serves every block (inference): there the core's own
# cache (measured on a 512 KB L2: zoo inference at batch 1000 3-20% faster than 4 MB).
_BACKENDS = {"numpy": HostBackend("numpy", np, cache_block_bytes=4 << 20, buffer_block_bytes=core_cache_bytes())}
_current = [_BACKENDS["numpy"]]
_last_seed = [None]
# Lazily built backends: importing minitorch_cnn must never import CuPy.
_FACTORIES = {"cupy": "minitorch_cnn.backends.cupy_backend"}


def set_num_threads(threads):
    """Threads the NumPy backend computes with, its matrix products included
    (PyTorch's name); the default is every core this process may use."""
    _BACKENDS["numpy"].set_num_threads(threads)


def get_num_threads():
    return _BACKENDS["numpy"].threads


def get_backend_by_name(name):
    """Return the backend called ``name``, building it on first use."""
    if name not in _BACKENDS:
        if name not in _FACTORIES:
            raise ValueError(
                f"unknown backend {name!r}; choose one of {sorted(set(_BACKENDS) | set(_FACTORIES))}")
        module = importlib.import_module(_FACTORIES[name])
        _BACKENDS[name] = module.create()  # raises BackendUnavailable with the reason
        _BACKENDS[name].seed(_last_seed[0])
    return _BACKENDS[name]


def use_backend(name):
    """Make ``name`` ("numpy" or "cupy") the process default backend; return it."""
    _current[0] = get_backend_by_name(name)
    return _current[0]


def get_backend():
    """The active backend object (``.name``, ``.xp``)."""
    return _current[0]


@contextlib.contextmanager
def backend(name):
    """Scoped form of :func:`use_backend`: ``with mt.backend("cupy"): ...``."""
    previous = _current[0]
    use_backend(name)
    try:
        yield _current[0]
    finally:
        _current[0] = previous


def backend_of(array):
    """The backend that owns a raw array (NumPy arrays and scalars belong to "numpy")."""
    if isinstance(array, (np.ndarray, np.generic)):
        return _BACKENDS["numpy"]
    for b in _BACKENDS.values():
        if b.owns(array):
            return b
    raise TypeError(f"no backend owns an array of type {type(array).__module__}.{type(array).__name__}")


def get_array_module(array):
    """``xp`` for a raw array: ``numpy`` or ``cupy``."""
    return backend_of(array).xp


def seed_all(seed):
    """Seed every backend, and any built later, with ``seed``."""
    _last_seed[0] = seed
    for b in _BACKENDS.values():
        b.seed(seed)


def host_rng():
    """The NumPy generator that draws initial weights, so they match across backends."""
    return _BACKENDS["numpy"].rng

