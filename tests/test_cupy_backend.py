"""The CuPy backend: why it is unavailable where it is (any machine), and the engine
on it agreeing with the NumPy backend (GPU machines; those tests skip elsewhere with
the reason). The kernels themselves are tested in test_kernels.py; the whole op and
gradient suite runs on CuPy with ``MT_TEST_BACKEND=cupy`` (see optest.py).
"""
import importlib.util
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

import minitorch_cnn as mt
import minitorch_cnn.nn as nn
import minitorch_cnn.optim as optim
from minitorch_cnn import backends
from minitorch_cnn.backends import cupy_backend

HINT = "minitorch_cnn[cuda12]"


# ----------------------------------------------------------- availability, on any machine
def test_importing_the_engine_or_this_backend_does_not_import_cupy():
    code = ("import sys, minitorch_cnn, minitorch_cnn.nn, minitorch_cnn.optim, "
            "minitorch_cnn.backends.cupy_backend; print('cupy' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_use_backend_without_cupy_says_so_and_keeps_numpy():
    before = mt.get_backend()
    for _ in range(2):  # a failure is not cached as a half-built backend
        with pytest.raises(mt.BackendUnavailable, match="CuPy is not installed") as info:
            mt.use_backend("cupy")
        assert HINT in str(info.value) and "\n" not in str(info.value)
    assert mt.get_backend() is before


def test_cupy_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail as if absent
    with pytest.raises(mt.BackendUnavailable, match=r"CuPy is not installed; .*cuda12.*cuda13"):
        cupy_backend.create()


@pytest.mark.parametrize("body, expected", [
    ("raise ImportError('libcublas.so.13: cannot open shared object file')",
     r"CuPy is installed but fails to import \(ImportError: libcublas\.so\.13: cannot open"),
    ("import cupy_backends_not_there",
     r"CuPy is installed but broken, it cannot import 'cupy_backends_not_there'"),
])
def test_cupy_that_fails_to_import(monkeypatch, tmp_path, body, expected):
    package = tmp_path / "cupy"
    package.mkdir()
    (package / "__init__.py").write_text(body + "\n")
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(mt.BackendUnavailable, match=expected) as info:
        cupy_backend.create()
    assert "\n" not in str(info.value)


class FakeCUDARuntimeError(RuntimeError):
    def __init__(self, status, text):
        super().__init__(text)
        self.status = status


def fake_cupy(device_count=1, status=None, driver=13000, runtime=13000, kernel_error=None):
    """Just the surface of CuPy that create() touches, failing where told to."""
    def get_device_count():
        if status is not None:
            raise FakeCUDARuntimeError(status, f"cudaError {status}: from the fake runtime")
        return device_count

    def raw_kernel(source, name):
        if kernel_error is not None:
            raise kernel_error
        raise AssertionError("the probe should not get this far in these tests")

    runtime_api = SimpleNamespace(CUDARuntimeError=FakeCUDARuntimeError,
                                  getDeviceCount=get_device_count,
                                  driverGetVersion=lambda: driver,
                                  runtimeGetVersion=lambda: runtime)
    return SimpleNamespace(cuda=SimpleNamespace(runtime=runtime_api), float32=np.float32,
                           zeros=np.zeros, RawKernel=raw_kernel)


@pytest.mark.parametrize("fake, expected", [
    (dict(status=35, driver=0), r"^no CUDA device: no NVIDIA driver found"),
    (dict(status=35, driver=12020, runtime=13000),
     r"^NVIDIA driver too old: it supports CUDA up to 12\.2, but this CuPy is built for "
     r"CUDA 13\.0; update the driver, or install the CuPy build for CUDA 12: .*cuda12"),
    (dict(status=100), r"^no CUDA device \(FakeCUDARuntimeError: cudaError 100"),
    (dict(status=999), r"^no usable CUDA device \(FakeCUDARuntimeError: cudaError 999"),
    (dict(device_count=0), r"^no CUDA device: cupy\.cuda\.runtime\.getDeviceCount\(\) found none"),
    (dict(kernel_error=RuntimeError("nvrtc: error: failed to\n open libnvrtc-builtins.so")),
     r"^CuPy is installed but broken: a tiny CUDA kernel failed to compile or run "
     r"\(RuntimeError: nvrtc: error: failed to open libnvrtc-builtins\.so\)"),
], ids=["no-driver", "old-driver", "no-device", "other-error", "zero-devices", "broken"])
def test_each_cause_gets_its_reason(monkeypatch, fake, expected):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(**fake))
    with pytest.raises(mt.BackendUnavailable, match=expected) as info:
        cupy_backend.create()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------- on a GPU, with CuPy
