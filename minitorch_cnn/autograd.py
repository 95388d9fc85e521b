"""The autograd engine's names: :class:`Function` (one op: ``forward`` on raw backend
arrays, ``backward`` from the output's gradient to one per input), ``backward`` (the walk
over the graph, once, in reverse topological order, without recursion), ``no_grad`` and
``is_grad_enabled``.

They are defined in ``tensor.py``, beside ``Tensor``: a Function makes Tensors and a
Tensor's operators apply Functions, so one module holds both and nothing imports in a
circle. Ops elsewhere import them from here (``from ..autograd import Function``).
"""
from .tensor import Function, backward, is_grad_enabled, no_grad

__all__ = ["Function", "backward", "is_grad_enabled", "no_grad"]
