"""nn modules: forward/backward against PyTorch, initialisation, state_dict, train/eval.

The same module tree is built in both frameworks by one function taking the ``nn``
namespace (torch.nn or minitorch_cnn.nn); weights are copied torch -> engine through
``load_state_dict`` of NumPy arrays.  Tolerances (float32): atol=1e-5, rtol=1e-4 for
outputs, atol=1e-4, rtol=1e-4 for gradients.
"""

import numpy as np
import pytest
import torch
import torch.nn as tnn

from optest import assert_close, mt_backend, skip_without_cupy, to_numpy  # noqa: E402,F401  (mt_backend: autouse fixture)

import minitorch_cnn as mt  # noqa: E402
import minitorch_cnn.nn as nn  # noqa: E402


def torch_to_numpy_state(tmodule):
    return {k: v.detach().cpu().numpy().copy() for k, v in tmodule.state_dict().items()}


def numpy_to_torch_state(sd):
    return {k: torch.as_tensor(np.array(v)) for k, v in sd.items()}


def twin(build):
    """The same module in torch (seeded init) and in the engine, with torch's weights."""
    torch.manual_seed(0)
    tm = build(tnn)
    mm = build(nn)
    mm.load_state_dict(torch_to_numpy_state(tm))
    return tm, mm


def rand(*shape, seed=0, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def ones_like_ns(ns, n):
    return torch.ones(n) if ns is tnn else mt.ones(n)


# --------------------------------------------------------------------------- every module vs torch
MODULE_CASES = [
    ("conv", lambda ns: ns.Conv2d(3, 4, 3), (2, 3, 7, 5)),
    ("conv_pairs_nobias", lambda ns: ns.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), bias=False), (2, 2, 9, 7)),
    ("conv_positional", lambda ns: ns.Conv2d(1, 2, 5, 2, 2), (3, 1, 9, 9)),
    ("maxpool", lambda ns: ns.MaxPool2d(2), (2, 3, 7, 5)),
    ("maxpool_s_p", lambda ns: ns.MaxPool2d(3, stride=2, padding=1), (2, 3, 9, 9)),
    ("avgpool", lambda ns: ns.AvgPool2d(2), (2, 3, 7, 5)),
    ("avgpool_s_p", lambda ns: ns.AvgPool2d(3, 1, 1), (2, 3, 7, 5)),
    ("linear", lambda ns: ns.Linear(5, 3), (4, 5)),
    ("linear_nobias", lambda ns: ns.Linear(5, 3, bias=False), (1, 5)),
    ("relu", lambda ns: ns.ReLU(), (2, 3, 4)),
    ("flatten", lambda ns: ns.Flatten(), (2, 3, 4, 5)),
    ("flatten_2", lambda ns: ns.Flatten(2), (2, 3, 4, 5)),
    ("flatten_kw", lambda ns: ns.Flatten(start_dim=0), (2, 3, 4)),
    ("logsoftmax", lambda ns: ns.LogSoftmax(dim=1), (4, 6)),
    ("logsoftmax_last", lambda ns: ns.LogSoftmax(-1), (2, 3, 5)),
    ("softmax", lambda ns: ns.Softmax(dim=1), (4, 6)),
    ("batchnorm", lambda ns: ns.BatchNorm2d(3), (4, 3, 5, 5)),
    ("batchnorm_eps_momentum", lambda ns: ns.BatchNorm2d(3, eps=1e-3, momentum=0.3), (4, 3, 5, 5)),
    ("batchnorm_positional", lambda ns: ns.BatchNorm2d(2, 1e-2, 0.5), (3, 2, 4, 4)),
    ("dropout_p0", lambda ns: ns.Dropout(0.0), (4, 5)),
    ("dropout2d_p0", lambda ns: ns.Dropout2d(0.0), (2, 3, 4, 4)),
    ("sequential", lambda ns: ns.Sequential(ns.Conv2d(2, 3, 3, padding=1), ns.BatchNorm2d(3), ns.ReLU(),
                                            ns.MaxPool2d(2), ns.Flatten(), ns.Linear(3 * 4 * 3, 5), ns.LogSoftmax(dim=1)),
     (3, 2, 8, 7)),
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,build,shape", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_module_matches_torch(name, build, shape, train):
    tm, mm = twin(build)
    tm.train(train)
    mm.train(train)
    xn = rand(*shape, seed=1)
    tx, mx = torch.tensor(xn, requires_grad=True), mt.tensor(xn, requires_grad=True)
    tout, mout = tm(tx), mm(mx)
    assert_close(mout, tout, atol=1e-5, rtol=1e-4, what=f"{name} output")
    w = np.random.default_rng(2).standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.tensor(w)).sum().backward()
    (mout * mt.tensor(w)).sum().backward()
    assert_close(mx.grad, tx.grad, atol=1e-4, rtol=1e-4, what=f"{name} input gradient")
    tparams = dict(tm.named_parameters())
    mparams = dict(mm.named_parameters())
    assert sorted(mparams) == sorted(tparams)
    for k, tp in tparams.items():
        assert mparams[k].grad is not None, f"{name}: {k}.grad is None"
        assert_close(mparams[k].grad, tp.grad, atol=1e-4, rtol=1e-4, what=f"{name} gradient of {k}")
    msd, tsd = mm.state_dict(), torch_to_numpy_state(tm)   # running stats after the forward
    for k, v in tsd.items():
        assert_close(np.asarray(msd[k]), v, atol=1e-5, rtol=1e-5, what=f"{name} state {k}", check_dtype=False)


