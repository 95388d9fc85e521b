"""What a benchmark times, described rather than built, so that it can be sent to the
worker process of a framework (:mod:`benchmarks.workers`) and built there.

A workload is a small picklable dataclass; ``build(framework)`` returns the function
to time on that framework's adapter (:mod:`benchmarks.frameworks`), and ``flops`` the
floating-point operations of one call, where they are counted (see
:func:`forward_flops`). Inputs are made where the workload is built, the same for
every framework: Fashion-MNIST's first ``n`` training images, or seeded random images
of CIFAR's shape (CIFAR-10 is not installed here, and a step's cost does not depend on
the pixel values), normalised as for training.

This module imports NumPy only; the engine loads when a workload is built or counted.
"""
import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import frameworks, layers

RANDOM_DATA_SEED = 0
MATMUL_SEED = 0


# ---- data ---------------------------------------------------------------------------------
class BatchInfo(NamedTuple):
    description: str         # where the images come from, for extra_info
    group_note: str          # appended to a group name when the data are not real


def batch_info(dataset, n):
    if dataset == "fashion-mnist":
        return BatchInfo(f"Fashion-MNIST train[:{n}]", "")
    if dataset == "cifar10":
        return BatchInfo(f"{n} random uint8 3x32x32 images (CIFAR-10 is not installed here)",
                         " (random CIFAR-shaped data)")
    raise ValueError(f"no benchmark data for dataset {dataset!r}")


@functools.lru_cache(maxsize=None)
def _fashion_mnist():
    from minitorch_cnn.data import load_dataset

    return load_dataset("fashion-mnist", "train", download=False)


def make_batch(dataset, n):
    """``(x, y)``: float32 NCHW images normalised as for training, int64 labels. Raises
    ``minitorch_cnn.data.DatasetNotFoundError`` where Fashion-MNIST is not installed."""
    from minitorch_cnn.data import NORMALIZATION, DataLoader

    batch_info(dataset, n)  # an unknown dataset is refused before any work
    if dataset == "fashion-mnist":
        images, labels = _fashion_mnist()
        if n > len(images):
            raise ValueError(f"batch of {n} is larger than Fashion-MNIST's {len(images)} images")
        images, labels = images[:n], labels[:n]
    else:
        rng = np.random.default_rng(RANDOM_DATA_SEED)
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.int64)
    mean, std = NORMALIZATION[dataset]
    return next(iter(DataLoader(images, labels, batch_size=n, mean=mean, std=std)))


# ---- floating-point operations -------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def forward_flops(model_name):
    """Floating-point operations of one sample's forward pass through zoo model
    ``model_name``, counted from its layers as the textbooks count them: a convolution
    ``2 * Cout * Cin/groups * kh * kw * OH * OW`` (a multiply and an add per weight and
    output position), a linear layer ``2 * in * out``. Biases, normalisation, activations
    and pooling are left out: they are a few percent of the total, and the sizes come
    from one forward pass of a single zero image."""
    import minitorch_cnn as mt
    from minitorch_cnn.models import MODELS, get_model

    counts = []

    def counting(module, forward):
        def run(x):
            out = forward(x)
            if isinstance(module, mt.nn.Conv2d):
                cout, cin, kh, kw = module.weight.shape
                counts.append(2 * cout * cin * kh * kw * out.shape[-2] * out.shape[-1])
            else:
                counts.append(2 * module.in_features * module.out_features)
            return out
        return run

    model = get_model(model_name).eval()
    layers_ = [m for m in model.modules() if isinstance(m, (mt.nn.Conv2d, mt.nn.Linear))]
    for m in layers_:
        m.forward = counting(m, m.forward)  # an instance attribute shadows the method
    try:
        with mt.no_grad():
            model(mt.zeros(1, *MODELS[model_name].input_shape))
    finally:
        for m in layers_:
            del m.forward
    return sum(counts)


#: A training step: the forward pass, then a backward pass of about twice its work (the
#: gradients of both a layer's input and its weights, each a product of the same size).
TRAIN_STEP_PASSES = 3


# ---- the workloads ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainStep:
    """One full training step of a zoo model (zero_grad, forward, loss, backward, step)."""
    model: str
    batch: int

    def build(self, framework):
        from minitorch_cnn.models import MODELS

        spec = MODELS[self.model]
        return frameworks.train_step(framework, spec, *make_batch(spec.dataset, self.batch))

    @property
    def flops(self):
        return TRAIN_STEP_PASSES * self.batch * forward_flops(self.model)


@dataclass(frozen=True)
class Inference:
    """A zoo model in eval mode, without a graph, on a batch."""
    model: str
    batch: int

    def build(self, framework):
        from minitorch_cnn.models import MODELS

        spec = MODELS[self.model]
        return frameworks.inference(framework, spec, make_batch(spec.dataset, self.batch)[0])

    @property
    def flops(self):
        return self.batch * forward_flops(self.model)


@dataclass(frozen=True)
class Layer:
    """One layer call of :mod:`benchmarks.layers`, forward or forward then backward."""
    case: layers.LayerCase
    pass_: str
    batch: int

    def build(self, framework):
        return layers.layer_call(framework, self.case, self.pass_, self.batch)

    flops = None


@dataclass(frozen=True)
class MatMul:
    """A ``size`` x ``size`` float32 matrix product: the machine's peak for the BLAS that a
    framework uses, at the run's thread count (2 * size**3 operations)."""
    size: int

    def build(self, framework):
        rng = np.random.default_rng(MATMUL_SEED)
        a, b = (framework.tensor(rng.standard_normal((self.size, self.size), dtype=np.float32))
                for _ in range(2))

        def product():
            a @ b
            framework.synchronize()

        return product

    @property
    def flops(self):
        return 2 * self.size ** 3
