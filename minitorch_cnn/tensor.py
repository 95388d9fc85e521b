"""``Tensor``: a raw backend array plus the autograd bookkeeping, and the elementary
differentiable ops behind its operators and methods."""
import numbers

import numpy as np

from . import autograd, backends
from .autograd import Function

DEFAULT_FLOAT = np.float32


class Tensor:
    __array_priority__ = 1000  # numpy scalars on the left defer to our operators

    def __init__(self, data, requires_grad=False):
        self.data = data
        self.requires_grad = requires_grad
        self.grad = None
        self._ctx = None

    # ---- description ------------------------------------------------------------
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    backend = property(lambda self: backends.backend_of(self.data))

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({self.numpy()!r}, backend={self.backend.name!r}{grad})"

    def numel(self):
        return int(self.data.size)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    # ---- conversion -------------------------------------------------------------
    def numpy(self):
        """A NumPy array (copied from the GPU where needed)."""
        return self.backend.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor of one element, this one has shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self):
        return Tensor(self.data)

    def to(self, name):
        """This tensor's values on backend ``name`` (a copy, or self if already there)."""
        target = backends.get_backend_by_name(name)
        if target is self.backend:
            return self
        return Tensor(target.asarray(self.numpy()), requires_grad=self.requires_grad)

    # ---- autograd -----------------------------------------------------------------
    def backward(self, grad=None):
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar; this tensor has shape {self.shape}")
            grad = self.backend.xp.ones_like(self.data)
        else:
            grad = as_tensor(grad, self).data
            if grad.shape != self.data.shape:
                raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")
        autograd.backward(self, grad)

    def _accumulate(self, g):
        if g.shape != self.data.shape:
            g = g.reshape(self.data.shape)
        if self.grad is None:
            # Own the buffer: later steps accumulate into it in place.
            self.grad = Tensor(g.astype(self.data.dtype, copy=True, order="C"))
        else:
            self.grad.data += g

    def zero_grad(self):
        self.grad = None

    # ---- operators ----------------------------------------------------------------
    def __add__(self, other): return Add.apply(self, other)
    def __radd__(self, other): return Add.apply(other, self)
    def __sub__(self, other): return Sub.apply(self, other)
    def __rsub__(self, other): return Sub.apply(other, self)
    def __mul__(self, other): return Mul.apply(self, other)
    def __rmul__(self, other): return Mul.apply(other, self)
    def __truediv__(self, other): return Div.apply(self, other)
    def __rtruediv__(self, other): return Div.apply(other, self)
    def __matmul__(self, other): return MatMul.apply(self, other)
    def __rmatmul__(self, other): return MatMul.apply(other, self)
    def __pow__(self, other): return Pow.apply(self, other)
    def __rpow__(self, other): return Pow.apply(other, self)
    def __neg__(self): return Neg.apply(self)
    def __getitem__(self, index): return GetItem.apply(self, index=_raw_index(index))

    # Comparisons give plain (non-differentiable) boolean tensors.
    def __eq__(self, other): return Tensor(self.data == _raw(other))
    def __ne__(self, other): return Tensor(self.data != _raw(other))
    def __lt__(self, other): return Tensor(self.data < _raw(other))
    def __le__(self, other): return Tensor(self.data <= _raw(other))
    def __gt__(self, other): return Tensor(self.data > _raw(other))
    def __ge__(self, other): return Tensor(self.data >= _raw(other))
    __hash__ = object.__hash__

    # ---- methods -------------------------------------------------------------------
    def sum(self, dim=None, keepdim=False): return Sum.apply(self, dim=dim, keepdim=keepdim)

    def mean(self, dim=None, keepdim=False):
        count = self.data.size if dim is None else int(np.prod([self.shape[d] for d in _dims(dim)]))
        return Sum.apply(self, dim=dim, keepdim=keepdim) / count

    def max(self, dim=None, keepdim=False):
        """Without ``dim``, the maximum; with it, ``(values, indices)`` as in PyTorch."""
        if dim is None:
            return Max.apply(self, dim=None, keepdim=False)
        return Max.apply(self, dim=dim, keepdim=keepdim), self.argmax(dim, keepdim)

    def argmax(self, dim=None, keepdim=False):
        xp = self.backend.xp
        if dim is None:
            return Tensor(xp.argmax(self.data).astype(np.int64))
        idx = xp.argmax(self.data, axis=dim).astype(np.int64)
        return Tensor(xp.expand_dims(idx, dim) if keepdim else idx)

    def reshape(self, *shape): return Reshape.apply(self, shape=_shape_arg(shape))
    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        end = end_dim % self.ndim
        shape = self.shape[:start_dim] + (-1,) + self.shape[end + 1:]
        return self.reshape(*shape)

    def transpose(self, dim0, dim1):
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return Permute.apply(self, axes=tuple(axes))

    def permute(self, *dims): return Permute.apply(self, axes=_shape_arg(dims))

    @property
    def T(self):
        return Permute.apply(self, axes=tuple(reversed(range(self.ndim))))

    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def relu(self):
        from .nn.functional import relu
        return relu(self)


