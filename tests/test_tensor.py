"""Tensor creation, autograd mechanics and backends."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from optest import mt_backend, skip_without_cupy  # noqa: E402,F401  (mt_backend: autouse fixture)

import minitorch_cnn as mt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_CUPY = importlib.util.find_spec("cupy") is not None



# --------------------------------------------------------------------------- creation
def test_tensor_from_float_list_is_float32():
    t = mt.tensor([[1.0, 2.5], [3.0, 4.0]])
    assert t.numpy().dtype == np.float32 and "float32" in str(t.dtype)
    assert tuple(t.shape) == (2, 2) and t.ndim == 2
    np.testing.assert_array_equal(t.numpy(), [[1.0, 2.5], [3.0, 4.0]])


def test_tensor_from_int_list_stays_integer():
    t = mt.tensor([1, 2, 3])
    assert np.issubdtype(t.numpy().dtype, np.integer), t.numpy().dtype
    assert "int" in str(t.dtype)
    np.testing.assert_array_equal(t.numpy(), [1, 2, 3])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32, np.uint8])
def test_tensor_from_numpy_keeps_dtype(dtype):
    a = np.arange(6).reshape(2, 3).astype(dtype)
    t = mt.tensor(a)
    assert t.numpy().dtype == dtype and str(np.dtype(dtype)) in str(t.dtype)
    np.testing.assert_array_equal(t.numpy(), a)


def test_tensor_dtype_argument():
    t = mt.tensor([1, 2, 3], dtype=np.float64)
    assert t.numpy().dtype == np.float64
    t = mt.tensor(np.ones(3, np.float64), dtype=np.float32)
    assert t.numpy().dtype == np.float32


def test_tensor_copies_its_numpy_input():
    a = np.zeros(3, np.float32)
    t = mt.tensor(a)
    a[0] = 5.0   # torch.tensor copies: changing the source later doesn't change the tensor
    assert t.numpy()[0] == 0.0


def test_scalar_tensor_and_item():
    t = mt.tensor(3.5)
    assert tuple(t.shape) == () and t.ndim == 0
    assert t.item() == 3.5 and isinstance(t.item(), float)
    assert mt.tensor([7]).item() == 7 and isinstance(mt.tensor([7]).item(), int)
    assert isinstance(mt.tensor([[2.0]]).item(), float)
    x = mt.tensor(np.arange(4, dtype=np.float32), requires_grad=True)
    loss = (x * x).sum()
    assert loss.item() == 14.0 and isinstance(loss.item(), float)


def test_item_of_multi_element_tensor_raises():
    with pytest.raises((ValueError, RuntimeError)):
        mt.tensor([1.0, 2.0]).item()


def test_numpy_returns_ndarray_even_for_0d_results():
    x = mt.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    for t in (x, x.sum(), x.mean(), (x * x).sum(), x[0, 1], mt.tensor(2.0)):
        out = t.numpy()
        assert isinstance(out, np.ndarray), f".numpy() returned {type(out).__name__}, not a NumPy array"
        assert out.shape == tuple(t.shape)


def test_data_is_raw_backend_array():
    t = mt.tensor([1.0, 2.0], requires_grad=True)
    if mt.get_backend().name == "numpy":
        array_type = np.ndarray
    else:
        import cupy
        array_type = cupy.ndarray
    for u in (t, t * 2, t.sum(), t[0]):     # 0-d results too: arrays, not NumPy scalars
        assert isinstance(u.data, array_type), f".data is a {type(u.data).__name__}"


@pytest.mark.parametrize("fn", ["zeros", "ones", "randn"])
def test_factories_shapes_and_dtype(fn):
    f = getattr(mt, fn)
    for shape in [(3,), (2, 3), (2, 1, 4, 5)]:
        t = f(*shape)
        assert tuple(t.shape) == shape
        assert t.numpy().dtype == np.float32
        assert not t.requires_grad
    assert np.all(mt.zeros(2, 3).numpy() == 0) and np.all(mt.ones(2, 3).numpy() == 1)


def test_factories_accept_a_shape_tuple():
    assert tuple(mt.zeros((2, 3)).shape) == (2, 3)
    assert tuple(mt.ones((4,)).shape) == (4,)
    assert tuple(mt.randn((2, 5)).shape) == (2, 5)


def test_randn_statistics():
    mt.manual_seed(0)
    x = mt.randn(200, 100).numpy()
    assert abs(x.mean()) < 0.03 and abs(x.std() - 1.0) < 0.03


def test_manual_seed_reproducibility():
    mt.manual_seed(42)
    a = mt.randn(5, 6).numpy()
    b = mt.randn(5, 6).numpy()
    mt.manual_seed(42)
    c = mt.randn(5, 6).numpy()
    mt.manual_seed(43)
    d = mt.randn(5, 6).numpy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b), "consecutive randn calls returned the same numbers"
    assert not np.array_equal(a, d), "different seeds returned the same numbers"


# --------------------------------------------------------------------------- autograd mechanics
def test_requires_grad_propagation():
    x = mt.tensor([1.0, 2.0], requires_grad=True)
    c = mt.tensor([3.0, 4.0])
    assert x.requires_grad and not c.requires_grad
    assert (x * c).requires_grad and (c + x).requires_grad
    assert not (c * 2).requires_grad
    assert x.grad is None


def test_grad_accumulates_and_can_be_zeroed():
    x = mt.tensor(np.array([1.0, -2.0, 3.0], np.float32), requires_grad=True)
    (x * 2).sum().backward()
    assert isinstance(x.grad, mt.Tensor)
    np.testing.assert_allclose(x.grad.numpy(), [2, 2, 2])
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2 + 2, 2 - 4, 2 + 6])
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3, 3, 3])


def test_grad_of_constant_stays_none():
    x = mt.tensor([1.0, 2.0], requires_grad=True)
    c = mt.tensor([3.0, 4.0])
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 4.0])


def test_backward_through_a_freed_graph_raises_as_pytorch():
    a = mt.tensor([1.0, 2.0], requires_grad=True)
    y = a * a
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        (y * 3).sum().backward()
    with pytest.raises(RuntimeError, match="a second time"):
        y.sum().backward()
    assert y.grad is None  # an intermediate never turns into a leaf that collects a gradient
    ta = torch.tensor([1.0, 2.0], requires_grad=True)
    ty = ta * ta
    ty.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        (ty * 3).sum().backward()


def test_retain_graph_keeps_it_for_another_backward():
    for framework in (mt, torch):
        a = framework.tensor([1.0, 2.0], requires_grad=True)
        y = a * a
        y.sum().backward(retain_graph=True)
        (y * 3).sum().backward()
        np.testing.assert_allclose(a.grad.numpy(), [8.0, 16.0])  # 2a, then 3 * 2a


def test_retain_graph_twice_through_a_cnn():
    """Every op's backward leaves what it saved intact when the graph is retained."""
    mt.manual_seed(0)
    nn = mt.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3))
    loss = mt.nn.functional.cross_entropy(net(mt.randn(2, 1, 8, 8)), mt.tensor(np.array([0, 2])))
    loss.backward(retain_graph=True)
    first = [p.grad.numpy().copy() for p in net.parameters()]
    loss.backward()
    for p, g in zip(net.parameters(), first):
        np.testing.assert_allclose(p.grad.numpy(), 2 * g, rtol=1e-4, atol=1e-6)
    with pytest.raises(RuntimeError, match="a second time"):
        loss.backward()