@pytest.fixture
def gpu():
    """The CuPy backend, or a skip saying why there is none."""
    try:
        return backends.get_backend_by_name("cupy")
    except mt.BackendUnavailable as exc:
        pytest.skip(f"no CUDA GPU/CuPy: {exc}")


def small_convnet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10))


def twin_models(make):
    """The same freshly initialised model on NumPy and on CuPy."""
    mt.manual_seed(0)
    on_cpu = make()
    gpu_model = make()
    gpu_model.load_state_dict(on_cpu.state_dict())
    return on_cpu, gpu_model.to("cupy")


def assert_close(a, b, tol=1e-4):
    np.testing.assert_allclose(a, b, atol=tol, rtol=tol)


def test_backend_basics(gpu):
    assert gpu.name == "cupy" and gpu.xp.__name__ == "cupy"
    a = gpu.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert gpu.owns(a) and not gpu.owns(np.zeros(1))
    back = gpu.to_numpy(a)
    assert isinstance(back, np.ndarray) and back.tolist() == [[0, 1, 2], [3, 4, 5]]
    gpu.synchronize()
    gpu.prepare()
    assert gpu.kernel("im2col", np.float32) is gpu.kernel("im2col", "float32")  # memoized
    mt.manual_seed(5)
    first = gpu.to_numpy(gpu.random((4, 3), np.float32))
    mt.manual_seed(5)
    again = gpu.to_numpy(gpu.random((4, 3), np.float32))
    assert first.dtype == np.float32 and np.array_equal(first, again)


def test_out_of_gpu_memory_is_a_memory_error(gpu):
    with pytest.raises(MemoryError):
        gpu.xp.empty(2 ** 50, dtype=np.float32)  # 4 PiB


def test_convnet_forward_and_backward_match_numpy(gpu):
    cpu_model, gpu_model = twin_models(small_convnet)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3, 16, 16)).astype(np.float32), rng.integers(0, 10, 6)
    losses = []
    for model, name in ((cpu_model, "numpy"), (gpu_model, "cupy")):
        loss = nn.CrossEntropyLoss()(model(mt.tensor(x).to(name)), mt.tensor(y).to(name))
        loss.backward()
        losses.append(loss.item())
    assert_close(losses[0], losses[1])
    for (key, p_cpu), (_, p_gpu) in zip(cpu_model.named_parameters(), gpu_model.named_parameters()):
        assert p_gpu.grad.backend is gpu, key
        assert_close(p_gpu.grad.numpy(), p_cpu.grad.numpy())


def test_module_to_cupy_and_state_dict_back_to_numpy(gpu):
    cpu_model, gpu_model = twin_models(small_convnet)
    assert all(p.backend is gpu for p in gpu_model.parameters())
    assert all(b.backend is gpu for b in gpu_model.buffers())
    state = gpu_model.state_dict()
    reference = cpu_model.state_dict()
    assert list(state) == list(reference)
    for key, value in state.items():
        assert type(value) is np.ndarray, key
        np.testing.assert_array_equal(value, reference[key])
    moved_back = gpu_model.to("numpy")
    assert all(p.backend.name == "numpy" for p in moved_back.parameters())