@pytest.mark.parametrize("loss", ["CrossEntropyLoss", "NLLLoss"])
def test_loss_modules(loss):
    xn = rand(6, 4, seed=3)
    target = np.array([0, 3, 1, 2, 2, 0], np.int64)
    tx, mx = torch.tensor(xn, requires_grad=True), mt.tensor(xn, requires_grad=True)
    tl = getattr(tnn, loss)()(tx, torch.tensor(target))
    ml = getattr(nn, loss)()(mx, mt.tensor(target))
    assert_close(ml, tl, atol=1e-5, rtol=1e-5, what=f"{loss} value")
    tl.backward()
    ml.backward()
    assert_close(mx.grad, tx.grad, atol=1e-6, rtol=1e-5, what=f"{loss} gradient")


# --------------------------------------------------------------------------- a small net
def build_net(ns):
    class Block(ns.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = ns.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn = ns.BatchNorm2d(cout)
            self.act = ns.ReLU()
            self.factor = 2            # plain attributes: not in the state_dict
            self.tags = ["block"]

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Net(ns.Module):
        def __init__(self):
            super().__init__()
            self.stem = ns.Conv2d(1, 4, 3, stride=1, padding=1)
            self.block = Block(4, 6)
            self.pool = ns.MaxPool2d(2)
            self.features = ns.Sequential(ns.Conv2d(6, 6, (3, 2), padding=(1, 0)), ns.BatchNorm2d(6), ns.ReLU(),
                                          ns.Sequential(ns.AvgPool2d(2), ns.Dropout2d(0.2)))
            self.head = ns.Sequential(ns.Flatten(), ns.Dropout(0.5), ns.Linear(12, 10))
            self.temperature = ns.Parameter(ones_like_ns(ns, 1) * 1.5)
            self.out = ns.LogSoftmax(dim=1)

        def forward(self, x):
            return self.out(self.head(self.features(self.pool(self.block(self.stem(x))))) * self.temperature)

    return Net()


NET_INPUT = (3, 1, 8, 6)

EXPECTED_KEYS = {
    "temperature", "stem.weight", "stem.bias", "block.conv.weight",
    "block.bn.weight", "block.bn.bias", "block.bn.running_mean", "block.bn.running_var", "block.bn.num_batches_tracked",
    "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias", "features.1.running_mean",
    "features.1.running_var", "features.1.num_batches_tracked", "head.2.weight", "head.2.bias",
}


def test_state_dict_keys_and_shapes_match_torch():
    torch.manual_seed(0)
    tsd = build_net(tnn).state_dict()
    msd = build_net(nn).state_dict()
    assert set(tsd) == EXPECTED_KEYS   # the test's own premise
    assert set(msd) == set(tsd), f"missing {set(tsd) - set(msd)}, extra {set(msd) - set(tsd)}"
    for k, v in msd.items():
        assert isinstance(v, np.ndarray), f"state_dict[{k!r}] is a {type(v).__name__}, not a NumPy array"
        assert v.shape == tuple(tsd[k].shape), f"{k}: shape {v.shape}, torch {tuple(tsd[k].shape)}"
        assert v.dtype == tsd[k].numpy().dtype, f"{k}: dtype {v.dtype}, torch {tsd[k].numpy().dtype}"


def test_state_dict_and_named_parameters_order_match_torch():
    torch.manual_seed(0)
    tnet, mnet = build_net(tnn), build_net(nn)
    assert list(mnet.state_dict()) == list(tnet.state_dict())
    assert [k for k, _ in mnet.named_parameters()] == [k for k, _ in tnet.named_parameters()]


def test_torch_state_dict_loads_as_is_and_gives_identical_logits():
    torch.manual_seed(0)
    tnet = build_net(tnn)
    tnet.train()
    with torch.no_grad():   # non-trivial running statistics
        for s in range(3):
            tnet(torch.tensor(rand(*NET_INPUT, seed=10 + s)))
    mnet = build_net(nn)
    mnet.load_state_dict(torch_to_numpy_state(tnet))
    tnet.eval()
    mnet.eval()
    xn = rand(*NET_INPUT, seed=20)
    with torch.no_grad():
        tout = tnet(torch.tensor(xn))
    mout = mnet(mt.tensor(xn))
    assert_close(mout, tout, atol=1e-5, rtol=1e-5, what="logits")
    for k, v in torch_to_numpy_state(tnet).items():
        assert_close(np.asarray(mnet.state_dict()[k]), v, atol=0, rtol=0, what=k, check_dtype=False)


def test_our_state_dict_loads_into_torch():
    mt.manual_seed(3)
    mnet = build_net(nn)
    mnet.train()
    for s in range(2):
        mnet(mt.tensor(rand(*NET_INPUT, seed=30 + s)))
    sd = mnet.state_dict()
    assert int(np.asarray(sd["block.bn.num_batches_tracked"])) == 2
    tnet = build_net(tnn)
    tnet.load_state_dict(numpy_to_torch_state(sd))      # strict
    tnet.eval()
    mnet.eval()
    xn = rand(*NET_INPUT, seed=40)
    with torch.no_grad():
        tout = tnet(torch.tensor(xn))
    assert_close(mnet(mt.tensor(xn)), tout, atol=1e-5, rtol=1e-5, what="logits")
    assert int(tnet.block.bn.num_batches_tracked) == 2


def test_training_step_gradients_match_torch():
    tnet, mnet = twin(lambda ns: ns.Sequential(ns.Conv2d(1, 3, 3), ns.BatchNorm2d(3), ns.ReLU(), ns.MaxPool2d(2),
                                               ns.Flatten(), ns.Linear(24, 4)))
    xn, target = rand(5, 1, 6, 10, seed=50), np.array([0, 1, 2, 3, 1], np.int64)
    tl = tnn.CrossEntropyLoss()(tnet(torch.tensor(xn)), torch.tensor(target))
    ml = nn.CrossEntropyLoss()(mnet(mt.tensor(xn)), mt.tensor(target))
    assert_close(ml, tl, atol=1e-5, rtol=1e-5, what="loss")
    tl.backward()
    ml.backward()
    mp = dict(mnet.named_parameters())
    for k, p in tnet.named_parameters():
        assert_close(mp[k].grad, p.grad, atol=1e-5, rtol=1e-4, what=f"gradient of {k}")


# --------------------------------------------------------------------------- load_state_dict errors
def _small():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


def _error_types():
    return (RuntimeError, KeyError, ValueError)


def test_strict_load_missing_key_names_it():
    m = _small()
    sd = m.state_dict()
    del sd["3.bias"]
    with pytest.raises(_error_types()) as info:
        m.load_state_dict(sd)
    assert "3.bias" in str(info.value)


def test_strict_load_unexpected_key_names_it():
    m = _small()
    sd = m.state_dict()
    sd["7.extra_weight"] = np.zeros(3, np.float32)
    with pytest.raises(_error_types()) as info:
        m.load_state_dict(sd)
    assert "7.extra_weight" in str(info.value)


@pytest.mark.parametrize("strict", [True, False])
def test_load_wrong_shape_names_the_key(strict):
    m = _small()
    sd = m.state_dict()
    sd["1.running_var"] = np.ones(5, np.float32)
    with pytest.raises(_error_types()) as info:
        m.load_state_dict(sd, strict=strict)     # PyTorch raises on size mismatch even with strict=False
    assert "1.running_var" in str(info.value)


def test_failed_strict_load_names_every_bad_key():
    m = _small()
    sd = m.state_dict()
    del sd["0.weight"]
    sd["bogus"] = np.zeros(1, np.float32)
    with pytest.raises(_error_types()) as info:
        m.load_state_dict(sd)
    assert "0.weight" in str(info.value) and "bogus" in str(info.value)


def test_non_strict_load_ignores_missing_and_unexpected():
    src, dst = _small(), _small()
    before = dst.state_dict()
    sd = src.state_dict()
    del sd["0.weight"]
    sd["bogus.weight"] = np.zeros(2, np.float32)
    result = dst.load_state_dict(sd, strict=False)
    after = dst.state_dict()
    np.testing.assert_array_equal(after["0.weight"], before["0.weight"])   # untouched
    np.testing.assert_array_equal(after["3.weight"], src.state_dict()["3.weight"])  # loaded
    np.testing.assert_array_equal(after["0.bias"], src.state_dict()["0.bias"])
    assert "bogus.weight" not in after
    # PyTorch returns a (missing_keys, unexpected_keys) named tuple
    assert list(result.missing_keys) == ["0.weight"] and list(result.unexpected_keys) == ["bogus.weight"]


def test_loaded_state_is_a_copy():
    m = _small()
    sd = {k: np.array(v) for k, v in m.state_dict().items()}
    sd["3.bias"] = np.full(3, 7.0, np.float32)
    m.load_state_dict(sd)
    sd["3.bias"][:] = 0.0       # mutating the source afterwards must not reach the module
    np.testing.assert_array_equal(m.state_dict()["3.bias"], np.full(3, 7.0))


# --------------------------------------------------------------------------- init
@pytest.mark.parametrize("build,fan_in", [(lambda: nn.Linear(400, 300), 400), (lambda: nn.Conv2d(16, 32, 3), 144),
                                          (lambda: nn.Conv2d(3, 64, (5, 2)), 30)])
def test_default_weight_init_is_kaiming_uniform(build, fan_in):
    mt.manual_seed(0)
    w = to_numpy(build().weight).astype(np.float64).ravel()
    bound = 1 / np.sqrt(fan_in)        # kaiming_uniform(a=sqrt(5)): gain*sqrt(3/fan_in) = 1/sqrt(fan_in)
    assert np.all(np.abs(w) <= bound * (1 + 1e-6))
    assert np.abs(w).max() > 0.97 * bound, "weights don't reach the bound"
    assert abs(w.mean()) < 0.05 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound / np.sqrt(3), "not uniform: wrong spread"
    hist, _ = np.histogram(w, bins=10, range=(-bound, bound))
    assert np.all(np.abs(hist / w.size - 0.1) < 0.03), f"not uniform: {hist}"


@pytest.mark.parametrize("build,fan_in", [(lambda: nn.Linear(50, 2000), 50), (lambda: nn.Conv2d(4, 2000, 3), 36)])
def test_default_bias_init_is_uniform_1_over_sqrt_fan_in(build, fan_in):
    mt.manual_seed(0)
    b = to_numpy(build().bias).astype(np.float64)
    bound = 1 / np.sqrt(fan_in)
    assert np.all(np.abs(b) <= bound * (1 + 1e-6))
    assert np.abs(b).max() > 0.95 * bound
    assert abs(b.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)
    hist, _ = np.histogram(b, bins=5, range=(-bound, bound))
    assert np.all(np.abs(hist / b.size - 0.2) < 0.05), f"not uniform: {hist}"


def test_params_are_float32_parameters_requiring_grad():
    net = build_net(nn)
    params = list(net.parameters())
    assert len(params) == 12
    for p in params:
        assert isinstance(p, nn.Parameter) and isinstance(p, mt.Tensor)
        assert p.requires_grad and to_numpy(p).dtype == np.float32


def test_init_depends_on_manual_seed():
    mt.manual_seed(7)
    a = to_numpy(nn.Linear(10, 10).weight)
    mt.manual_seed(7)
    b = to_numpy(nn.Linear(10, 10).weight)
    c = to_numpy(nn.Linear(10, 10).weight)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_batchnorm_init():
    sd = nn.BatchNorm2d(5).state_dict()
    np.testing.assert_array_equal(sd["weight"], np.ones(5))
    np.testing.assert_array_equal(sd["bias"], np.zeros(5))
    np.testing.assert_array_equal(sd["running_mean"], np.zeros(5))
    np.testing.assert_array_equal(sd["running_var"], np.ones(5))
    assert int(np.asarray(sd["num_batches_tracked"])) == 0
    assert sorted(k for k, _ in nn.BatchNorm2d(5).named_parameters()) == ["bias", "weight"]


# --------------------------------------------------------------------------- module mechanics
def test_parameters_named_parameters_children():
    torch.manual_seed(0)
    tnet, mnet = build_net(tnn), build_net(nn)
    assert [type(c).__name__ for c in mnet.children()] == [type(c).__name__ for c in tnet.children()]
    mnames = {k: tuple(p.shape) for k, p in mnet.named_parameters()}
    tnames = {k: tuple(p.shape) for k, p in tnet.named_parameters()}
    assert mnames == tnames
    assert len(list(mnet.parameters())) == len(list(tnet.parameters()))
    assert all(a is b for a, b in zip(mnet.parameters(), (p for _, p in mnet.named_parameters())))


def test_sequential_indexing_len_and_iteration():
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
    assert len(seq) == 3
    assert isinstance(seq[0], nn.Conv2d) and isinstance(seq[2], nn.Flatten)
    assert [type(m).__name__ for m in seq] == ["Conv2d", "ReLU", "Flatten"]


def test_train_eval_propagate_to_children():
    net = build_net(nn)
    assert net.training
    assert net.eval() is net
    mods = [net, net.block, net.block.bn, net.features, net.features[3], net.features[3][1], net.head[1]]
    assert not any(m.training for m in mods)
    assert net.train() is net
    assert all(m.training for m in mods)
    net.train(False)
    assert not any(m.training for m in mods)


def test_train_eval_change_dropout():
    mt.manual_seed(0)
    seq = nn.Sequential(nn.Sequential(nn.Dropout(0.5)), nn.ReLU())
    x = mt.ones(100, 100)
    out = to_numpy(seq(x))
    assert 0.4 < (out == 0).mean() < 0.6
    seq.eval()
    np.testing.assert_array_equal(to_numpy(seq(x)), np.ones((100, 100)))
    d2 = nn.Dropout2d(0.5)
    x4 = mt.ones(8, 50, 2, 2)
    assert (to_numpy(d2(x4)) == 0).any()
    d2.eval()
    np.testing.assert_array_equal(to_numpy(d2(x4)), np.ones((8, 50, 2, 2)))


def test_train_eval_change_batchnorm():
    tbn, mbn = twin(lambda ns: ns.BatchNorm2d(3, momentum=0.2))
    for s in range(3):
        xn = rand(4, 3, 5, 5, seed=60 + s, low=-1, high=3)
        tout, mout = tbn(torch.tensor(xn)), mbn(mt.tensor(xn))
        assert_close(mout, tout, atol=1e-5, rtol=1e-4, what=f"training forward {s}")
    for k, v in torch_to_numpy_state(tbn).items():
        assert_close(np.asarray(mbn.state_dict()[k]), v, atol=1e-6, rtol=1e-5, what=k, check_dtype=False)
    assert int(np.asarray(mbn.state_dict()["num_batches_tracked"])) == 3
    train_out = to_numpy(mbn(mt.tensor(rand(4, 3, 5, 5, seed=70))))
    tbn(torch.tensor(rand(4, 3, 5, 5, seed=70)))
    tbn.eval()
    mbn.eval()
    stats = {k: np.array(v) for k, v in mbn.state_dict().items()}
    xn = rand(4, 3, 5, 5, seed=70)
    eval_out = to_numpy(mbn(mt.tensor(xn)))
    with torch.no_grad():
        assert_close(eval_out, tbn(torch.tensor(xn)), atol=1e-5, rtol=1e-4, what="eval forward")
    assert not np.allclose(eval_out, train_out, atol=1e-3)
    for k, v in mbn.state_dict().items():
        np.testing.assert_array_equal(v, stats[k], err_msg=f"eval forward changed {k}")


def test_zero_grad():
    net = build_net(nn)
    net(mt.tensor(rand(*NET_INPUT, seed=80))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert any(np.any(to_numpy(p.grad) != 0) for p in net.parameters())
    net.zero_grad()
    for p in net.parameters():
        assert p.grad is None or not np.any(to_numpy(p.grad)), "zero_grad left a non-zero gradient"


def test_module_to_numpy():
    with mt.backend("numpy"):
        mt.manual_seed(1)
        net = build_net(nn)
        net.eval()
        xn = rand(*NET_INPUT, seed=90)
        before = to_numpy(net(mt.tensor(xn)))
        assert net.to("numpy") is net
        after = to_numpy(net(mt.tensor(xn)))
    np.testing.assert_array_equal(before, after)
    for p in net.parameters():
        assert isinstance(p.data, np.ndarray)
    for k, v in net.state_dict().items():
        assert isinstance(v, np.ndarray)


def test_module_to_cupy_and_back():
    skip_without_cupy()
    mt.manual_seed(1)
    xn = rand(*NET_INPUT, seed=91)
    with mt.backend("numpy"):  # whatever backend the case made active: the net starts on NumPy
        net = build_net(nn).eval()
        ref = to_numpy(net(mt.tensor(xn)))
    net.to("cupy")
    with mt.backend("cupy"):
        gpu = to_numpy(net(mt.tensor(xn)))
    np.testing.assert_allclose(gpu, ref, atol=1e-5, rtol=1e-5)
    net.to("numpy")
    assert all(isinstance(p.data, np.ndarray) for p in net.parameters())
