"""Shared helper of the engine's op tests, in the style of tinygrad's test_ops.py.

One call of :func:`check_op` checks one op against PyTorch: it draws the same random
inputs (NumPy ``default_rng``, never torch's generator) for both frameworks, runs
the op in each, compares every forward output and then, for every input that requires
a gradient, the gradients after ``(out * W).sum().backward()`` with the same fixed
random weights ``W``.  A new op therefore costs one line of test::

    check_op([(3, 4), (4, 5)], lambda a, b: a @ b)                 # same code for both
    check_op([(2, 3, 7, 5)], lambda x: torch.nn.functional.relu(x), lambda x: F.relu(x))

:func:`gradcheck` compares the engine's analytic gradients to central finite
differences (float64), without PyTorch.

Backend: the engine backend the tests run on comes from the environment variable
``MT_TEST_BACKEND``: ``numpy``, ``numpy-threads``, ``cupy-standin``, ``cupy``, a comma
list, or ``all``; by default ``numpy,numpy-threads,cupy-standin``. ``numpy-threads`` is
the NumPy backend on two threads with every piece of work split between them, however
small (see :func:`split_everything`): the split kernels and products then run on the
tests' small arrays, which the backend would otherwise compute whole. ``cupy-standin`` is
the engine's CuPy backend over ``fake_cupy.py``, a NumPy-backed stand-in for CuPy, so
that the CuPy backend's logic runs in CI without a GPU; while it is requested and no real
CuPy backend can run here, :func:`skip_without_cupy` installs it as "cupy" in the other
cases too (tests that move tensors between backends). Each name becomes a pytest parameter of the autouse
fixture :func:`mt_backend`, which test modules import (``from optest import
mt_backend``). A cupy case skips with "CuPy/GPU not available: <reason>" when the engine
raises ``mt.BackendUnavailable``: it needs a real device.
"""
import contextlib
import functools
import os

import numpy as np
import pytest
import torch

import minitorch_cnn as mt

ENV_VAR = "MT_TEST_BACKEND"


ALL_BACKENDS = ("numpy", "numpy-threads", "cupy-standin", "cupy")
DEFAULT_BACKENDS = "numpy,numpy-threads,cupy-standin"
# the engine backend each test backend runs on
ENGINE_BACKEND = {"numpy-threads": "numpy", "cupy-standin": "cupy"}


def requested_backends():
    raw = os.environ.get(ENV_VAR, DEFAULT_BACKENDS).strip().lower() or DEFAULT_BACKENDS
    if raw == "all":
        return list(ALL_BACKENDS)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise ValueError(f"{ENV_VAR}={raw!r}: unknown backend(s) {unknown}; "
                         f"use {', '.join(ALL_BACKENDS)}, a comma list or all")
    return names


SPLIT_LIMITS = ("WAKE_BYTES", "WAKE_FLOPS", "SPLIT_BYTES", "SPLIT_FLOPS")


@contextlib.contextmanager
def split_everything(threads=2):
    """The NumPy backend on ``threads`` threads, splitting all work between them."""
    host = mt.backends.get_backend_by_name("numpy")
    previous = host.threads
    host.set_num_threads(threads)
    for limit in SPLIT_LIMITS:
        setattr(host, limit, 0)
    try:
        yield host
    finally:
        for limit in SPLIT_LIMITS:
            delattr(host, limit)
        host.set_num_threads(previous)


BACKENDS = requested_backends()


# the ExitStack of the running test's backend (see backend_for_test)
_TEST_STACK = []


def skip_without_cupy():
    """Skip the test, with the reason, unless a CuPy backend can run here: the real one,
    else the stand-in when ``cupy-standin`` is requested (installed until the test ends)."""
    if not real_cupy_runs() and "cupy-standin" in BACKENDS and _TEST_STACK:
        import fake_cupy

        if "cupy" not in mt.backends._BACKENDS:
            _TEST_STACK[-1].enter_context(fake_cupy.installed())
        return
    try:
        mt.backends.get_backend_by_name("cupy")
    except mt.BackendUnavailable as exc:
        pytest.skip(f"CuPy/GPU not available: {exc}")