def sgd_step(model, opt, x, y, backend_name):
    loss = nn.CrossEntropyLoss()(model(mt.tensor(x).to(backend_name)), mt.tensor(y).to(backend_name))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def test_training_steps_match_numpy_queue_without_host_round_trips_and_resume_on_cpu(gpu):
    cupyx = pytest.importorskip("cupyx")
    cpu_model, gpu_model = twin_models(small_convnet)
    cpu_opt = optim.SGD(cpu_model.parameters(), lr=0.1, momentum=0.9)
    gpu_opt = optim.SGD(gpu_model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((8, 3, 16, 16)).astype(np.float32), rng.integers(0, 10, 8))
               for _ in range(3)]
    gpu_batches = [(gpu.asarray(x), gpu.asarray(y)) for x, y in batches]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # allow_synchronize is deprecated, not gone
        with cupyx.allow_synchronize(False):  # raises DeviceSynchronized on .get()/.item()/bool()
            for x, y in gpu_batches[:2]:
                sgd_step(gpu_model, gpu_opt, x, y, "cupy")
    for x, y in batches[:2]:
        sgd_step(cpu_model, cpu_opt, x, y, "numpy")
    for p_cpu, p_gpu in zip(cpu_model.parameters(), gpu_model.parameters()):
        assert_close(p_gpu.numpy(), p_cpu.numpy())

    # A checkpoint taken on the GPU resumes on the CPU: the next step matches the GPU's.
    resumed = small_convnet()
    resumed.load_state_dict(gpu_model.state_dict())
    resumed_opt = optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    resumed_opt.load_state_dict(gpu_opt.state_dict())
    x, y = batches[2]
    sgd_step(resumed, resumed_opt, x, y, "numpy")
    sgd_step(gpu_model, gpu_opt, *gpu_batches[2], "cupy")
    for p_cpu, p_gpu in zip(resumed.parameters(), gpu_model.parameters()):
        assert_close(p_gpu.numpy(), p_cpu.numpy())


# ---------------------------- 1 epoch of the zoo's LeNet on Fashion-MNIST, NumPy vs CuPy
def one_epoch_accuracy(backend_name, train, test):
    """Test accuracy (%) of the zoo's "lenet" after one epoch on ``train`` with its own
    settings (lr, momentum, batch size), all on ``backend_name``."""
    from minitorch_cnn.models import get_model, get_spec

    spec = get_spec("lenet")
    norm = mt.data.NORMALIZATION["fashion-mnist"]
    with mt.backend(backend_name) as be:
        mt.manual_seed(0)
        model = get_model("lenet")
        opt = optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
        loader = mt.data.DataLoader(*train, batch_size=spec.batch_size, shuffle=True, seed=0,
                                    mean=norm[0], std=norm[1], xp=be.xp)
        for x, y in loader.batches(epoch=0):
            sgd_step(model, opt, x, y, backend_name)
        model.eval()
        correct = None
        with mt.no_grad():
            for x, y in mt.data.DataLoader(*test, batch_size=1000, mean=norm[0], std=norm[1], xp=be.xp):
                hits = (model(mt.tensor(x)).argmax(1) == mt.tensor(y)).sum()
                correct = hits if correct is None else correct + hits
        return 100.0 * correct.item() / len(test[1])


@pytest.mark.slow
def test_one_epoch_of_lenet_reaches_the_same_accuracy_as_numpy(gpu):
    try:
        images, labels = mt.data.load_dataset("fashion-mnist", "train", download=False)
        test = mt.data.load_dataset("fashion-mnist", "test", download=False)
    except mt.data.DatasetNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST not on this machine: {exc}")
    train = (images[:10000], labels[:10000])
    cpu_acc = one_epoch_accuracy("numpy", train, test)
    gpu_acc = one_epoch_accuracy("cupy", train, test)
    assert cpu_acc > 50, f"LeNet learned too little in one epoch on NumPy: {cpu_acc:.2f}%"
    assert abs(gpu_acc - cpu_acc) <= 0.5, f"cupy {gpu_acc:.2f}% vs numpy {cpu_acc:.2f}%"
