"""The codebase's layout holds: the backend contract is one table (code and README
agree), every fast path keeps its reference body's signature, the reference path trains
as the fast one does, and importing the package has no side effects."""
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minitorch_cnn as mt
import minitorch_cnn.nn.functional as F
from minitorch_cnn import backends
from minitorch_cnn.backends.cupy_backend import CupyBackend
from minitorch_cnn.backends.host import HostBackend
from minitorch_cnn.backends.reference import OPS, Backend
from minitorch_cnn.models import get_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_shows_the_contract_table_of_the_code():
    assert backends.contract_table() in (ROOT / "README.md").read_text()


def test_the_contract_names_every_op_body_and_each_has_one():
    bodies = {name for name, value in vars(Backend).items() if callable(value) and not name.startswith("_")}
    plumbing = {"owns", "asarray", "to_numpy", "synchronize", "prepare", "seed", "random", "pad", "windows"}
    assert set(OPS) == bodies - plumbing


@pytest.mark.parametrize("cls", [HostBackend, CupyBackend])
@pytest.mark.parametrize("op", OPS)
def test_every_override_keeps_the_reference_signature(cls, op):
    """A fast path is the same op: same parameters, same defaults (a C-kernel override
    also receives the loaded library, ``lib``, which the dispatch adds)."""
    def parameters(function):
        return [p for p in inspect.signature(function).parameters.values() if p.name != "lib"]

    assert parameters(getattr(cls, op)) == parameters(getattr(Backend, op))


def test_importing_the_package_starts_no_thread_and_builds_no_backend():
    code = ("import threading, minitorch_cnn, minitorch_cnn.models, minitorch_cnn.train; "
            "print(threading.active_count(), sorted(minitorch_cnn.backends._BACKENDS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["1", "[]"]


def _train(backend, steps=25):
    """lenet's first SGD steps on a fixed random batch stream: losses and final weights."""
    rng = np.random.default_rng(0)
    with mt.backend(backend):
        mt.manual_seed(0)
        model = get_model("lenet")
        opt = mt.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(steps):
            x = mt.tensor(rng.standard_normal((32, 1, 28, 28)).astype(np.float32))
            y = mt.tensor(rng.integers(0, 10, 32))
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return np.array(losses), [p.numpy() for p in model.parameters()]


def test_the_reference_path_trains_as_the_fast_path():
    fast_losses, fast = _train("numpy")
    ref_losses, ref = _train("numpy-reference")
    np.testing.assert_allclose(ref_losses, fast_losses, rtol=1e-4)
    for a, b in zip(ref, fast):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert mt.get_backend().name == "numpy"  # the scope restored the default


def test_the_reference_backend_owns_numpy_arrays_while_chosen():
    x = mt.tensor(np.ones((1, 1, 4, 4), np.float32))
    with mt.backend("numpy-reference") as ref:
        assert type(ref) is Backend and backends.backend_of(x.data) is ref
    assert isinstance(backends.backend_of(x.data), HostBackend)
