"""Single-layer benchmarks at the zoo's shapes: every conv2d, max_pool2d and linear
call the zoo's models make, and log_softmax+NLL on their logits, each at its model's
tutorial batch size, forward ("fwd") and forward then backward ("fwd+bwd").

The shapes are read off the models, not written down: each PyTorch twin
(``reference.models``) runs once at collection under a ``TorchFunctionMode`` that
records the arguments of every conv2d, max_pool2d and linear call (module or
functional alike). A layer that several models share at the same batch size is
benchmarked once, under the first model's name.

Both passes run with gradients recorded, as in training, so "fwd+bwd" minus "fwd" is
the backward's cost. An input needs a gradient exactly when it did in the traced model
(the first layer's input, the images, does not).
"""
import math
from dataclasses import dataclass

import numpy as np
import pytest

from minitorch_cnn.models import MODELS

torch = pytest.importorskip("torch", reason="layer shapes are traced from the PyTorch twins: "
                                            "pip install -e '.[reference]'")
from torch.overrides import TorchFunctionMode  # noqa: E402  (after the importorskip)

from reference.models import get_torch_model  # noqa: E402

PASSES = ("fwd", "fwd+bwd")
INPUT_SEED = 0
#: Positional parameter names of the traced torch functions (the rest come as keywords).
SIGNATURES = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "linear": ("input", "weight", "bias"),
}


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _side(pair):
    """``5`` for a square (5, 5), else ``5x3``."""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _dims(batch, shape):
    return "x".join(str(d) for d in (batch,) + shape)


def _uniform(rng, shape, fan_in):
    """PyTorch's default weight scale, so that values stay in a normal float range."""
    bound = 1 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


@dataclass(frozen=True)
class LayerCase:
    """One layer call: ``op`` on a batch of ``batch`` inputs of ``shape`` (per sample).
    Subclasses say which arrays it takes and how both frameworks call it."""
    where: str
    batch: int
    shape: tuple
    input_grad: bool

    op = None

    def key(self):
        """What makes two cases the same benchmark: everything but the name."""
        return (type(self), self.batch, self.shape, self.input_grad, self.settings())

    def settings(self):
        return ()

    def group(self, pass_):
        return f"{self.op}-{pass_}:{self.where} {self.describe()}"

    def input(self, rng, n):
        return rng.standard_normal((n,) + self.shape, dtype=np.float32)


