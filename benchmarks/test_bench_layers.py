"""Single-layer benchmarks at the zoo's shapes: every conv2d, max_pool2d and linear
call the zoo's models make, and log_softmax+NLL on their logits, each at its model's
tutorial batch size, forward ("fwd") and forward then backward ("fwd+bwd"); part of
the full sweep (``--bench-full``). The cases themselves are :mod:`benchmarks.layers`.

The shapes are read off the models, not written down: each PyTorch twin
(``reference.models``) runs once at collection under a ``TorchFunctionMode`` that
records the arguments of every conv2d, max_pool2d and linear call (module or
functional alike). A layer that several models share at the same batch size is
benchmarked once, under the first model's name.

Both passes run with gradients recorded, as in training, so "fwd+bwd" minus "fwd" is
the backward's cost. An input needs a gradient exactly when it did in the traced model
(the first layer's input, the images, does not).
"""
import pytest

from minitorch_cnn.models import MODELS

from .layers import Conv2dCase, LinearCase, LogSoftmaxNLLCase, MaxPool2dCase, pair
from .workloads import Layer

torch = pytest.importorskip("torch", reason="layer shapes are traced from the PyTorch twins: "
                                            "pip install -e '.[reference]'")
from torch.overrides import TorchFunctionMode  # noqa: E402  (after the importorskip)

from reference.models import get_torch_model  # noqa: E402

pytestmark = pytest.mark.bench_full

PASSES = ("fwd", "fwd+bwd")
#: Positional parameter names of the traced torch functions (the rest come as keywords).
SIGNATURES = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "linear": ("input", "weight", "bias"),
}


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
    """The engine has no dilation, groups or ceil mode: a zoo layer using them is news."""
    if pair(arguments.get("dilation", 1)) != (1, 1) or arguments.get("groups", 1) != 1 \
            or arguments.get("ceil_mode", False):
        raise ValueError(f"{where}: dilation, groups or ceil_mode are not benchmarked: {arguments}")


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
            kernel = pair(arguments["kernel_size"])
            stride = pair(arguments.get("stride") or kernel)
            cases.append(MaxPool2dCase(where=where, kernel=kernel, stride=stride,
                                       padding=pair(arguments.get("padding", 0)), **common))
            continue
        weight, bias = arguments["weight"], arguments.get("bias")
        where = f"{name}.{layer_of[id(weight)]}"
        if op == "conv2d":
            _check_plain(where, arguments)
            cases.append(Conv2dCase(where=where, out_channels=weight.shape[0], kernel=tuple(weight.shape[2:]),
                                    stride=pair(arguments.get("stride", 1)),
                                    padding=pair(arguments.get("padding", 0)), bias=bias is not None, **common))
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


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}:{c.where}" for c in CASES])
def test_layer(case, pass_, framework, measure, bench_settings):
    n = bench_settings.batch(case.batch)
    measure(framework, case.group(pass_), Layer(case, pass_, n),
            op=case.op, layer=case.where, batch_size=n, input_shape=list(case.shape),
            input_grad=case.input_grad, data="random normal inputs, PyTorch-scaled weights")
