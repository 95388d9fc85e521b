"""The zoo's PyTorch twins: each ``minitorch_cnn.models`` network written in plain PyTorch,
with the same module tree and attribute names, so both ``state_dict``s have the same keys
and shapes and weights move between them unchanged (see ``reference/convert.py``).

They are written independently, the way each tutorial writes them in PyTorch, rather
than generated from the engine's classes: they are the yardstick the engine is
measured against.
"""
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TORCH_MODELS", "get_torch_model", "ConvNet", "MnistExample", "LeNet", "BNCNN",
           "FC2", "SmallCNN", "CifarLeNet", "VGGBN", "VGG_CONFIG", "MobileCNN", "MOBILE_BLOCKS"]


class ConvNet(nn.Module):
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
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class MnistExample(nn.Module):
    """The classic pytorch/examples MNIST ``Net``; its ``F.dropout`` after fc1 is the
    module ``fc1_drop`` (no weights) so that tests can set its probability."""

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
        x = x.view(-1, 320)
        x = self.fc1_drop(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class LeNet(nn.Module):
    """lenet, or with ``three_convs`` lenet3 (conv3 12->24, k2, p1 after the second pool)."""

    def __init__(self, three_convs=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5)
        self.conv2 = nn.Conv2d(in_channels=6, out_channels=12, kernel_size=5)
        if three_convs:
            self.conv3 = nn.Conv2d(in_channels=12, out_channels=24, kernel_size=2, padding=1)
        self.fc1 = nn.Linear(in_features=24 * 2 * 2 if three_convs else 12 * 4 * 4, out_features=120)
        self.fc2 = nn.Linear(in_features=120, out_features=60)
        self.out = nn.Linear(in_features=60, out_features=10)

    def _convolutions(self):
        return [m for name, m in self.named_children() if name.startswith("conv")]

    def retrieve_features(self, x):
        maps = []
        for conv in self._convolutions():
            x = F.relu(conv(x))
            maps.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        return tuple(maps)

    def forward(self, t):
        for conv in self._convolutions():
            t = F.max_pool2d(F.relu(conv(t)), kernel_size=2, stride=2)
        t = F.relu(self.fc1(t.flatten(start_dim=1)))
        t = F.relu(self.fc2(t))
        return self.out(t)


class BNCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(64 * 5 * 5, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class FC2(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=5)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=5)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class CifarLeNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial's ``Net``, verbatim in structure."""

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
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


VGG_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGGBN(nn.Module):
    def __init__(self, config=VGG_CONFIG):
        super().__init__()
        layers, channels = [], 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1),
                           nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


MOBILE_BLOCKS = ((16, 32, 2), (32, 64, 2), (64, 64, 1), (64, 128, 2))


def depthwise_separable(in_channels, out_channels, stride):
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=stride, padding=1, groups=in_channels,
                  bias=False),
        nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True))


class MobileCNN(nn.Module):
    """A small MobileNet (v1): stem, depthwise-separable blocks, global average pool, fc."""

    def __init__(self, in_channels=1, blocks=MOBILE_BLOCKS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, blocks[0][0], kernel_size=3, padding=1, bias=False),
                                  nn.BatchNorm2d(blocks[0][0]), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[depthwise_separable(*block) for block in blocks])
        self.classifier = nn.Linear(blocks[-1][1], 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(torch.flatten(x, 1))


#: Builders by zoo name, in ``minitorch_cnn.models.MODELS``'s order.
TORCH_MODELS = {
    "convnet": ConvNet,
    "mnist-example": MnistExample,
    "lenet": LeNet,
    "lenet3": partial(LeNet, three_convs=True),
    "bn-cnn": BNCNN,
    "fc2": FC2,
    "small-cnn": SmallCNN,
    "cifar-lenet": CifarLeNet,
    "vgg-bn": VGGBN,
    "mobile-cnn": MobileCNN,
    "mobile-cnn-cifar": partial(MobileCNN, in_channels=3),
}


def get_torch_model(name):
    """A fresh PyTorch twin of zoo model ``name`` (PyTorch's default initialisation)."""
    try:
        builder = TORCH_MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(TORCH_MODELS)}") from None
    return builder()