# ---- creation -------------------------------------------------------------------------
def _default_dtype(array):
    """PyTorch's rule: Python floats become float32; integers and arrays keep theirs."""
    return DEFAULT_FLOAT if array.dtype == np.float64 else None


def tensor(data, requires_grad=False, dtype=None):
    """A new tensor (a copy). Lists and NumPy arrays go to the active backend (so one
    training loop serves both); an array of another backend (CuPy) stays where it is."""
    if isinstance(data, Tensor):
        data = data.data
    try:
        owner = backends.backend_of(data).name
    except TypeError:  # a list, tuple or Python scalar
        owner = None
    if owner in (None, "numpy"):
        host = np.asarray(data)
        keep_dtype = isinstance(data, np.ndarray)
        array = backends.get_backend().asarray(host, dtype=dtype or (None if keep_dtype else _default_dtype(host)))
        if backends.get_array_module(array) is np and np.shares_memory(array, host):
            array = array.copy()
    else:
        array = backends.get_backend_by_name(owner).xp.array(data, dtype=dtype, copy=True)
    if requires_grad and array.dtype.kind != "f":
        raise TypeError(f"only floating-point tensors can require grad, not {array.dtype}")
    return Tensor(array, requires_grad=requires_grad)


def as_tensor(value, like=None):
    """``value`` as a Tensor; a Python or NumPy scalar takes the dtype and backend of ``like``."""
    if isinstance(value, Tensor):
        return value
    if like is not None and isinstance(value, (numbers.Number, np.generic)):
        return Tensor(like.backend.xp.asarray(value, dtype=like.dtype))
    return tensor(value)


def _creator(fill):
    def create(*shape, dtype=DEFAULT_FLOAT, requires_grad=False):
        b = backends.get_backend()
        return Tensor(fill(b, _shape_arg(shape), dtype), requires_grad=requires_grad)
    return create


zeros = _creator(lambda b, shape, dtype: b.xp.zeros(shape, dtype=dtype))
ones = _creator(lambda b, shape, dtype: b.xp.ones(shape, dtype=dtype))
randn = _creator(lambda b, shape, dtype: b.rng.standard_normal(shape, dtype=dtype))
rand = _creator(lambda b, shape, dtype: b.random(shape, dtype))


def manual_seed(seed):
    """Seed every backend's generator (NumPy's also draws the initial weights)."""
    backends.seed_all(seed)


# ---- argument helpers ----------------------------------------------------------------
def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def _dims(dim):
    return dim if isinstance(dim, (tuple, list)) else (dim,)


def _raw(value):
    return value.data if isinstance(value, Tensor) else value


def _raw_index(index):
    if isinstance(index, tuple):
        return tuple(_raw(i) for i in index)
    return _raw(index)


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


