"""A small Fashion-MNIST folder for the command-line tests: the first images of the real
data set where it is installed, else class-dependent synthetic images, as raw IDX files."""
import numpy as np

from minitorch_cnn import data

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_split(folder, split, images, labels):
    data.write_idx(folder / FILES[split][0], images.astype(np.uint8))
    data.write_idx(folder / FILES[split][1], labels.astype(np.uint8))


def fashion_subset(folder, train_n, test_n):
    """``folder`` holding ``train_n`` training and ``test_n`` test images; returns it."""
    real = data.find_dataset("fashion-mnist", "train") and data.find_dataset("fashion-mnist", "test")
    for split, n in (("train", train_n), ("test", test_n)):
        if real:
            images, labels = data.load_dataset("fashion-mnist", split, download=False)
        else:
            labels = np.random.default_rng(len(split)).integers(0, 10, size=n)
            images = np.random.default_rng(0).random((10, 28, 28))[labels] * 255
        write_split(folder, split, images[:n], labels[:n])
    return folder
