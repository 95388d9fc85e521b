"""Optimizers against PyTorch, step for step, on a small conv net.

The net (conv-relu-maxpool-flatten-linear) starts from the same weights in both
frameworks (torch's seeded init, loaded into the engine) and sees the same batches
(NumPy default_rng).  Parameters after every step: atol=1e-5, rtol=1e-4 (float32).
"""
import copy
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from optest import assert_close, mt_backend, to_numpy  # noqa: E402,F401  (mt_backend: autouse fixture)

import minitorch_cnn as mt  # noqa: E402
import minitorch_cnn.nn as nn  # noqa: E402
import minitorch_cnn.nn.functional as F  # noqa: E402
import minitorch_cnn.optim as optim  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4
STEPS = 5


def build(ns):
    return ns.Sequential(ns.Conv2d(1, 4, 3), ns.ReLU(), ns.MaxPool2d(2), ns.Flatten(), ns.Linear(4 * 3 * 3, 5))


def batches(n=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((6, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, size=6).astype(np.int64))
            for _ in range(n)]


def initial_state():
    torch.manual_seed(0)
    return {k: v.detach().numpy().copy() for k, v in build(tnn).state_dict().items()}


def torch_model():
    m = build(tnn)
    m.load_state_dict({k: torch.tensor(v) for k, v in initial_state().items()})
    return m


def mt_model(state=None):
    m = build(nn)
    m.load_state_dict({k: v.copy() for k, v in (state or initial_state()).items()})
    return m


