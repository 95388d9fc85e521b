"""The frameworks a benchmark runs on, behind one small adapter each.

minitorch_cnn mirrors PyTorch's API, so a workload (a training step, a layer call) is
written once against an adapter's ``F`` (the functional module), ``optim``, ``tensor``,
``no_grad`` and ``synchronize``, and runs unchanged on:

- ``ours-numpy`` / ``ours-cupy``: minitorch_cnn on its NumPy or CuPy backend;
- ``torch-cpu`` / ``torch-cuda``: PyTorch on the CPU or the GPU.

:func:`get_framework` raises :class:`FrameworkUnavailable` with the reason where one
cannot run here (no GPU, CuPy or torch missing), so a benchmark can skip with it.

Every framework starts from the same weights: a zoo model is built once by the engine
with a fixed seed and its ``state_dict`` is loaded into each framework's copy (ours ->
torch through ``reference.convert.to_torch``). Inputs are NumPy arrays copied onto
each framework's device once, before any timing.

This module imports NumPy only; the engine, torch and CuPy load when a framework is
first asked for, so the report command works without them.
"""
import functools

import numpy as np

CPU_FRAMEWORKS = ("ours-numpy", "torch-cpu")
GPU_FRAMEWORKS = ("ours-cupy", "torch-cuda")
FRAMEWORKS = CPU_FRAMEWORKS + GPU_FRAMEWORKS
#: (ours, PyTorch) on the same device: the comparisons a report makes.
PAIRS = (("ours-numpy", "torch-cpu"), ("ours-cupy", "torch-cuda"))

#: ``ModelSpec.loss`` -> the functional both frameworks name it by.
LOSS_FUNCTIONS = {"nll": "nll_loss", "cross_entropy": "cross_entropy"}
INIT_SEED = 0


class FrameworkUnavailable(RuntimeError):
    """A framework cannot run on this machine; the message says why."""


class Ours:
    """minitorch_cnn on one of its backends ("numpy" or "cupy")."""

    def __init__(self, backend_name):
        import minitorch_cnn as mt
        from minitorch_cnn import backends

        self.name = f"ours-{backend_name}"
        try:
            self.backend = backends.get_backend_by_name(backend_name)
        except mt.BackendUnavailable as err:
            raise FrameworkUnavailable(f"{self.name}: {err}") from None
        self._tensor_type = mt.Tensor
        self.F = mt.nn.functional
        self.optim = mt.optim
        self.no_grad = mt.no_grad

    def tensor(self, array, requires_grad=False):
        """A copy of the NumPy ``array`` on this framework's device, dtype kept."""
        return self._tensor_type(self.backend.asarray(np.array(array, copy=True)), requires_grad)

    def synchronize(self):
        self.backend.synchronize()

    def model(self, name, state):
        from minitorch_cnn.models import get_model
        from minitorch_cnn.nn import fuse_modules

        model = fuse_modules(get_model(name), inplace=True)  # as the train command runs it
        model.load_state_dict(state)
        return model.to(self.backend.name)


class Torch:
    """PyTorch on "cpu" or "cuda"."""

    def __init__(self, device):
        self.name = f"torch-{device}"
        try:
            import torch
        except ImportError:
            raise FrameworkUnavailable(
                f"{self.name}: torch is not installed (pip install -e '.[reference]')") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise FrameworkUnavailable(f"{self.name}: torch.cuda.is_available() is False (no CUDA GPU or driver)")
        self._torch = torch
        self.device = torch.device(device)
        self.F = torch.nn.functional
        self.optim = torch.optim
        self.no_grad = torch.no_grad

    def tensor(self, array, requires_grad=False):
        return self._torch.tensor(array, device=self.device, requires_grad=requires_grad)

    def synchronize(self):
        if self.device.type == "cuda":
            self._torch.cuda.synchronize()

    def model(self, name, state):
        from reference.convert import to_torch
        from reference.models import get_torch_model

        model = get_torch_model(name)
        model.load_state_dict(to_torch(state))
        return model.to(self.device)


_ADAPTERS = {"ours-numpy": (Ours, "numpy"), "ours-cupy": (Ours, "cupy"),
             "torch-cpu": (Torch, "cpu"), "torch-cuda": (Torch, "cuda")}


@functools.lru_cache(maxsize=None)
def get_framework(name):
    """The adapter called ``name`` (one of :data:`FRAMEWORKS`); raises
    :class:`FrameworkUnavailable` if it cannot run here (not cached: a retry re-checks)."""
    if name not in _ADAPTERS:
        raise ValueError(f"unknown framework {name!r}; choose one of {', '.join(FRAMEWORKS)}")
    cls, arg = _ADAPTERS[name]
    return cls(arg)


@functools.lru_cache(maxsize=None)
def initial_state(model_name):
    """The zoo model's initial weights (NumPy ``state_dict``), drawn once by the engine
    with a fixed seed, which every framework's copy then loads."""
    import minitorch_cnn as mt
    from minitorch_cnn.models import get_model

    mt.manual_seed(INIT_SEED)
    return get_model(model_name).state_dict()


def make_optimizer(framework, spec, parameters):
    """The spec's optimizer with its hyper-parameters, in ``framework``."""
    if spec.optimizer == "sgd":
        return framework.optim.SGD(parameters, lr=spec.lr, momentum=spec.momentum)
    if spec.optimizer == "adam":
        return framework.optim.Adam(parameters, lr=spec.lr)
    raise ValueError(f"model {spec.name!r}: unknown optimizer {spec.optimizer!r}; expected 'sgd' or 'adam'")


def loss_function(framework, spec):
    try:
        return getattr(framework.F, LOSS_FUNCTIONS[spec.loss])
    except KeyError:
        raise ValueError(f"model {spec.name!r}: unknown loss {spec.loss!r}; "
                         f"expected one of {', '.join(LOSS_FUNCTIONS)}") from None


def train_step(framework, spec, x, y):
    """A function running one full training step of zoo model ``spec`` on the batch
    ``(x, y)`` (NumPy arrays): zero_grad, forward, loss, backward, optimizer step, then
    a device synchronisation so that GPU timings include the queued work."""
    model = framework.model(spec.name, initial_state(spec.name)).train()
    optimizer = make_optimizer(framework, spec, model.parameters())
    loss_fn = loss_function(framework, spec)
    x, y = framework.tensor(x), framework.tensor(y)

    def step():
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        framework.synchronize()

    return step


def inference(framework, spec, x):
    """A function running zoo model ``spec`` in eval mode, without a graph, on ``x``."""
    model = framework.model(spec.name, initial_state(spec.name)).eval()
    x = framework.tensor(x)

    def infer():
        with framework.no_grad():
            model(x)
        framework.synchronize()

    return infer
