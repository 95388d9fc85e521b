"""Datasets from their raw files, with NumPy alone (no torch, no torchvision).

- :func:`read_idx` / :func:`write_idx`: the IDX format, plain or gzip (detected by content).
- :func:`load_dataset`: MNIST, Fashion-MNIST and CIFAR-10 (binary version), found on
  disk (``root`` / ``--data-dir``, ``$MINITORCH_DATA``, ``./data/<name>``, the Debian
  dataset folder; only ``root`` when it is given) or downloaded from public mirrors and
  checked by SHA-256; :func:`dataset_files` names the files a split is read from.
- :class:`DataLoader` and :func:`validation_split`: batches over the data held in memory.
- :data:`CLASSES`, :func:`class_names`, :data:`NORMALIZATION`.

This package imports NumPy and the standard library only, and nothing from the rest
of the engine, so it works on its own.
"""

from .idx import IDX_TYPES, IdxFormatError, read_idx, write_idx
from .downloader import (MIRRORS, RESOURCES, DatasetNotFoundError, DownloadError, download,
                         sha256_file)
from .datasets import (CLASSES, DATASETS, DEBIAN_DIRS, DEBIAN_PACKAGES, ENV_VAR, NORMALIZATION,
                       DataFolderError, class_names, dataset_files, extract_cifar10, find_dataset,
                       load_dataset, read_cifar10_files, read_dataset_files, read_mnist_files,
                       search_locations)
from .loader import DataLoader, validation_split

__all__ = [
    "IDX_TYPES", "IdxFormatError", "read_idx", "write_idx",
    "MIRRORS", "RESOURCES", "DatasetNotFoundError", "DownloadError", "download", "sha256_file",
    "CLASSES", "DATASETS", "DEBIAN_DIRS", "DEBIAN_PACKAGES", "ENV_VAR", "NORMALIZATION",
    "DataFolderError", "class_names", "dataset_files", "extract_cifar10", "find_dataset",
    "load_dataset", "read_cifar10_files", "read_dataset_files", "read_mnist_files",
    "search_locations",
    "DataLoader", "validation_split",
]
