"""``nn.Module`` and the layers, with PyTorch's names, defaults, initialisation and
``state_dict`` keys, so weights move between the two frameworks unchanged."""
import math
from collections import OrderedDict, namedtuple

import numpy as np

from .. import backends
from ..tensor import DEFAULT_FLOAT, Tensor, as_tensor
from . import functional as F


class Parameter(Tensor):
    """A tensor that a Module registers as trainable."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration -------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def register_buffer(self, name, tensor):
        """A non-trainable tensor that belongs to the state (BatchNorm's running stats)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor if isinstance(tensor, Tensor) else Tensor(tensor)

    def add_module(self, name, module):
        self._modules[name] = module

    # ---- calling ------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- traversal -------------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def get_submodule(self, target):
        """The submodule at dotted path ``target`` ("" is this module), as in PyTorch."""
        module = self
        for name in target.split(".") if target else []:
            if name not in module._modules:
                raise AttributeError(f"{type(module).__name__} has no submodule {name!r} (in {target!r})")
            module = module._modules[name]
        return module

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def _named(self, table):
        for prefix, module in self.named_modules():
            for name, t in getattr(module, table).items():
                yield (f"{prefix}.{name}" if prefix else name), t

    def named_parameters(self):
        return self._named("_parameters")

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self):
        return self._named("_buffers")

    def buffers(self):
        return (b for _, b in self.named_buffers())

    # ---- modes and devices -------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, name):
        """Move every parameter, gradient and buffer to backend ``name``, in place."""
        for t in list(self.parameters()) + list(self.buffers()):
            moved = t.to(name)
            t.data = moved.data
            if t.grad is not None:
                t.grad = t.grad.to(name)
        return self

    # ---- state -------------------------------------------------------------------------
    def state_dict(self):
        """Dotted keys, as PyTorch names them for the same tree, to NumPy copies."""
        state = OrderedDict()
        for prefix, module in self.named_modules():
            for table in ("_parameters", "_buffers"):
                for name, t in getattr(module, table).items():
                    state[f"{prefix}.{name}" if prefix else name] = np.array(t.numpy(), copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        own = OrderedDict(list(self.named_parameters()) + list(self.named_buffers()))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing key(s): " + ", ".join(repr(k) for k in missing))
            if unexpected:
                parts.append("unexpected key(s): " + ", ".join(repr(k) for k in unexpected))
            raise KeyError(f"error loading state_dict into {type(self).__name__}: " + "; ".join(parts))
        for key, t in own.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
            if tuple(value.shape) != t.shape:
                raise ValueError(f"state_dict key {key!r}: shape {tuple(value.shape)} does not match "
                                 f"the model's {t.shape}")
            t.data = t.backend.asarray(np.array(value, dtype=t.dtype, copy=True))  # own a copy
        return IncompatibleKeys(missing, unexpected)

    # ---- printing -----------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        body = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({body})"
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _uniform(shape, bound):
    """PyTorch's default init draws U(-bound, bound); drawn on the host so that a seed
    gives the same initial weights on every backend."""
    values = backends.host_rng().uniform(-bound, bound, size=shape).astype(DEFAULT_FLOAT)
    return Parameter(backends.get_backend().asarray(values))


def _kaiming_uniform_a_sqrt5(shape):
    """kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in) = 1/sqrt(fan_in)."""
    fan_in = int(np.prod(shape[1:]))
    return _uniform(shape, 1 / math.sqrt(fan_in)), fan_in


# ---- layers ------------------------------------------------------------------------------
class Conv2d(Module):
    PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros"):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        if in_channels % groups:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode not in self.PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {self.PADDING_MODES}, but got padding_mode={padding_mode!r}")
        if padding_mode != "zeros":
            raise NotImplementedError(f"Conv2d: padding_mode={padding_mode!r} is not implemented; only 'zeros' is")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = F.pair(kernel_size, "kernel_size")
        self.stride, self.dilation = F.pair(stride, "stride"), F.pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = F.pair(padding, "padding")
        self.padding_mode = padding_mode
        self.weight, fan_in = _kaiming_uniform_a_sqrt5((out_channels, in_channels // groups) + self.kernel_size)
        self.bias = _uniform((out_channels,), 1 / math.sqrt(fan_in)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        padding = repr(self.padding) if isinstance(self.padding, str) else self.padding
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={padding}")
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight, fan_in = _kaiming_uniform_a_sqrt5((out_features, in_features))
        self.bias = _uniform((out_features,), 1 / math.sqrt(fan_in)) if bias else None

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                            self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MaxUnpool2d(Module):
    """The partial inverse of a MaxPool2d with ``return_indices=True``: ``forward(input,
    indices, output_size=None)``."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding

    def forward(self, input, indices, output_size=None):
        return F.max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding, output_size)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class ReLU(Module):
    def forward(self, input):
        return F.relu(input)


class _Dropout(Module):
    function = None

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = p

    def forward(self, input):
        return type(self).function(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Dropout(_Dropout):
    function = staticmethod(F.dropout)


class Dropout2d(_Dropout):
    function = staticmethod(F.dropout2d)


class BatchNorm2d(Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        xp = backends.get_backend().xp
        if affine:
            self.weight = Parameter(xp.ones(num_features, dtype=DEFAULT_FLOAT))
            self.bias = Parameter(xp.zeros(num_features, dtype=DEFAULT_FLOAT))
        else:
            self.weight = self.bias = None
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(xp.zeros(num_features, dtype=DEFAULT_FLOAT)))
            self.register_buffer("running_var", Tensor(xp.ones(num_features, dtype=DEFAULT_FLOAT)))
            self.register_buffer("num_batches_tracked", Tensor(xp.zeros((), dtype=np.int64)))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x):
        return self._normalise(x, relu=False)

    def _normalise(self, x, relu, pool=None):
        """The forward pass, followed by ReLU in the same op when ``relu``, and then by
        the max pool ``pool`` (a MaxPool2d) too when given."""
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d expects a 4-D NCHW input, got shape {x.shape}")
        momentum = self.momentum
        if self.training and self.running_mean is not None:
            self.num_batches_tracked.data = self.num_batches_tracked.data + 1
            if momentum is None:  # a cumulative average: batch k weighs 1/k, as PyTorch
                momentum = 1.0 / float(self.num_batches_tracked.item())
        window = None if pool is None else (pool.kernel_size, pool.stride, pool.padding)
        return F.fused_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training, momentum, self.eps, relu, window)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)


class LogSoftmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.log_softmax(input, self.dim, _stacklevel=5)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(LogSoftmax):
    def forward(self, input):
        return F.softmax(input, self.dim, _stacklevel=5)


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x


class Identity(Module):
    """Its input, unchanged (what ``fuse_modules`` leaves where a fused module was)."""

    def forward(self, x):
        return x


class _Loss(Module):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction
        # The class weights are a buffer, as in PyTorch: in the state_dict, moved by to().
        if weight is not None:
            self.register_buffer("weight", as_tensor(weight))
        else:
            self.weight = None


class NLLLoss(_Loss):
    def forward(self, input, target):
        return F.nll_loss(input, target, self.weight, self.ignore_index, self.reduction)


class CrossEntropyLoss(_Loss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight, ignore_index, reduction)
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                               self.label_smoothing)
