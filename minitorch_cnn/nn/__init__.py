"""Layers and the functional ops, under PyTorch's names."""
from . import functional
from .fusion import BatchNormReLU2d, fuse_modules
from .modules import (AvgPool2d, BatchNorm2d, Conv2d, CrossEntropyLoss, Dropout, Dropout2d,
                      Flatten, Identity, Linear, LogSoftmax, MaxPool2d, Module, NLLLoss, Parameter,
                      ReLU, Sequential, Softmax)
from .sync_batchnorm import SyncBatchNorm
from . import parallel  # noqa: E402  (after the layers it wraps)

__all__ = ["functional", "Module", "Parameter", "Conv2d", "Linear", "MaxPool2d", "AvgPool2d",
           "ReLU", "Dropout", "Dropout2d", "BatchNorm2d", "Flatten", "LogSoftmax", "Softmax",
           "Sequential", "Identity", "CrossEntropyLoss", "NLLLoss", "BatchNormReLU2d", "fuse_modules",
           "SyncBatchNorm", "parallel"]