def activate_backend(name):
    """Make ``name`` the engine's default backend, or skip the test if it can't run here."""
    try:
        mt.use_backend(name)
    except mt.BackendUnavailable as exc:
        pytest.skip(f"CuPy/GPU not available: {exc}")


@functools.lru_cache(maxsize=None)
def real_cupy_runs():
    """Whether the real CuPy backend can run here (asked once per session, by the first
    test's backend_for_test, before any stand-in is installed)."""
    try:
        mt.backends.get_backend_by_name("cupy")
    except mt.BackendUnavailable:
        return False
    return True


def backend_for_test(name):
    """Fixture body: ``name`` active during the test, the previous backend restored after."""
    previous = mt.get_backend().name
    real_cupy_runs()
    with contextlib.ExitStack() as stack:
        if name == "cupy-standin":
            import fake_cupy

            stack.enter_context(fake_cupy.installed())
        activate_backend(ENGINE_BACKEND.get(name, name))
        _TEST_STACK.append(stack)
        try:
            if name == "numpy-threads":
                stack.enter_context(split_everything())
            yield name
        finally:
            _TEST_STACK.pop()
            mt.use_backend(previous)


@pytest.fixture(params=BACKENDS, autouse=True)
def mt_backend(request):
    """Autouse, parametrized by ``MT_TEST_BACKEND``: every test runs on that backend."""
    yield from backend_for_test(request.param)


