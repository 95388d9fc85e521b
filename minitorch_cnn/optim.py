"""SGD and Adam with PyTorch's update rules, step for step, and its state_dict layout."""
import math

import numpy as np

from . import backends
from .tensor import Tensor


def _check_at_least_zero(what, value):
    """PyTorch's check and message; ``not 0 <= value`` also turns NaN away."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def _type_name(obj):
    """As ``torch.typename`` names a non-tensor: ``float``, ``minitorch_cnn.tensor.Tensor``."""
    module, name = type(obj).__module__, type(obj).__qualname__
    return name if module == "builtins" else f"{module}.{name}"


class Optimizer:
    """Parameter groups, the argument checks and ``state_dict`` layout of PyTorch's
    ``torch.optim.Optimizer``; subclasses give ``defaults``, ``_validate`` and ``update``."""
    defaults = {}

    def __init__(self, params, **hyper):
        self._validate(hyper)  # first, as PyTorch's constructors check them first
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Tensors or dicts, but got {_type_name(params)}")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = {**type(self).defaults, **hyper}  # this optimizer's, as in PyTorch
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            self.add_param_group(group)
        self.state = {}  # id(param) -> dict of raw arrays

    def add_param_group(self, group):
        """Add a group of parameters, its own options over the optimizer's defaults."""
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise TypeError(f"unknown optimizer option(s): {sorted(unknown)}")
        params = group["params"]
        if isinstance(params, set):  # PyTorch: a set's order, hence the state's, changes per run
            raise TypeError("optimizer parameters need to be organized in ordered collections, but "
                            "the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is "
                                f"{_type_name(p)}")
            if p._ctx is not None:  # made by an op: its gradient is never kept
                raise ValueError("can't optimize a non-leaf Tensor")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        merged = {**self.defaults, **group, "params": params}
        self._validate(merged)
        self.param_groups.append(merged)

    def _validate(self, options):
        """Check a full set of options (the constructor's, or a group's merged with them)."""
        _check_at_least_zero("learning rate", options["lr"])
        _check_at_least_zero("weight_decay value", options["weight_decay"])

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p.data, p.grad.data, self.state.setdefault(id(p), {}), group)

    def update(self, param, grad, state, group):
        """Update the raw array ``param`` in place from ``grad``."""
        raise NotImplementedError

    # ---- saving and resuming ----------------------------------------------------------
    def _indexed_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self):
        """PyTorch's layout: ``state`` by parameter index, ``param_groups`` with indices.
        Arrays are NumPy copies, so the dict is backend-neutral."""
        params = self._indexed_params()
        state = {}
        for i, p in enumerate(params):
            if id(p) in self.state:
                state[i] = {k: (np.array(p.backend.to_numpy(v), copy=True) if not np.isscalar(v) else v)
                            for k, v in self.state[id(p)].items()}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups)):
            raise ValueError("optimizer state_dict does not match this optimizer's parameter groups")
        for saved, own in zip(groups, self.param_groups):
            own.update({k: v for k, v in saved.items() if k != "params"})
        params = self._indexed_params()
        self.state = {}
        for key, entry in state_dict["state"].items():
            p = params[int(key)]
            restored = {}
            for k, v in entry.items():
                if np.ndim(v) == 0:
                    restored[k] = float(v) if k != "step" else int(v)
                else:
                    if tuple(np.shape(v)) != p.shape:
                        raise ValueError(f"optimizer state {key}.{k}: shape {np.shape(v)} does not "
                                         f"match parameter shape {p.shape}")
                    restored[k] = p.backend.asarray(np.asarray(v, dtype=p.dtype))
            self.state[id(p)] = restored


class SGD(Optimizer):
    """buf = momentum*buf + (1-dampening)*g; p -= lr*buf (or lr*(g + momentum*buf), Nesterov)."""
    defaults = {"lr": 1e-3, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False}

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _validate(self, options):
        super()._validate(options)
        momentum = options["momentum"]
        _check_at_least_zero("momentum value", momentum)
        if options["nesterov"] and (momentum <= 0 or options["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def update(self, param, grad, state, group):
        fused = getattr(backends.backend_of(param), "sgd_step", None)  # one GPU kernel
        if fused is not None and fused(param, grad, state, group):
            return
        d_p = grad + group["weight_decay"] * param if group["weight_decay"] else grad
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d_p.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * d_p if group["dampening"] else d_p
            d_p = d_p + momentum * buf if group["nesterov"] else buf
        param -= group["lr"] * d_p


class Adam(Optimizer):
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _validate(self, options):
        super()._validate(options)
        _check_at_least_zero("epsilon value", options["eps"])
        for index, beta in enumerate(options["betas"]):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {beta}")

    def update(self, param, grad, state, group):
        fused = getattr(backends.backend_of(param), "adam_step", None)  # one GPU kernel
        if fused is not None and fused(param, grad, state, group):
            return
        beta1, beta2 = group["betas"]
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param
        if not state:
            state.update(step=0, exp_avg=param * 0, exp_avg_sq=param * 0)
        state["step"] += 1
        step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        m += (1 - beta1) * (grad - m)  # PyTorch's lerp form
        v *= beta2
        v += (1 - beta2) * grad * grad
        step_size = group["lr"] / (1 - beta1 ** step)
        denom = (v ** 0.5) / math.sqrt(1 - beta2 ** step) + group["eps"]
        param -= step_size * (m / denom)


__all__ = ["Optimizer", "SGD", "Adam"]