@dataclass(frozen=True)
class Conv2dCase(LayerCase):
    out_channels: int = 0
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    bias: bool = True
    groups: int = 1

    op = "conv2d"

    def settings(self):
        return self.out_channels, self.kernel, self.stride, self.padding, self.bias, self.groups

    def describe(self):
        groups = f" g{self.groups}" if self.groups != 1 else ""
        return (f"{_dims(self.batch, self.shape)} k{_side(self.kernel)} s{_side(self.stride)} "
                f"p{_side(self.padding)}{groups} -> {self.out_channels}")

    def arrays(self, rng, n):
        fan_in = self.shape[0] // self.groups * self.kernel[0] * self.kernel[1]
        w = _uniform(rng, (self.out_channels, self.shape[0] // self.groups) + self.kernel, fan_in)
        b = _uniform(rng, (self.out_channels,), fan_in) if self.bias else None
        return [(self.input(rng, n), self.input_grad), (w, True), (b, True)]

    def call(self, F, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, 1, self.groups)


@dataclass(frozen=True)
class MaxPool2dCase(LayerCase):
    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)
    padding: tuple = (0, 0)

    op = "max_pool2d"

    def settings(self):
        return self.kernel, self.stride, self.padding

    def describe(self):
        pad = f" p{_side(self.padding)}" if any(self.padding) else ""
        return f"{_dims(self.batch, self.shape)} k{_side(self.kernel)} s{_side(self.stride)}{pad}"

    def arrays(self, rng, n):
        return [(self.input(rng, n), self.input_grad)]

    def call(self, F, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)


@dataclass(frozen=True)
class LinearCase(LayerCase):
    out_features: int = 0
    bias: bool = True

    op = "linear"

    def settings(self):
        return self.out_features, self.bias

    def describe(self):
        return f"{_dims(self.batch, self.shape)} -> {self.out_features}"

    def arrays(self, rng, n):
        w = _uniform(rng, (self.out_features,) + self.shape, self.shape[0])
        b = _uniform(rng, (self.out_features,), self.shape[0]) if self.bias else None
        return [(self.input(rng, n), self.input_grad), (w, True), (b, True)]

    def call(self, F, x, w, b):
        return F.linear(x, w, b)


@dataclass(frozen=True)
class LogSoftmaxNLLCase(LayerCase):
    """The loss of the training step, on the model's logits: (batch, classes)."""
    op = "log_softmax+nll"

    def describe(self):
        return _dims(self.batch, self.shape)

    def arrays(self, rng, n):
        targets = rng.integers(0, self.shape[0], size=n, dtype=np.int64)
        return [(self.input(rng, n), True), (targets, False)]

    def call(self, F, logits, targets):
        return F.nll_loss(F.log_softmax(logits, 1), targets)


class _Recorder(TorchFunctionMode):
    """Records ``(function name, {parameter: argument})`` of every traced call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in SIGNATURES:
            self.calls.append((name, {**dict(zip(SIGNATURES[name], args)), **kwargs}))
        return func(*args, **kwargs)


def _check_plain(where, arguments):
    """Dilation and ceil mode are not benchmarked: a zoo layer using them is news."""
    if _pair(arguments.get("dilation", 1)) != (1, 1) or arguments.get("ceil_mode", False):
        raise ValueError(f"{where}: dilation or ceil_mode are not benchmarked: {arguments}")


def trace_model(name):
    """The layer cases of zoo model ``name`` at its tutorial batch size, in call order."""
    spec = MODELS[name]
    model = get_torch_model(name).train()
    layer_of = {id(p): key.rsplit(".", 1)[0] for key, p in model.named_parameters()}
    recorder = _Recorder()
    with recorder:
        logits = model(torch.zeros((2,) + tuple(spec.input_shape)))  # 2: BatchNorm needs a batch
    cases, pools = [], 0
    for op, arguments in recorder.calls:
        x = arguments["input"]
        common = dict(batch=spec.batch_size, shape=tuple(x.shape[1:]), input_grad=x.requires_grad)
        if op == "max_pool2d":
            pools += 1
            where = f"{name}#pool{pools}"
            _check_plain(where, arguments)
            kernel = _pair(arguments["kernel_size"])
            stride = _pair(arguments.get("stride") or kernel)
            cases.append(MaxPool2dCase(where=where, kernel=kernel, stride=stride,
                                       padding=_pair(arguments.get("padding", 0)), **common))
            continue
        weight, bias = arguments["weight"], arguments.get("bias")
        where = f"{name}.{layer_of[id(weight)]}"
        if op == "conv2d":
            _check_plain(where, arguments)
            cases.append(Conv2dCase(where=where, out_channels=weight.shape[0], kernel=tuple(weight.shape[2:]),
                                    stride=_pair(arguments.get("stride", 1)),
                                    padding=_pair(arguments.get("padding", 0)), bias=bias is not None,
                                    groups=arguments.get("groups", 1), **common))
        else:
            cases.append(LinearCase(where=where, out_features=weight.shape[0], bias=bias is not None, **common))
    cases.append(LogSoftmaxNLLCase(where=name, batch=spec.batch_size, shape=tuple(logits.shape[1:]),
                                   input_grad=True))
    return cases


def zoo_cases():
    """Every distinct layer case of the zoo, conv2d first, then pooling, linear, loss."""
    unique = {}
    for name in MODELS:
        for case in trace_model(name):
            unique.setdefault(case.key(), case)
    order = (Conv2dCase, MaxPool2dCase, LinearCase, LogSoftmaxNLLCase)
    return sorted(unique.values(), key=lambda case: order.index(type(case)))


CASES = zoo_cases()


def layer_call(framework, case, pass_, n):
    """A function running ``case`` once on a batch of ``n`` in ``framework``."""
    rng = np.random.default_rng(INPUT_SEED)
    tensors = [None if array is None else framework.tensor(array, requires_grad=grad)
               for array, grad in case.arrays(rng, n)]

    def forward():
        return case.call(framework.F, *tensors)

    if pass_ == "fwd":
        def run():
            forward()
            framework.synchronize()
        return run

    leaves = [t for t in tensors if t is not None and t.requires_grad]
    out = forward()
    # A fixed upstream gradient of the output's shape (None for the scalar loss).
    grad = framework.tensor(rng.standard_normal(tuple(out.shape), dtype=np.float32)) if out.ndim else None

    def run():
        for t in leaves:
            t.grad = None  # as zero_grad does: each call computes fresh gradients
        forward().backward(grad)
        framework.synchronize()

    return run


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}:{c.where}" for c in CASES])
def test_layer(case, pass_, framework, measure, bench_settings):
    n = bench_settings.batch(case.batch)
    measure(framework, case.group(pass_), layer_call(framework, case, pass_, n),
            op=case.op, layer=case.where, batch_size=n, input_shape=list(case.shape),
            input_grad=case.input_grad, data="random normal inputs, PyTorch-scaled weights")
