"""Fusion a user asks for: ``fuse_modules`` turns each BatchNorm2d -> ReLU (-> MaxPool2d)
into one visible :class:`BatchNormReLU2d`, in the spirit of PyTorch's
``torch.ao.quantization.fuse_modules``.

The fused module is one op (``F.fused_batch_norm`` with ``relu`` and ``pool``): the same
numbers as the modules one after the other, but a backend with a fused kernel (the
NumPy backend's C kernels) normalises each value as the pool reads it and never stores
the full-size activation between them. The train command fuses its model by default.
"""
import copy

from .modules import BatchNorm2d, Identity, MaxPool2d, Module, ReLU, Sequential


class BatchNormReLU2d(BatchNorm2d):
    """A BatchNorm2d, then a ReLU and, with ``max_pool``, then that MaxPool2d, as one op.

    It takes over ``batch_norm``'s parameters and buffers (the same tensors, under the
    same names), so the model's ``state_dict`` keys stay PyTorch's and an optimizer made
    before the fusion keeps training the same parameters."""

    def __init__(self, batch_norm, max_pool=None):
        Module.__init__(self)
        for name, value in vars(batch_norm).items():
            if name in ("_parameters", "_buffers"):
                getattr(self, name).update(value)
            elif name != "_modules":
                object.__setattr__(self, name, value)
        self.max_pool = max_pool

    def forward(self, x):
        return self._normalise(x, relu=True, pool=self.max_pool)


def fuse_modules(model, modules_to_fuse=None, inplace=False):
    """Fuse each group of ``modules_to_fuse``, a list of lists of dotted module names such
    as ``[["features.1", "features.2", "features.3"]]``: a BatchNorm2d, a ReLU and
    optionally a MaxPool2d, one after the other. The first becomes a
    :class:`BatchNormReLU2d`, the others ``nn.Identity``. Without ``modules_to_fuse``,
    every such run inside an ``nn.Sequential`` is fused. Returns the fused model: a copy
    unless ``inplace``."""
    model = model if inplace else copy.deepcopy(model)
    groups = _fusable_runs(model) if modules_to_fuse is None else [list(g) for g in modules_to_fuse]
    for names in groups:
        modules = [model.get_submodule(name) for name in names]
        if not _is_fusable(modules):
            kinds = ", ".join(f"{n} ({type(m).__name__})" for n, m in zip(names, modules))
            raise ValueError(f"fuse_modules: expected a BatchNorm2d, a ReLU and optionally a MaxPool2d, got {kinds}")
        _replace(model, names[0], BatchNormReLU2d(modules[0], modules[2] if len(modules) == 3 else None))
        for name in names[1:]:
            _replace(model, name, Identity())
    return model


def _fusable_runs(model):
    """The dotted names of every BatchNorm2d -> ReLU (-> MaxPool2d) inside a Sequential."""
    runs = []
    for prefix, module in model.named_modules():
        if not isinstance(module, Sequential):
            continue
        names = list(module._modules)
        i = 0
        while i < len(names):
            size = next((size for size in (3, 2) if i + size <= len(names)
                         and _is_fusable([module._modules[n] for n in names[i:i + size]])), 1)
            if size > 1:
                runs.append([f"{prefix}.{n}" if prefix else n for n in names[i:i + size]])
            i += size
    return runs


def _is_fusable(modules):
    """A plain BatchNorm2d and ReLU, then optionally a plain MaxPool2d: the classes as the
    engine defines them (not subclasses, no forward of their own), which the fused op
    computes exactly."""
    kinds = (BatchNorm2d, ReLU, MaxPool2d)
    return (len(modules) in (2, 3) and all(type(m) is k and "forward" not in vars(m) for m, k in zip(modules, kinds))
            and (len(modules) == 2 or _plain_pool(modules[2])))


def _plain_pool(pool):
    """A max pool the fused op takes: no dilation, floor mode, no indices returned."""
    return pool.dilation in (1, (1, 1)) and not pool.ceil_mode and not pool.return_indices


def _replace(model, name, new):
    parent, _, child = name.rpartition(".")
    model.get_submodule(parent)._modules[child] = new
