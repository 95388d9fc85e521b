"""PyTorch side of the comparison: the zoo's twins in plain PyTorch (``reference.models``)
and weight conversion between the two frameworks (``reference.convert``, also a command:
``python -m reference.convert IN OUT``).

Import the submodules themselves; this package file imports nothing, so that running
``reference.convert`` as ``__main__`` does not also import it as a module first.
This package needs torch; the engine (``minitorch_cnn``) never imports it.
"""
