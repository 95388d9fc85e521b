"""The core of the engine: ``Tensor`` (a raw backend array plus its place on the
graph), the :class:`Function` that records each op on that graph, ``backward`` that walks
it, and the elementary differentiable ops behind the operators and methods.

``Function`` lives here, beside ``Tensor``, as in tinygrad: each needs the other, and one
module holds both, so the package imports in one direction (backends -> tensor ->
autograd, nn -> ...). ``minitorch_cnn.autograd`` re-exports the autograd names.
"""
import contextlib
import math
import numbers
from collections import namedtuple

import numpy as np

from . import backends

DEFAULT_FLOAT = np.float32


# ---- grad mode ---------------------------------------------------------------------------
_grad_enabled = [True]


def is_grad_enabled():
    return _grad_enabled[0]


@contextlib.contextmanager
def no_grad():
    """Record no graph inside the block (evaluation, optimizer updates)."""
    previous = _grad_enabled[0]
    _grad_enabled[0] = False
    try:
        yield
    finally:
        _grad_enabled[0] = previous


# ---- Function: one node of the graph ------------------------------------------------------
class Function:
    """One node of the graph. Subclasses set ``forward(*arrays, **options)``, returning
    one array, and ``backward(grad)``, returning one gradient per input (or a single
    array for a one-input op), each of its input's shape; ``self.needs_grad[i]`` tells
    whether input i wants one. Whatever ``forward`` saves on ``self`` is dropped as soon
    as ``backward`` has used it (unless ``retain_graph``), so a long graph frees its
    buffers as it unwinds."""

    def forward(self, *arrays, **options):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        like = next((t for t in inputs if isinstance(t, Tensor)), None)
        tensors = [as_tensor(t, like) for t in inputs]
        arrays = [t.data for t in tensors]
        _check_same_backend(arrays)
        fn = cls()
        # Under no_grad nothing needs a gradient, so forward saves nothing for backward.
        fn.needs_grad = [t.requires_grad and is_grad_enabled() for t in tensors]
        record = any(fn.needs_grad)
        out = fn.forward(*arrays, **options)
        if not hasattr(out, "ndim") or isinstance(out, np.generic):
            out = np.asarray(out)  # NumPy reductions give scalars; a Tensor holds an array
        result = Tensor(out, requires_grad=record)
        if record:
            fn.inputs = tensors
            result._ctx = fn
        return result


def _check_same_backend(arrays):
    names = {backends.backend_of(a).name for a in arrays}
    if len(names) > 1:
        raise RuntimeError(
            f"an op got tensors of two backends ({' and '.join(sorted(names))}); "
            "move them to one with .to(name) first")


class _FreedNode:
    """The node of a tensor whose graph a ``backward()`` has already walked and freed:
    a second walk through it raises, as in PyTorch, instead of treating the tensor as a
    leaf. It holds nothing, so the freed graph's memory is released."""

    inputs = ()

    def backward(self, grad):
        raise RuntimeError(
            "Trying to backward through the graph a second time (or directly access saved tensors "
            "after they have already been freed): call backward(retain_graph=True) the first time "
            "to backward through the graph again")


_FREED = _FreedNode()