def to_numpy(x):
    """A NumPy array from an engine Tensor (via ``.numpy()``), a torch tensor or anything array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy"):
        # lenient on purpose (np.asarray): that .numpy() returns an ndarray, 0-d results
        # included, is checked once in test_tensor.py rather than failing every op test
        return np.asarray(x.numpy())
    return np.asarray(x)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def assert_close(got, expected, *, atol=1e-4, rtol=1e-4, what="value", check_dtype=True):
    g, e = to_numpy(got), to_numpy(expected)
    assert g.shape == e.shape, f"{what}: shape {g.shape}, expected {e.shape}"
    if check_dtype:
        assert g.dtype == e.dtype, f"{what}: dtype {g.dtype}, expected {e.dtype}"
    np.testing.assert_allclose(g, e, atol=atol, rtol=rtol, err_msg=f"{what} differs from PyTorch")


def _per_input(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def make_inputs(shapes, *, low=-2.0, high=2.0, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    lows, highs = _per_input(low, len(shapes)), _per_input(high, len(shapes))
    return [rng.uniform(lo, hi, size=s).astype(dtype) for s, lo, hi in zip(shapes, lows, highs)], rng


def check_op(shapes, torch_fn, mt_fn=None, *, low=-2.0, high=2.0, atol=1e-4, rtol=1e-4,
             grad_atol=None, grad_rtol=None, grad=True, dtype=np.float32, inputs=None,
             requires_grad=None, seed=0, check_dtype=True):
    """Check one op against PyTorch, forward and backward.

    shapes: input shapes, drawn uniform in [low, high) (low/high: scalars or one per
        input) as ``dtype``; or ``inputs``: explicit NumPy arrays (integer arrays,
        e.g. class targets, never require a gradient).
    torch_fn / mt_fn: called with the inputs as torch / engine tensors; ``mt_fn=None``
        reuses ``torch_fn`` (operators and methods share names in both frameworks).
        Outputs may be tuples (e.g. ``x.max(1)``): every element is compared forward;
        the gradient flows from the first one.
    requires_grad: one bool per input; default: ``grad`` for floating inputs.
    Forward is compared with atol/rtol, gradients with grad_atol/grad_rtol (default:
    the same).  Returns ``(mt_out, torch_out)``.
    """
    rng = np.random.default_rng(seed)
    if inputs is None:
        arrays, rng = make_inputs(shapes, low=low, high=high, dtype=dtype, seed=seed)
    else:
        arrays = [np.array(a, copy=True) for a in inputs]
    if requires_grad is None:
        requires_grad = [bool(grad) and np.issubdtype(a.dtype, np.floating) for a in arrays]
    assert len(requires_grad) == len(arrays)
    mt_fn = torch_fn if mt_fn is None else mt_fn
    grad_atol = atol if grad_atol is None else grad_atol
    grad_rtol = rtol if grad_rtol is None else grad_rtol

    t_in = [torch.tensor(a, requires_grad=bool(r)) for a, r in zip(arrays, requires_grad)]
    m_in = [mt.tensor(a.copy(), requires_grad=bool(r)) for a, r in zip(arrays, requires_grad)]
    t_out, m_out = torch_fn(*t_in), mt_fn(*m_in)
    t_outs, m_outs = _as_tuple(t_out), _as_tuple(m_out)
    assert len(m_outs) == len(t_outs), f"op returned {len(m_outs)} outputs, PyTorch {len(t_outs)}"
    for i, (mo, to) in enumerate(zip(m_outs, t_outs)):
        assert_close(mo, to, atol=atol, rtol=rtol, what=f"forward output {i}", check_dtype=check_dtype)

    if grad and any(requires_grad):
        t0, m0 = t_outs[0], m_outs[0]
        weights = np.asarray(rng.standard_normal(tuple(t0.shape))).astype(to_numpy(t0).dtype)
        (t0 * torch.tensor(weights)).sum().backward()
        (m0 * mt.tensor(weights.copy())).sum().backward()
        for i, (mi, ti, r) in enumerate(zip(m_in, t_in, requires_grad)):
            if not r:
                continue
            assert mi.grad is not None, f"input {i} requires grad but its .grad is None after backward()"
            expected = ti.grad if ti.grad is not None else torch.zeros_like(ti)
            assert_close(mi.grad, expected, atol=grad_atol, rtol=grad_rtol, what=f"gradient of input {i}",
                         check_dtype=check_dtype)
    return m_out, t_out


def gradcheck(mt_fn, inputs, *, wrt=None, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Analytic gradients of ``(mt_fn(*inputs) * W).sum()`` against central differences.

    inputs: NumPy arrays; float ones become float64 engine tensors
    (``mt.tensor(a, dtype=np.float64)``), integer ones (targets) stay integer.
    wrt: indices of the inputs to check (default: every float input).
    """
    arrays = [np.array(a, dtype=np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating)
              else np.array(a) for a in inputs]
    floats = [i for i, a in enumerate(arrays) if a.dtype == np.float64]
    wrt = floats if wrt is None else list(wrt)
    rng = np.random.default_rng(seed)

    def make(a, rg=False):
        if a.dtype == np.float64:
            return mt.tensor(a.copy(), requires_grad=rg, dtype=np.float64)
        return mt.tensor(a.copy())

    ts = [make(a, i in wrt) for i, a in enumerate(arrays)]
    out = mt_fn(*ts)
    out_np = to_numpy(out)
    assert out_np.dtype == np.float64, f"float64 inputs gave a {out_np.dtype} output"
    weights = np.asarray(rng.standard_normal(out_np.shape), dtype=np.float64)
    (out * mt.tensor(weights.copy(), dtype=np.float64)).sum().backward()

    def loss():
        with mt.no_grad():
            o = mt_fn(*[make(a) for a in arrays])
        return float((to_numpy(o).astype(np.float64) * weights).sum())

    for i in wrt:
        assert ts[i].grad is not None, f"input {i}: .grad is None after backward()"
        analytic = to_numpy(ts[i].grad)
        assert analytic.shape == arrays[i].shape, f"input {i}: gradient shape {analytic.shape}"
        assert analytic.dtype == np.float64, f"input {i}: gradient dtype {analytic.dtype}"
        numeric = np.zeros_like(arrays[i])
        a = arrays[i]
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + eps
            fp = loss()
            a[idx] = orig - eps
            fm = loss()
            a[idx] = orig
            numeric[idx] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, atol=atol, rtol=rtol,
                                   err_msg=f"input {i}: analytic gradient != finite differences")
