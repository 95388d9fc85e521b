"""The autograd engine: a :class:`Function` records itself on the graph; ``backward``
walks that graph once, in reverse topological order, without recursion.

Each op is a small subclass of :class:`Function` with ``forward`` on raw backend arrays
and ``backward`` from the output gradient(s) to one gradient per input (``None`` where
an input needs none). Whatever ``forward`` saves on ``self`` is dropped as soon as
``backward`` has used it, so a long graph frees its buffers as it unwinds.
"""
import contextlib

import numpy as np

from . import backends

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


class Function:
    """One node of the graph. Subclasses set ``forward(*arrays, **options)``, returning
    one array, and ``backward(grad)``, returning one gradient per input (or a single
    array for a one-input op); ``self.needs_grad[i]`` tells whether input i wants one."""

    def forward(self, *arrays, **options):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        from .tensor import Tensor, as_tensor

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


def backward(root, grad):
    """Accumulate d(root)/d(leaf) * grad into every leaf's ``.grad``."""
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
                key = id(t)
                grads[key] = ig if key not in grads else grads[key] + ig
        # Free what this node held: saved arrays and the graph behind it.
        tensor._ctx = None
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