class _WrongShape(mt.autograd.Function):
    """A buggy op whose backward returns a gradient of the wrong (but same-sized) shape."""

    def forward(self, x):
        return x * 2

    def backward(self, g):
        return g.reshape(-1)


def test_a_gradient_of_the_wrong_shape_raises_instead_of_being_reshaped():
    x = mt.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"_WrongShape.backward returned a gradient of shape \(6,\) "
                                           r"for an input of shape \(2, 3\)"):
        _WrongShape.apply(x).sum().backward()
    assert x.grad is None


def test_no_grad_records_nothing():
    x = mt.tensor([1.0, 2.0], requires_grad=True)
    with mt.no_grad():
        y = x * 2 + 1
        z = (y * x).sum()
    assert not y.requires_grad and not z.requires_grad
    np.testing.assert_allclose(y.numpy(), [3.0, 5.0])
    w = x * 2          # recording resumes after the block
    assert w.requires_grad
    w.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])


def test_no_grad_restores_state_after_exception():
    x = mt.tensor([1.0], requires_grad=True)
    with pytest.raises(ZeroDivisionError):
        with mt.no_grad():
            1 / 0
    assert (x * 2).requires_grad


def test_detach():
    x = mt.tensor(np.array([1.0, 2.0, 3.0], np.float32), requires_grad=True)
    d = x.detach()
    assert not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), x.numpy())
    (x.detach() * x).sum().backward()      # the detached factor is a constant
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 2.0, 3.0])


def test_deep_chain_does_not_recurse():
    x = mt.tensor([1.0, 2.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(y.numpy(), [5001.0, 5002.0])
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0])


