"""The single-layer workloads of the benchmark suite: one dataclass per kind of layer
call (conv2d, max_pool2d, linear, log_softmax+NLL), which says which arrays the call
takes and how either framework makes it, and :func:`layer_call`, which turns a case into
a function to time.

This module imports NumPy only, so that a framework's worker process (see
:mod:`benchmarks.workers`) can rebuild a case without loading the other framework;
``test_bench_layers`` finds the cases by tracing the PyTorch twins of the zoo.
"""
import math
from dataclasses import dataclass

import numpy as np

INPUT_SEED = 0


def pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _side(sides):
    """``5`` for a square (5, 5), else ``5x3``."""
    return str(sides[0]) if sides[0] == sides[1] else f"{sides[0]}x{sides[1]}"


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

    op = "conv2d"

    def settings(self):
        return self.out_channels, self.kernel, self.stride, self.padding, self.bias

    def describe(self):
        return (f"{_dims(self.batch, self.shape)} k{_side(self.kernel)} s{_side(self.stride)} "
                f"p{_side(self.padding)} -> {self.out_channels}")

    def arrays(self, rng, n):
        fan_in = self.shape[0] * self.kernel[0] * self.kernel[1]
        w = _uniform(rng, (self.out_channels, self.shape[0]) + self.kernel, fan_in)
        b = _uniform(rng, (self.out_channels,), fan_in) if self.bias else None
        return [(self.input(rng, n), self.input_grad), (w, True), (b, True)]

    def call(self, F, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding)


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