def backward(root, grad, retain_graph=False):
    """Accumulate d(root)/d(leaf) * grad into every leaf's ``.grad``; free the graph
    behind ``root`` unless ``retain_graph``."""
    order = _topological_order(root)
    grads = {id(root): grad}
    for tensor in order:
        g = grads.pop(id(tensor), None)
        fn = tensor._ctx
        if fn is None:  # a leaf
            if g is not None and tensor.requires_grad:
                tensor._accumulate(g)
            continue
        if g is None:
            continue
        in_grads = fn.backward(g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for t, ig, needs in zip(fn.inputs, in_grads, fn.needs_grad):
            if needs and ig is not None:
                if ig.shape != t.data.shape:  # a bug in fn.backward: never reshaped to fit
                    raise RuntimeError(f"{type(fn).__name__}.backward returned a gradient of shape "
                                       f"{tuple(ig.shape)} for an input of shape {t.shape}")
                key = id(t)
                grads[key] = ig if key not in grads else grads[key] + ig
        if not retain_graph:
            # Free what this node held: saved arrays and the graph behind it.
            tensor._ctx = _FREED
            fn.__dict__.clear()
    return None


def _topological_order(root):
    """Tensors from root back to the leaves, each after every tensor that uses it."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._ctx is not None:
            for t in tensor._ctx.inputs:
                if t.requires_grad and id(t) not in visited:
                    stack.append((t, False))
    order.reverse()
    return order


# ---- Tensor ------------------------------------------------------------------------------
# What max(dim) and min(dim) return, as PyTorch's torch.return_types.
MaxMin = namedtuple("MaxMin", ["values", "indices"])


class Tensor:
    __array_priority__ = 1000  # numpy scalars on the left defer to our operators

    def __init__(self, data, requires_grad=False):
        self.data = data
        self.requires_grad = requires_grad
        self.grad = None
        self._ctx = None  # the Function that made it: None for a leaf, _FREED after backward

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
    def backward(self, grad=None, retain_graph=False):
        """Accumulate this tensor's gradient into every leaf's ``.grad``. The graph is
        freed on the way; ``retain_graph=True`` keeps it for another backward()."""
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
        backward(self, grad, retain_graph)

    def _accumulate(self, g):
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
    def sum(self, dim=None, keepdim=False):
        return Sum.apply(self, dims=_dims(dim, self.ndim), keepdim=keepdim)

    def mean(self, dim=None, keepdim=False):
        dims = _dims(dim, self.ndim)
        count = self.data.size if dims is None else math.prod(self.shape[d] for d in dims)
        total = Sum.apply(self, dims=dims, keepdim=keepdim)
        return total / count if count else total * float("nan")  # the mean of nothing: NaN

    def max(self, dim=None, keepdim=False):
        """Without ``dim``, the maximum; with it, ``(values, indices)`` as in PyTorch;
        with a tensor, the elementwise :func:`maximum`."""
        if isinstance(dim, Tensor):
            return maximum(self, dim)
        return _extreme(self, "max", dim, keepdim)

    def min(self, dim=None, keepdim=False):
        """As :meth:`max`, for the minimum."""
        if isinstance(dim, Tensor):
            return minimum(self, dim)
        return _extreme(self, "min", dim, keepdim)

    def maximum(self, other): return maximum(self, other)
    def minimum(self, other): return minimum(self, other)

    def argmax(self, dim=None, keepdim=False): return _arg_extreme(self, "argmax", dim, keepdim)
    def argmin(self, dim=None, keepdim=False): return _arg_extreme(self, "argmin", dim, keepdim)

    def reshape(self, *shape): return Reshape.apply(self, shape=_shape_arg(shape))
    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        start, end = wrap_dim(start_dim, self.ndim), wrap_dim(end_dim, self.ndim)
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        shape = self.shape
        # The flattened size spelled out (not -1): an empty tensor's would be ambiguous.
        return self.reshape(shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:])

    def transpose(self, dim0, dim1):
        dim0, dim1 = wrap_dim(dim0, self.ndim), wrap_dim(dim1, self.ndim)
        axes = list(range(self.ndim))
        if axes:  # a 0-d tensor is its own transpose
            axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return Permute.apply(self, axes=tuple(axes))

    def permute(self, *dims): return Permute.apply(self, axes=_shape_arg(dims))

    @property
    def T(self):
        return Permute.apply(self, axes=tuple(reversed(range(self.ndim))))

    def masked_fill(self, mask, value):
        """A copy with ``value`` where the boolean ``mask`` (broadcast) is true; no
        gradient flows there, even an inf or NaN one."""
        return MaskedFill.apply(self, mask=_raw(mask), value=value)

    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def relu(self): return ReLU.apply(self)


def maximum(input, other):
    """Elementwise maximum (NaN wins, as in PyTorch)."""
    return Maximum.apply(input, other, larger=True)


def minimum(input, other):
    """Elementwise minimum (NaN wins, as in PyTorch)."""
    return Maximum.apply(input, other, larger=False)


def _extreme(x, name, dim, keepdim):
    """``x.max()`` / ``x.min()`` (``name``) of everything, or ``(values, indices)`` along ``dim``."""
    if dim is None:
        if x.data.size == 0:
            raise RuntimeError(f"{name}() of an empty tensor: give the dim to reduce along")
        return Extreme.apply(x, name=name, dim=None, keepdim=False)
    dim = wrap_dim(dim, x.ndim)
    if x.ndim and x.shape[dim] == 0:
        raise IndexError(f"{name}(): dim {dim} of shape {x.shape} is empty, and {name} has no identity")
    # A 0-d tensor is its own max along dim 0; keepdim leaves it 0-d, as in PyTorch.
    values = Extreme.apply(x, name=name, dim=dim if x.ndim else None, keepdim=keepdim)
    return MaxMin(values, _arg_extreme(x, "arg" + name, dim, keepdim))


def _arg_extreme(x, name, dim, keepdim):
    """``argmax`` / ``argmin`` (``name``): int64 indices, of everything or along ``dim``."""
    xp = x.backend.xp
    if dim is None:
        return Tensor(getattr(xp, name)(x.data).astype(np.int64))
    dim = wrap_dim(dim, x.ndim)
    if x.ndim == 0:
        return Tensor(xp.zeros((), dtype=np.int64))
    idx = getattr(xp, name)(x.data, axis=dim).astype(np.int64)
    return Tensor(xp.expand_dims(idx, dim) if keepdim else idx)


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
        if host.dtype.kind not in "biufc":  # strings, objects, dates: as torch.tensor
            raise TypeError(f"tensor(): can't make a tensor of {host.dtype} data; "
                            "only numbers and booleans are supported")
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


def wrap_dim(dim, ndim):
    """``dim`` as a non-negative axis of an ``ndim``-D tensor; a 0-d tensor takes 0 and
    -1, as PyTorch's ``maybe_wrap_dim``."""
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-size}, {size - 1}], "
                         f"but got {dim})")
    return dim % size