def torch_run(make_opt, data):
    model = torch_model()
    opt = make_opt(torch.optim, model.parameters())
    states, losses = [], []
    for x, y in data:
        opt.zero_grad()
        loss = TF.cross_entropy(model(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        states.append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
    return states, losses


def mt_steps(model, opt, data):
    states, losses = [], []
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(model(mt.tensor(x)), mt.tensor(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        states.append({k: np.array(v) for k, v in model.state_dict().items()})
    return states, losses


OPTIMIZERS = [
    ("sgd", lambda o, p: o.SGD(p, lr=0.1)),
    ("sgd_momentum", lambda o, p: o.SGD(p, lr=0.1, momentum=0.9)),
    ("sgd_momentum_dampening", lambda o, p: o.SGD(p, lr=0.1, momentum=0.9, dampening=0.5)),
    ("sgd_nesterov", lambda o, p: o.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    ("sgd_weight_decay", lambda o, p: o.SGD(p, lr=0.1, weight_decay=0.05)),
    ("sgd_momentum_weight_decay", lambda o, p: o.SGD(p, lr=0.05, momentum=0.8, weight_decay=0.01)),
    ("sgd_nesterov_weight_decay", lambda o, p: o.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("adam_default", lambda o, p: o.Adam(p)),
    ("adam_lr", lambda o, p: o.Adam(p, lr=0.01)),
    ("adam_weight_decay", lambda o, p: o.Adam(p, lr=0.01, weight_decay=0.1)),
    ("adam_betas_eps", lambda o, p: o.Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6)),
]


@pytest.mark.parametrize("name,make_opt", OPTIMIZERS, ids=[c[0] for c in OPTIMIZERS])
def test_steps_match_torch(name, make_opt):
    data = batches()
    t_states, t_losses = torch_run(make_opt, data)
    model = mt_model()
    m_states, m_losses = mt_steps(model, make_opt(optim, model.parameters()), data)
    np.testing.assert_allclose(m_losses, t_losses, atol=ATOL, rtol=RTOL, err_msg="losses differ")
    init = initial_state()
    for step, (ms, ts) in enumerate(zip(m_states, t_states)):
        for k, v in ts.items():
            assert_close(ms[k], v, atol=ATOL, rtol=RTOL, what=f"{k} after step {step + 1}")
    for k in init:
        assert not np.allclose(m_states[-1][k], init[k], atol=1e-4), f"{name} did not move {k}"


@pytest.mark.parametrize("name,make_opt", [OPTIMIZERS[1], OPTIMIZERS[6], OPTIMIZERS[9]],
                         ids=["sgd_momentum", "sgd_nesterov_weight_decay", "adam_weight_decay"])
def test_state_dict_round_trip(name, make_opt):
    data = batches()
    model = mt_model()
    ref_states, ref_losses = mt_steps(model, make_opt(optim, model.parameters()), data)

    model = mt_model()
    opt = make_opt(optim, model.parameters())
    mt_steps(model, opt, data[:2])
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    del model, opt

    resumed = mt_model(saved_model)
    opt = make_opt(optim, resumed.parameters())
    opt.load_state_dict(saved_opt)
    states, losses = mt_steps(resumed, opt, data[2:])
    np.testing.assert_allclose(losses, ref_losses[2:], atol=1e-6, rtol=1e-6)
    for k, v in ref_states[-1].items():
        np.testing.assert_allclose(states[-1][k], v, atol=1e-6, rtol=1e-6, err_msg=f"{k} after resuming")

    # and without the optimizer state the run differs: the test can tell
    fresh = mt_model(saved_model)
    _, fresh_losses = mt_steps(fresh, make_opt(optim, fresh.parameters()), data[2:])
    assert not np.allclose(fresh_losses, ref_losses[2:], atol=1e-6, rtol=1e-6)


def test_state_dict_has_torch_layout():
    model = mt_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mt_steps(model, opt, batches(1))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert len(sd["param_groups"]) == 1 and sd["param_groups"][0]["lr"] == 0.1
    assert sd["param_groups"][0]["momentum"] == 0.9
    assert sorted(sd["param_groups"][0]["params"]) == list(range(len(list(model.parameters()))))


def test_zero_grad():
    model = mt_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    F.cross_entropy(model(mt.tensor(x)), mt.tensor(y)).backward()
    assert all(p.grad is not None and np.any(to_numpy(p.grad)) for p in model.parameters())
    opt.zero_grad()
    for p in model.parameters():
        assert p.grad is None or not np.any(to_numpy(p.grad))


def test_gradients_do_not_leak_between_steps_without_zero_grad():
    # without zero_grad gradients accumulate, as in torch: two backward() then one step
    data = batches(2)
    tm = torch_model()
    topt = torch.optim.SGD(tm.parameters(), lr=0.1)
    mm = mt_model()
    mopt = optim.SGD(mm.parameters(), lr=0.1)
    for x, y in data:
        TF.cross_entropy(tm(torch.tensor(x)), torch.tensor(y)).backward()
        F.cross_entropy(mm(mt.tensor(x)), mt.tensor(y)).backward()
    topt.step()
    mopt.step()
    msd = mm.state_dict()
    for k, v in tm.state_dict().items():
        assert_close(msd[k], v, atol=ATOL, rtol=RTOL, what=k)


@pytest.mark.parametrize("make_opt", [lambda o, p: o.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
                                      lambda o, p: o.Adam(p, lr=0.1, weight_decay=0.1)], ids=["sgd", "adam"])
def test_step_skips_parameters_without_grad(make_opt):
    used, unused = nn.Linear(3, 2), nn.Linear(3, 2)
    params = list(used.parameters()) + list(unused.parameters())
    before = {k: np.array(v) for k, v in unused.state_dict().items()}
    opt = make_opt(optim, params)
    for _ in range(2):
        opt.zero_grad()
        used(mt.tensor(np.ones((4, 3), np.float32))).sum().backward()
        opt.step()
    for k, v in unused.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"a parameter without .grad changed ({k})")
    assert not np.array_equal(used.state_dict()["weight"], unused.state_dict()["weight"])


def test_param_group_lr_can_be_changed():
    # the usual way to change the learning rate in PyTorch
    data = batches(3)
    tm = torch_model()
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.5)
    mm = mt_model()
    mopt = optim.SGD(mm.parameters(), lr=0.1, momentum=0.5)
    for i, (x, y) in enumerate(data):
        for g in topt.param_groups:
            g["lr"] = 0.1 / (i + 1)
        for g in mopt.param_groups:
            g["lr"] = 0.1 / (i + 1)
        topt.zero_grad()
        mopt.zero_grad()
        TF.cross_entropy(tm(torch.tensor(x)), torch.tensor(y)).backward()
        F.cross_entropy(mm(mt.tensor(x)), mt.tensor(y)).backward()
        topt.step()
        mopt.step()
    msd = mm.state_dict()
    for k, v in tm.state_dict().items():
        assert_close(msd[k], v, atol=ATOL, rtol=RTOL, what=k)


# ---- argument checks: PyTorch's, with PyTorch's exception and message -----------------
BAD_ARGUMENTS = [
    ("sgd_negative_lr", lambda o, p: o.SGD(p, lr=-1)),
    ("sgd_negative_momentum", lambda o, p: o.SGD(p, lr=0.1, momentum=-1)),
    ("sgd_negative_weight_decay", lambda o, p: o.SGD(p, lr=0.1, weight_decay=-1)),
    ("sgd_nesterov_without_momentum", lambda o, p: o.SGD(p, lr=0.1, nesterov=True)),
    ("sgd_nesterov_with_dampening", lambda o, p: o.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    ("sgd_empty", lambda o, p: o.SGD([], lr=0.1)),
    ("sgd_lr_checked_before_params", lambda o, p: o.SGD([], lr=-0.5)),
    ("sgd_group_of_a_set", lambda o, p: o.SGD([{"params": set(p)}], lr=0.1)),
    ("sgd_not_tensors", lambda o, p: o.SGD([1.0], lr=0.1)),
    ("sgd_non_leaf", lambda o, p: o.SGD([p[0] * 2], lr=0.1)),
    ("sgd_parameter_in_two_groups", lambda o, p: o.SGD([{"params": p}, {"params": p[:1]}], lr=0.1)),
    ("adam_negative_lr", lambda o, p: o.Adam(p, lr=-1)),
    ("adam_nan_lr", lambda o, p: o.Adam(p, lr=float("nan"))),
    ("adam_negative_eps", lambda o, p: o.Adam(p, eps=-1e-8)),
    ("adam_beta0_above_one", lambda o, p: o.Adam(p, betas=(1.5, 0.9))),
    ("adam_beta0_negative", lambda o, p: o.Adam(p, betas=(-0.1, 0.9))),
    ("adam_beta1_one", lambda o, p: o.Adam(p, betas=(0.9, 1.0))),
    ("adam_negative_weight_decay", lambda o, p: o.Adam(p, weight_decay=-0.1)),
]


def raised(make):
    with pytest.raises(Exception) as info:
        make()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("make_opt", [c[1] for c in BAD_ARGUMENTS], ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments_raise_what_torch_raises(make_opt):
    expected = raised(lambda: make_opt(torch.optim, list(torch_model().parameters())))
    assert raised(lambda: make_opt(optim, list(mt_model().parameters()))) == expected


@pytest.mark.parametrize("make_opt", [lambda o, p: o.SGD(p, lr=0.1), lambda o, p: o.Adam(p)], ids=["sgd", "adam"])
def test_a_single_tensor_is_not_a_parameter_list(make_opt):
    t_type, t_message = raised(lambda: make_opt(torch.optim, next(torch_model().parameters())))
    m_type, m_message = raised(lambda: make_opt(optim, next(mt_model().parameters())))
    prefix = "params argument given to the optimizer should be an iterable of Tensors or dicts, but got "
    assert t_type is m_type is TypeError and t_message.startswith(prefix)
    assert m_message == prefix + "minitorch_cnn.nn.modules.Parameter"  # where torch names torch.FloatTensor


def test_group_options_are_checked_and_merged_with_the_defaults():
    params = list(mt_model().parameters())
    # A group may set nesterov alone: the momentum it needs comes from the defaults.
    opt = optim.SGD([{"params": params[:2], "nesterov": True}, {"params": params[2:]}], lr=0.1, momentum=0.9)
    assert [g["nesterov"] for g in opt.param_groups] == [True, False]
    assert opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="^Invalid learning rate: -0.1$"):
        optim.SGD([{"params": params[:2], "lr": -0.1}, {"params": params[2:]}], lr=0.1)
    opt.add_param_group({"params": [nn.Parameter(mt.zeros(3))], "lr": 0.5})
    assert opt.param_groups[-1]["lr"] == 0.5 and opt.param_groups[-1]["momentum"] == 0.9
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": params[:1]})
