"""nn.fuse_modules and nn.BatchNormReLU2d: fusion is something a user asks for, it shows
in the model, and it gives the same numbers as the modules one after the other."""
import numpy as np
import pytest

import minitorch_cnn as mt
import minitorch_cnn.nn as nn
import minitorch_cnn.optim as optim


def _net():
    """Three BatchNorm2d + ReLU runs: with a 2x2 pool, with an overlapping padded pool, and
    last, with no pool after it."""
    mt.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                         nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.ReLU())


@pytest.fixture
def normalise_calls(monkeypatch):
    """``(relu, pool fused)`` of every BatchNorm2d._normalise call."""
    calls = []
    real = nn.BatchNorm2d._normalise
    monkeypatch.setattr(nn.BatchNorm2d, "_normalise",
                        lambda self, x, relu, pool=None: calls.append((relu, pool is not None))
                        or real(self, x, relu, pool))
    return calls


def _run(net, x, train):
    """Output, input gradient, parameter gradients and state after one forward and backward."""
    net.train(train)
    for p in net.parameters():
        p.grad = None
    xt = mt.tensor(x, requires_grad=True)
    out = net(xt)
    (out * mt.tensor(np.linspace(-1, 1, out.numel(), dtype=np.float32).reshape(out.shape))).sum().backward()
    return [out.numpy(), xt.grad.numpy()] + [p.grad.numpy() for p in net.parameters()] + \
        [np.array(b) for b in net.state_dict().values()]


@pytest.mark.parametrize("backend", ["numpy", "numpy-reference"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fused_model_gives_the_unfused_numbers(train, backend, normalise_calls):
    """On the NumPy backend's fused C kernels and on the reference bodies; a NaN stays NaN
    through the fused ReLU and pool as through F.relu."""
    x = np.random.default_rng(4).standard_normal((5, 2, 9, 9)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    with mt.backend(backend):
        separate = _run(_net(), x, train)
        assert normalise_calls == [(False, False)] * 3  # no silent fusion
        normalise_calls.clear()
        fused_net = nn.fuse_modules(_net())
        fused = _run(fused_net, x, train)
    assert normalise_calls == [(True, True), (True, True), (True, False)]
    assert np.isnan(fused[0]).any()
    for a, b in zip(fused, separate):
        if backend == "numpy":
            np.testing.assert_array_equal(a, b)
        else:  # the reference pool and ReLU run in another order on the same values
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_fusion_is_visible_and_keeps_the_state_dict():
    net = _net()
    fused = nn.fuse_modules(net)
    assert fused is not net and isinstance(net[1], nn.BatchNorm2d)  # a copy by default
    assert [type(m).__name__ for m in fused][:4] == ["Conv2d", "BatchNormReLU2d", "Identity", "Identity"]
    assert isinstance(fused[9], nn.BatchNormReLU2d) and fused[9].max_pool is None
    assert "BatchNormReLU2d" in repr(fused) and "(max_pool): MaxPool2d" in repr(fused)
    assert list(fused.state_dict()) == list(net.state_dict())
    for a, b in zip(fused.state_dict().values(), net.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    fused.load_state_dict(net.state_dict())


def test_inplace_fusion_keeps_the_parameters_an_optimizer_holds():
    net = _net()
    opt = optim.SGD(net.parameters(), lr=0.1)
    before = net[1].weight
    assert nn.fuse_modules(net, inplace=True) is net
    assert net[1].weight is before
    x = mt.tensor(np.random.default_rng(1).standard_normal((4, 2, 9, 9)).astype(np.float32))
    net(x).sum().backward()
    opt.step()
    assert not np.array_equal(before.numpy(), np.ones(4, np.float32))  # trained through the fused module


def test_named_groups_and_their_errors():
    net = nn.fuse_modules(_net(), [["1", "2"]])
    assert isinstance(net[1], nn.BatchNormReLU2d) and net[1].max_pool is None
    assert isinstance(net[3], nn.MaxPool2d) and isinstance(net[5], nn.BatchNorm2d)
    with pytest.raises(ValueError, match=r"expected a BatchNorm2d.*0 \(Conv2d\)"):
        nn.fuse_modules(_net(), [["0", "1"]])
    with pytest.raises(AttributeError, match="'9x'"):
        nn.fuse_modules(_net(), [["9x", "2"]])


def test_modules_with_a_forward_of_their_own_are_not_fused():
    class LeakyReLU(nn.ReLU):
        def forward(self, x):
            return mt.nn.functional.relu(x) - 0.01 * mt.nn.functional.relu(-x)

    patched = nn.MaxPool2d(2)
    patched.forward = lambda t: -t
    for net in (nn.Sequential(nn.BatchNorm2d(2), LeakyReLU(), nn.MaxPool2d(2)),
                nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), patched)):
        fused = nn.fuse_modules(net)
        kinds = [type(m).__name__ for m in fused]
        assert kinds[0] == ("BatchNormReLU2d" if kinds[1] == "Identity" else "BatchNorm2d")
        assert type(fused[-1]) is type(net[-1])  # the module with its own code stays