def _dims(dim, ndim):
    """``dim`` (an int or a sequence of them) as a tuple of non-negative axes; none for
    a 0-d tensor, whose only dim names the whole of it. None, or no dims at all, means
    every dim (returned as None), as PyTorch's sum and mean."""
    if dim is None or (isinstance(dim, (tuple, list)) and not dim):
        return None
    dims = tuple(wrap_dim(d, ndim) for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"dim {dim!r}: a dim appears more than once")
    return dims if ndim else ()


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
    """``a ** b``. As PyTorch, the gradients are 0 (not NaN or inf) where they vanish in
    the limit: the base's where ``b == 0``, the exponent's where ``a == 0`` and ``b >= 0``;
    NaN and inf elsewhere (a negative base's log) pass silently, as in PyTorch."""

    def forward(self, a, b):
        self.a, self.b = a, b
        with np.errstate(divide="ignore", invalid="ignore"):
            self.out = a ** b
        return self.out

    def backward(self, g):
        xp = backends.get_array_module(g)
        a, b = self.a, self.b
        ga = gb = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.needs_grad[0]:
                ga = unbroadcast(xp.where(b == 0, 0, g * b * a ** (b - 1)), a.shape)
            if self.needs_grad[1]:
                vanishes = (a == 0) & (b >= 0)
                gb = unbroadcast(xp.where(vanishes, 0, g * self.out * xp.log(xp.where(vanishes, 1, a))), b.shape)
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
        if a.ndim == 0 or b.ndim == 0:
            raise RuntimeError(f"matmul: both operands need at least 1 dim, got shapes {a.shape} and {b.shape}")
        self.a, self.b = a, b
        return backends.backend_of(a).matmul(a, b)

    def backward(self, g):
        be = backends.backend_of(g)
        xp = be.xp
        a, b = self.a, self.b
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # g with the dims that 1-D operands dropped put back (a vector . vector is 0-d).
        g2 = g.reshape(1, 1) if a.ndim == 1 and b.ndim == 1 else g
        if a.ndim == 1 and b.ndim > 1:
            g2 = xp.expand_dims(g2, -2)
        if b.ndim == 1 and a.ndim > 1:
            g2 = xp.expand_dims(g2, -1)
        ga = gb = None
        if self.needs_grad[0]:
            ga = unbroadcast(be.matmul(g2, xp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if self.needs_grad[1]:
            gb = unbroadcast(be.matmul(xp.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
        return ga, gb


class Sum(Function):
    """Sum over ``dims`` (non-negative axes, from ``_dims``) or, for None, everything."""

    def forward(self, a, dims, keepdim):
        self.shape, self.dims, self.keepdim = a.shape, dims, keepdim
        return a.sum(axis=dims, keepdims=keepdim)

    def backward(self, g):
        xp = backends.get_array_module(g)
        if self.dims and not self.keepdim:
            g = xp.expand_dims(g, self.dims)
        return xp.broadcast_to(g, self.shape)


class Extreme(Function):
    """Maximum or minimum (``name``) over ``dim`` or everything; the gradient is shared
    among equal extremes."""

    def forward(self, a, name, dim, keepdim):
        self.a, self.dim, self.keepdim = a, dim, keepdim
        self.out = getattr(a, name)(axis=dim, keepdims=True)  # kept dims broadcast in backward
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
        # max(dim) routes to the index argmax picks: the first extreme.
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
        out = a.transpose(axes)  # checks axes: one per dim, each once, negative ones counted from the end
        self.inverse = [0] * a.ndim
        for i, axis in enumerate(axes):
            self.inverse[axis % a.ndim] = i
        return out

    def backward(self, g):
        return g.transpose(self.inverse)


class Maximum(Function):
    """Elementwise maximum (``larger``) or minimum: the gradient goes to the winner,
    half to each where the two are equal, and to both where either is NaN (PyTorch)."""

    def forward(self, a, b, larger):
        self.a, self.b, self.larger = a, b, larger
        xp = backends.get_array_module(a)
        return (xp.maximum if larger else xp.minimum)(a, b)

    def backward(self, g):
        xp = backends.get_array_module(g)
        a, b = self.a, self.b
        shared = xp.where(a == b, g / 2, g)
        a_loses, b_loses = (a < b, a > b) if self.larger else (a > b, a < b)
        return (unbroadcast(xp.where(a_loses, 0, shared), a.shape) if self.needs_grad[0] else None,
                unbroadcast(xp.where(b_loses, 0, shared), b.shape) if self.needs_grad[1] else None)


class MaskedFill(Function):
    def forward(self, a, mask, value):
        self.mask = mask
        xp = backends.get_array_module(a)
        return xp.where(mask, xp.asarray(value, dtype=a.dtype), a)

    def backward(self, g):
        return backends.get_array_module(g).where(self.mask, 0, g)


class Cast(Function):
    """The input as ``dtype``; the gradient comes back in the input's dtype."""

    def forward(self, a, dtype):
        self.dtype = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return g.astype(self.dtype)


class ReLU(Function):
    """``max(x, 0)`` by the backend's ``relu``; backward by its ``relu_backward`` from the
    output. Here, beside Tensor, for ``Tensor.relu``; ``nn.functional.relu`` is this op."""

    def forward(self, x):
        self.out = backends.backend_of(x).relu(x)
        return self.out

    def backward(self, g):
        return backends.backend_of(g).relu_backward(g, self.out)


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

