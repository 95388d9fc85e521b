"""minitorch_cnn: a from-scratch deep-learning engine for convolutional networks.

One code path runs on NumPy (CPU) or CuPy (GPU); names and signatures follow PyTorch.
Importing it imports NumPy alone: CuPy only when the "cupy" backend is asked for.
"""
from . import data
from .autograd import is_grad_enabled, no_grad
from .backends import (BackendUnavailable, backend, get_backend, get_num_threads,
                       set_num_threads, use_backend)
from .tensor import Tensor, manual_seed, maximum, minimum, ones, rand, randn, tensor, zeros
from . import nn, optim  # noqa: E402  (they build on the names above)

__version__ = "0.1.0"

__all__ = ["Tensor", "tensor", "zeros", "ones", "rand", "randn", "manual_seed", "maximum", "minimum",
           "no_grad", "is_grad_enabled", "use_backend", "get_backend", "backend", "BackendUnavailable",
           "set_num_threads", "get_num_threads",
           "nn", "optim", "data"]
