"""The model zoo on its own (no torch): the registry, shapes, parameter counts, features.

Agreement with PyTorch (logits, gradients, training steps, weight files) is checked in
``test_reference.py``.
"""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import minitorch_cnn as mt
from minitorch_cnn.models import MODELS, ModelSpec, get_model, get_spec

ZOO = ["convnet", "mnist-example", "lenet", "lenet3", "bn-cnn", "fc2", "small-cnn",
       "cifar-lenet", "vgg-bn", "mobile-cnn", "mobile-cnn-cifar"]


def conv(cin, cout, k):
    return cout * cin * k * k + cout


def linear(fin, fout):
    return fin * fout + fout


def batchnorm(c):
    return 2 * c


def vgg_bn_count():
    total, channels = 0, 3
    for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if item != "M":
            total += conv(channels, item, 3) + batchnorm(item)
            channels = item
    return total + linear(512, 10)


def mobile_cnn_count(in_channels):
    """Stem conv and BatchNorm, then per block a depthwise 3x3 conv (9 weights per
    channel), a pointwise 1x1 conv, two BatchNorms; no conv biases; fc(128->10)."""
    total = 16 * in_channels * 9 + batchnorm(16)
    for cin, cout in ((16, 32), (32, 64), (64, 64), (64, 128)):
        total += cin * 9 + batchnorm(cin) + cin * cout + batchnorm(cout)
    return total + linear(128, 10)


# Trainable parameters, counted from the architectures as the issue states them.
EXPECTED_PARAMETERS = {
    "convnet": conv(1, 4, 5) + conv(4, 8, 5) + linear(392, 512) + linear(512, 10),
    "mnist-example": conv(1, 10, 5) + conv(10, 20, 5) + linear(320, 50) + linear(50, 10),
    "lenet": conv(1, 6, 5) + conv(6, 12, 5) + linear(192, 120) + linear(120, 60) + linear(60, 10),
    "lenet3": (conv(1, 6, 5) + conv(6, 12, 5) + conv(12, 24, 2) + linear(96, 120)
               + linear(120, 60) + linear(60, 10)),
    "bn-cnn": (conv(1, 16, 5) + batchnorm(16) + conv(16, 32, 3) + batchnorm(32)
               + conv(32, 64, 3) + batchnorm(64) + linear(1600, 10)),
    "fc2": linear(784, 8) + linear(8, 10),
    "small-cnn": conv(1, 8, 5) + conv(8, 16, 5) + linear(256, 10),
    "cifar-lenet": conv(3, 6, 5) + conv(6, 16, 5) + linear(400, 120) + linear(120, 84) + linear(84, 10),
    "vgg-bn": vgg_bn_count(),
    "mobile-cnn": mobile_cnn_count(1),
    "mobile-cnn-cifar": mobile_cnn_count(3),
}

# Shapes of retrieve_features' maps for a batch of 2 (each conv's output after its ReLU).
EXPECTED_FEATURES = {
    "convnet": [(2, 4, 28, 28), (2, 8, 14, 14)],
    "mnist-example": [(2, 10, 24, 24), (2, 20, 8, 8)],
    "lenet": [(2, 6, 24, 24), (2, 12, 8, 8)],
    "lenet3": [(2, 6, 24, 24), (2, 12, 8, 8), (2, 24, 5, 5)],
}


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def image_batch(shape, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return mt.tensor(rng.random((n,) + tuple(shape), dtype=np.float32))


def test_registry_lists_the_zoo_in_order():
    assert list(MODELS) == ZOO
    for name, spec in MODELS.items():
        assert isinstance(spec, ModelSpec) and spec.name == name
        assert get_spec(name) is spec


@pytest.mark.parametrize("name", ZOO)
def test_spec_fields_are_consistent(name):
    spec = get_spec(name)
    assert spec.dataset in ("fashion-mnist", "cifar10")
    assert spec.input_shape == ((3, 32, 32) if spec.dataset == "cifar10" else (1, 28, 28))
    assert spec.loss in ("nll", "cross_entropy")
    assert spec.optimizer in ("sgd", "adam")
    if spec.optimizer == "adam":
        assert spec.momentum == 0.0
    assert spec.lr > 0 and 0 <= spec.momentum < 1
    assert spec.batch_size >= 1 and spec.epochs >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):  # the registry can't be edited by accident
        spec.lr = 1.0


def test_tutorial_hyperparameters():
    expected = {  # (optimizer, lr, momentum, batch size, loss) as the issue gives them
        "convnet": ("sgd", 0.001, 0.9, 64, "nll"),
        "mnist-example": ("sgd", 0.01, 0.5, 64, "nll"),
        "lenet": ("sgd", 0.1, 0.0, 100, "cross_entropy"),
        "lenet3": ("sgd", 0.1, 0.0, 100, "cross_entropy"),
        "bn-cnn": ("adam", 0.01, 0.0, 256, "cross_entropy"),
        "cifar-lenet": ("sgd", 0.001, 0.9, 32, "cross_entropy"),
        "vgg-bn": ("sgd", 0.05, 0.9, 128, "cross_entropy"),
    }
    for name, values in expected.items():
        s = get_spec(name)
        assert (s.optimizer, s.lr, s.momentum, s.batch_size, s.loss) == values, name


@pytest.mark.parametrize("bad", ["nope", "LeNet", "", None])
def test_unknown_name_lists_valid_names(bad):
    for lookup in (get_spec, get_model):
        with pytest.raises(ValueError) as info:
            lookup(bad)
        message = str(info.value)
        assert repr(bad) in message
        assert all(name in message for name in ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_forward_shape_and_parameter_count(name):
    spec = get_spec(name)
    mt.manual_seed(0)
    model = get_model(name).eval()
    assert parameter_count(model) == EXPECTED_PARAMETERS[name]
    with mt.no_grad():
        out = model(image_batch(spec.input_shape))
    assert out.shape == (2, 10) and out.dtype == np.float32
    values = out.numpy()
    assert np.isfinite(values).all()
    if spec.loss == "nll":  # the model ends in log_softmax: rows are log-probabilities
        np.testing.assert_allclose(np.exp(values).sum(axis=1), 1.0, rtol=1e-5)


def test_fc2_and_small_cnn_have_the_same_budget():
    fc2, cnn = parameter_count(get_model("fc2")), parameter_count(get_model("small-cnn"))
    assert (fc2, cnn) == (6370, 5994)  # the counts the docstrings state
    assert abs(fc2 - cnn) <= 0.1 * fc2


@pytest.mark.parametrize("name", sorted(EXPECTED_FEATURES))
def test_retrieve_features(name):
    mt.manual_seed(0)
    model = get_model(name).eval()
    with mt.no_grad():
        maps = model.retrieve_features(image_batch(get_spec(name).input_shape))
    assert [m.shape for m in maps] == EXPECTED_FEATURES[name]
    for m in maps:
        values = m.numpy()
        assert (values >= 0).all() and (values > 0).any()  # after ReLU, not all dead


def test_lenet_pools_the_third_convolution_to_96_features():
    mt.manual_seed(0)
    model = get_model("lenet3")
    x = image_batch((1, 28, 28))
    with mt.no_grad():
        last = model.retrieve_features(x)[-1]
        pooled = mt.nn.functional.max_pool2d(last, 2).flatten(1)
    assert pooled.shape == (2, 96) == (2, model.fc1.in_features)


def test_seeded_models_are_reproducible():
    def weights(seed):
        mt.manual_seed(seed)
        return get_model("lenet").state_dict()

    a, b, c = weights(3), weights(3), weights(4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_models_module_does_not_import_torch():
    code = "import sys, minitorch_cnn.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
