"""The model zoo: the classic tutorial networks, each with its tutorial's training defaults.

Every model is built from ``nn`` layers under the attribute names its tutorial uses, so
``state_dict()`` keys are the ones PyTorch gives the same network (``reference/models.py``
holds the PyTorch twins, key for key). Layers draw PyTorch's default initialisation;
call ``mt.manual_seed`` first for reproducible weights.

``MODELS`` lists each network with a :class:`ModelSpec` (dataset, input shape, loss,
optimizer and hyper-parameters); :func:`get_model` builds a fresh one by name.

Feature maps: the convolutional models that tutorials visualise have
``retrieve_features(x)``, returning the output of each convolution after its ReLU, at
the convolution's own resolution (ReLU and max pooling commute, so this is also what
the pooled path sees).

This module imports the engine only, never torch.
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable

from . import nn
from .nn import functional as F

__all__ = ["ModelSpec", "MODELS", "get_spec", "get_model",
           "ConvNet", "MnistExample", "LeNet", "BNCNN", "FC2", "SmallCNN", "CifarLeNet", "VGGBN",
           "VGG_CONFIG"]


# ---- Fashion-MNIST / MNIST models (1x28x28) -------------------------------------------
class ConvNet(nn.Module):
    """conv(1->4,k5,p2)-ReLU-pool-conv(4->8,k5,p2)-ReLU-pool-fc(392->512)-ReLU-dropout-
    fc(512->10)-log_softmax: the small network of the convnet tutorial."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(4, 8, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(8 * 7 * 7, 512)
        self.dropout = nn.Dropout()
        self.fc2 = nn.Linear(512, 10)

    def retrieve_features(self, x):
        feature_map1 = F.relu(self.conv1(x))
        feature_map2 = F.relu(self.conv2(F.max_pool2d(feature_map1, 2)))
        return feature_map1, feature_map2

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = self.dropout(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class MnistExample(nn.Module):
    """The classic version of PyTorch's MNIST example (pytorch/examples):
    conv(1->10,k5)-pool-ReLU-conv(10->20,k5)-dropout2d-pool-ReLU-fc(320->50)-ReLU-dropout-
    fc(50->10)-log_softmax. The example calls ``F.dropout`` after fc1; here that dropout is
    the module ``fc1_drop`` (no weights, so the state_dict is the example's) so that its
    probability can be changed like ``conv2_drop``'s."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc1_drop = nn.Dropout()
        self.fc2 = nn.Linear(50, 10)

    def retrieve_features(self, x):
        feature_map1 = F.relu(self.conv1(x))
        feature_map2 = F.relu(self.conv2(F.max_pool2d(feature_map1, 2)))
        return feature_map1, feature_map2

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.flatten(1)
        x = self.fc1_drop(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class LeNet(nn.Module):
    """conv(1->6,k5)-ReLU-pool-conv(6->12,k5)-ReLU-pool-fc(192->120)-ReLU-fc(120->60)-ReLU-
    out(60->10), raw logits (the deeplizard tutorial's ``Network``).

    ``three_convs=True`` is ``lenet3``: after the second pooling (12x4x4) a third
    conv(12->24,k2,p1) gives 24x5x5, ReLU and pooling give 24x2x2, so fc1 takes 96."""

    def __init__(self, three_convs=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 12, kernel_size=5)
        if three_convs:
            self.conv3 = nn.Conv2d(12, 24, kernel_size=2, padding=1)
        self.fc1 = nn.Linear(24 * 2 * 2 if three_convs else 12 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 60)
        self.out = nn.Linear(60, 10)

    def _convolutions(self):
        return [m for name, m in self.named_children() if name.startswith("conv")]

    def retrieve_features(self, x):
        maps = []
        for conv in self._convolutions():
            x = F.relu(conv(x))
            maps.append(x)
            x = F.max_pool2d(x, 2)
        return tuple(maps)

    def forward(self, x):
        for conv in self._convolutions():
            x = F.max_pool2d(F.relu(conv(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.out(x)


class BNCNN(nn.Module):
    """conv(1->16,k5,p2)-BN-ReLU-pool-conv(16->32,k3)-BN-ReLU-conv(32->64,k3)-BN-ReLU-pool-
    fc(1600->10), raw logits. Sizes: 28 -> 28 -> 14 -> 12 -> 10 -> 5, and 64*5*5 = 1600."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(64 * 5 * 5, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class FC2(nn.Module):
    """784->8->10 fully connected with a ReLU between: 6,370 parameters (6,280 + 90),
    the parameter budget that :class:`SmallCNN` matches."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class SmallCNN(nn.Module):
    """conv(1->8,k5)-ReLU-pool-conv(8->16,k5)-ReLU-pool-fc(256->10), raw logits: 5,994
    parameters (208 + 3,216 + 2,570), within 6% of :class:`FC2`'s 6,370, to compare a
    convolutional and a fully connected network on the same budget.
    Sizes: 28 -> 24 -> 12 -> 8 -> 4, and 16*4*4 = 256."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=5)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=5)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


# ---- CIFAR-10 models (3x32x32) ------------------------------------------------------
class CifarLeNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial's ``Net``: conv(3->6,k5)-ReLU-pool-conv(6->16,k5)-ReLU-
    pool-fc(400->120)-ReLU-fc(120->84)-ReLU-fc(84->10), raw logits."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


#: Channels of each 3x3 convolution (padding 1, then BatchNorm and ReLU); "M" a 2x2 max pool.
VGG_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGGBN(nn.Module):
    """VGG-11 with BatchNorm for 3x32x32 input: :data:`VGG_CONFIG`, then flatten and
    fc(512->10), raw logits. Five poolings take 32x32 to 1x1, so the flatten is 512."""

    def __init__(self, config=VGG_CONFIG):
        super().__init__()
        layers, channels = [], 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1),
                           nn.BatchNorm2d(item), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# ---- the registry ---------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    dataset: str            # default dataset: "fashion-mnist" or "cifar10"
    input_shape: tuple      # (C, H, W)
    loss: str               # "nll" (model ends in log_softmax) or "cross_entropy" (raw logits)
    optimizer: str          # "sgd" or "adam"
    lr: float
    momentum: float         # 0.0 for adam
    batch_size: int
    epochs: int
    tutorial: str = ""      # where the network comes from (shown by train --list-models)


_MNIST_SHAPE = (1, 28, 28)
_CIFAR_SHAPE = (3, 32, 32)

# Epochs: convnet 3, mnist-example 3 (the example itself runs 10), lenet/lenet3 5 and
# bn-cnn 5 are this project's reporting settings; fc2 and small-cnn get 5 like lenet.
# cifar-lenet: the tutorial runs 2 epochs of batch 4 (25,000 steps); at batch 32 (see
# below) 10 epochs give 15,625 steps at the same lr. vgg-bn: the tutorial
# (pytorch-vgg-cifar10) runs 300 epochs, halving lr every 30; without a schedule, its
# first 30 epochs at lr 0.05 are the stage reproduced here.
_SPECS = (
    ModelSpec("convnet", ConvNet, "fashion-mnist", _MNIST_SHAPE, "nll", "sgd",
              lr=0.001, momentum=0.9, batch_size=64, epochs=3,
              tutorial="the convnet tutorial's small network"),
    ModelSpec("mnist-example", MnistExample, "fashion-mnist", _MNIST_SHAPE, "nll", "sgd",
              lr=0.01, momentum=0.5, batch_size=64, epochs=3,
              tutorial="pytorch/examples, mnist (the classic Net)"),
    ModelSpec("lenet", LeNet, "fashion-mnist", _MNIST_SHAPE, "cross_entropy", "sgd",
              lr=0.1, momentum=0.0, batch_size=100, epochs=5,
              tutorial="deeplizard's PyTorch course (Network)"),
    ModelSpec("lenet3", partial(LeNet, three_convs=True), "fashion-mnist", _MNIST_SHAPE,
              "cross_entropy", "sgd", lr=0.1, momentum=0.0, batch_size=100, epochs=5,
              tutorial="deeplizard's Network with a third convolution"),
    ModelSpec("bn-cnn", BNCNN, "fashion-mnist", _MNIST_SHAPE, "cross_entropy", "adam",
              lr=0.01, momentum=0.0, batch_size=256, epochs=5,
              tutorial="conv-BatchNorm-ReLU blocks with Adam, this project's default"),
    ModelSpec("fc2", FC2, "fashion-mnist", _MNIST_SHAPE, "cross_entropy", "sgd",
              lr=0.01, momentum=0.5, batch_size=64, epochs=5,
              tutorial="fully connected half of the equal-size pair"),
    ModelSpec("small-cnn", SmallCNN, "fashion-mnist", _MNIST_SHAPE, "cross_entropy", "sgd",
              lr=0.01, momentum=0.5, batch_size=64, epochs=5,
              tutorial="convolutional half of the equal-size pair"),
    # The tutorial's batch of 4 makes each step four tiny images, so an epoch is 12,500
    # steps dominated by per-step overhead (Python, kernel launches on a GPU); batch 32
    # keeps its lr and momentum and runs an epoch in an eighth of the steps.
    ModelSpec("cifar-lenet", CifarLeNet, "cifar10", _CIFAR_SHAPE, "cross_entropy", "sgd",
              lr=0.001, momentum=0.9, batch_size=32, epochs=10,
              tutorial="PyTorch's CIFAR-10 tutorial (Net)"),
    ModelSpec("vgg-bn", VGGBN, "cifar10", _CIFAR_SHAPE, "cross_entropy", "sgd",
              lr=0.05, momentum=0.9, batch_size=128, epochs=30,
              tutorial="pytorch-vgg-cifar10 (VGG-11 with BatchNorm)"),
)

MODELS = {spec.name: spec for spec in _SPECS}


def get_spec(name):
    """The :class:`ModelSpec` called ``name``; ValueError listing the valid names otherwise."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None


def get_model(name):
    """A fresh model ``name`` with PyTorch's default initialisation (seed with
    ``mt.manual_seed`` first for reproducible weights)."""
    return get_spec(name).build()