# ---- elementary differentiable ops ----------------------------------------------------
class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(-g, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        a, b = self.a, self.b
        return (unbroadcast(g * b, a.shape) if self.needs_grad[0] else None,
                unbroadcast(g * a, b.shape) if self.needs_grad[1] else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        a, b = self.a, self.b
        ga = g / b
        return (unbroadcast(ga, a.shape) if self.needs_grad[0] else None,
                unbroadcast(-ga * a / b, b.shape) if self.needs_grad[1] else None)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Pow(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a ** b
        return self.out

    def backward(self, g):
        a, b = self.a, self.b
        ga = unbroadcast(g * b * a ** (b - 1), a.shape) if self.needs_grad[0] else None
        gb = None
        if self.needs_grad[1]:
            gb = unbroadcast(g * self.out * backends.get_array_module(a).log(a), b.shape)
        return ga, gb


class Exp(Function):
    def forward(self, a):
        self.out = backends.get_array_module(a).exp(a)
        return self.out

    def backward(self, g):
        return g * self.out


class Log(Function):
    def forward(self, a):
        self.a = a
        return backends.get_array_module(a).log(a)

    def backward(self, g):
        return g / self.a


class MatMul(Function):
    """``a @ b`` for 1-D and 2-D operands and batched (broadcast) stacks of matrices."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return backends.backend_of(a).matmul(a, b)

    def backward(self, g):
        be = backends.backend_of(g)
        xp = be.xp
        a, b = self.a, self.b
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        ga = gb = None
        if self.needs_grad[0]:
            ga = unbroadcast(be.matmul(g2, xp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if self.needs_grad[1]:
            gb = unbroadcast(be.matmul(xp.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
        return ga, gb


class Sum(Function):
    def forward(self, a, dim, keepdim):
        self.shape, self.dim, self.keepdim = a.shape, dim, keepdim
        return a.sum(axis=_axis(dim), keepdims=keepdim)

    def backward(self, g):
        xp = backends.get_array_module(g)
        if self.dim is not None and not self.keepdim:
            g = xp.expand_dims(g, tuple(d % len(self.shape) for d in _dims(self.dim)))
        return xp.broadcast_to(g, self.shape)


class Max(Function):
    """Maximum over ``dim`` (or everything); the gradient is shared among equal maxima."""

    def forward(self, a, dim, keepdim):
        self.a, self.dim, self.keepdim = a, dim, keepdim
        self.out = a.max(axis=dim, keepdims=True)  # kept dims broadcast in backward
        if dim is None:
            return self.out.reshape(())
        return self.out if keepdim else self.out.squeeze(axis=dim)

    def backward(self, g):
        xp = backends.get_array_module(g)
        mask = self.a == self.out
        if self.dim is None:
            # PyTorch's max() of everything spreads the gradient evenly over ties.
            return mask * (g / mask.sum(dtype=g.dtype))  # not an int64 sum: g would go float64
        if not self.keepdim:
            g = xp.expand_dims(g, self.dim)
        # max(dim) routes to the index argmax picks: the first maximum.
        first = xp.cumsum(mask, axis=self.dim, dtype=np.int32) == 1  # not int64: half the memory
        return g * (mask & first)


class Reshape(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, g):
        return g.reshape(self.shape)


class Permute(Function):
    def forward(self, a, axes):
        self.axes = axes
        return a.transpose(axes)

    def backward(self, g):
        return g.transpose(np.argsort(self.axes))


class GetItem(Function):
    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, g):
        xp = backends.get_array_module(g)
        out = xp.zeros(self.shape, dtype=self.dtype)
        if _is_advanced(self.index):
            xp.add.at(out, self.index, g)  # repeated indices accumulate
        else:
            out[self.index] = g
        return out


def _is_advanced(index):
    items = index if isinstance(index, tuple) else (index,)
    return any(not isinstance(i, (slice, int, type(None), type(Ellipsis))) for i in items)


def _axis(dim):
    return tuple(dim) if isinstance(dim, list) else dim