def test_deep_chain_of_multiplications():
    x = mt.tensor([2.0], requires_grad=True)
    y = x
    for _ in range(3000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


def test_diamond_graph_sums_gradients():
    xn = np.array([0.5, -1.5, 2.0], np.float32)
    x = mt.tensor(xn, requires_grad=True)
    a = x * 2
    b = x + 1
    (a * b).sum().backward()          # d/dx 2x(x+1) = 4x + 2
    np.testing.assert_allclose(x.grad.numpy(), 4 * xn + 2, rtol=1e-6)
    x2 = mt.tensor(xn, requires_grad=True)
    shared = x2 * x2
    (shared + shared * 3).sum().backward()   # intermediate used twice: 4 * 2x
    np.testing.assert_allclose(x2.grad.numpy(), 8 * xn, rtol=1e-6)


def test_backward_with_explicit_gradient_for_non_scalar():
    xn = np.arange(6, dtype=np.float32).reshape(2, 3)
    g = np.array([[1, -1, 2], [0.5, 0, 3]], np.float32)
    x = mt.tensor(xn, requires_grad=True)
    (x * x).backward(mt.tensor(g))
    np.testing.assert_allclose(x.grad.numpy(), 2 * xn * g)


def test_backward_of_non_scalar_without_gradient_raises():
    x = mt.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises((RuntimeError, ValueError)):
        (x * 2).backward()


def test_gradients_match_torch_on_a_small_graph():
    rng = np.random.default_rng(0)
    an, bn = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    ta, tb = torch.tensor(an, requires_grad=True), torch.tensor(bn, requires_grad=True)
    ma, mb = mt.tensor(an, requires_grad=True), mt.tensor(bn, requires_grad=True)
    ((ta @ tb).exp().sum(1) / (ta * ta).sum(1)).mean().backward()
    ((ma @ mb).exp().sum(1) / (ma * ma).sum(1)).mean().backward()
    np.testing.assert_allclose(ma.grad.numpy(), ta.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mb.grad.numpy(), tb.grad.numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- backends
def test_get_backend_and_scoped_backend():
    current = mt.get_backend().name
    assert current in ("numpy", "cupy")
    with mt.backend("numpy"):
        assert mt.get_backend().name == "numpy"
        t = mt.tensor([1.0])
        assert isinstance(t.data, np.ndarray)
    assert mt.get_backend().name == current


def test_scoped_backend_restored_after_exception():
    current = mt.get_backend().name
    with pytest.raises(KeyError):
        with mt.backend("numpy"):
            raise KeyError("boom")
    assert mt.get_backend().name == current


def test_use_backend_sets_default():
    current = mt.get_backend().name
    try:
        mt.use_backend("numpy")
        assert mt.get_backend().name == "numpy"
    finally:
        mt.use_backend(current)


def test_unknown_backend_raises():
    current = mt.get_backend().name
    with pytest.raises((ValueError, RuntimeError, KeyError)) as info:
        mt.use_backend("nonexistent")
    assert "nonexistent" in str(info.value)
    assert mt.get_backend().name == current
    with pytest.raises((ValueError, RuntimeError, KeyError)):
        with mt.backend("nonexistent"):
            pass


def test_backend_unavailable_is_runtime_error():
    assert issubclass(mt.BackendUnavailable, RuntimeError)


@pytest.mark.skipif(HAVE_CUPY, reason="cupy is importable here: this case needs it missing")
def test_use_backend_cupy_without_cupy_raises_backend_unavailable(monkeypatch):
    monkeypatch.delitem(mt.backends._BACKENDS, "cupy", raising=False)  # the stand-in's case
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    current = mt.get_backend().name
    with pytest.raises(mt.BackendUnavailable) as info:
        mt.use_backend("cupy")
    msg = str(info.value)
    assert msg.strip() and "\n" not in msg.strip(), f"reason should be one line: {msg!r}"
    assert mt.get_backend().name == current
    with pytest.raises(mt.BackendUnavailable):
        with mt.backend("cupy"):
            pass
    assert mt.get_backend().name == current


def test_tensor_to_same_backend():
    t = mt.tensor([1.0, 2.0], requires_grad=False)
    u = t.to(mt.get_backend().name)
    np.testing.assert_array_equal(u.numpy(), [1.0, 2.0])


def test_mixing_backends_raises():
    skip_without_cupy()
    with mt.backend("numpy"):
        a = mt.tensor([1.0, 2.0])
    with mt.backend("cupy"):
        b = mt.tensor([1.0, 2.0])
    for op in (lambda: a + b, lambda: b * a, lambda: a @ b):
        with pytest.raises(Exception) as info:
            op()
        assert "backend" in str(info.value).lower() or "numpy" in str(info.value).lower()


def test_to_copies_across_backends():
    skip_without_cupy()
    with mt.backend("numpy"):
        a = mt.tensor(np.arange(4, dtype=np.float32))
    b = a.to("cupy")
    import cupy
    assert isinstance(b.data, cupy.ndarray) and isinstance(b.numpy(), np.ndarray)
    c = b.to("numpy")
    assert isinstance(c.data, np.ndarray)
    np.testing.assert_array_equal(c.numpy(), np.arange(4))


def test_engine_imports_without_torch_or_cupy():
    code = ("import sys; import minitorch_cnn, minitorch_cnn.nn, minitorch_cnn.optim; "
            "bad = [m for m in ('torch', 'cupy') if m in sys.modules]; "
            "assert not bad, f'importing the engine imported {bad}'")
    env = {k: v for k, v in os.environ.items() if k != "MT_TEST_BACKEND"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
