"""The training library: optimizers and losses by name, evaluation, exact resumption at any
batch boundary (dropout included), NaN detection, Ctrl-C at batch boundaries, and a few
hundred steps of a zoo model on real Fashion-MNIST."""
import os
import signal

import numpy as np
import pytest

import minitorch_cnn as mt
import minitorch_cnn.nn as nn
import minitorch_cnn.nn.functional as F
from minitorch_cnn import data, models, optim, training
from minitorch_cnn.checkpoint import load_checkpoint, save_checkpoint
from minitorch_cnn.training import (NonFiniteLossError, TrainingInterrupted, evaluate,
                                    interrupts_at_batch_boundaries, loss_function, make_optimizer,
                                    step_seed, train_epoch)


def synthetic(n, seed=0, classes=4):
    """Images whose class is a noisy copy of a per-class prototype: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((classes, 12, 12))
    labels = rng.integers(0, classes, size=n)
    images = np.clip(prototypes[labels] + 0.3 * rng.standard_normal((n, 12, 12)), 0, 1)
    return (images * 255).astype(np.uint8), labels.astype(np.int64)


class DropNet(nn.Module):
    """Conv, BatchNorm, Dropout2d and Dropout: every source of run-to-run variation."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop2d = nn.Dropout2d(0.2)
        self.fc = nn.Linear(4 * 5 * 5, classes)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        x = F.max_pool2d(self.drop2d(F.relu(self.bn(self.conv(x)))), 2)
        return F.log_softmax(self.fc(self.drop(x.flatten(1))), dim=1)


def setup_run(seed=0):
    mt.manual_seed(seed)
    model = DropNet()
    return model, make_optimizer("adam", list(model.parameters()), 0.01)


def loader(n=96, batch_size=16, seed=0):
    images, labels = synthetic(n)
    return data.DataLoader(images, labels, batch_size=batch_size, shuffle=True, seed=seed)


def params(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# ---- building blocks ---------------------------------------------------------------------
def test_make_optimizer_by_name():
    model = DropNet()
    sgd = make_optimizer("sgd", list(model.parameters()), 0.1, momentum=0.9)
    assert isinstance(sgd, optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert isinstance(make_optimizer("adam", list(model.parameters()), 0.01), optim.Adam)
    with pytest.raises(ValueError, match="'rmsprop'"):
        make_optimizer("rmsprop", list(model.parameters()), 0.1)
    with pytest.raises(ValueError, match="momentum"):
        make_optimizer("adam", list(model.parameters()), 0.1, momentum=0.9)


def test_loss_function_by_name():
    logits = mt.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    target = np.array([0, 2])
    expected = -np.log(np.exp([2.0, 3.0]) / np.exp(logits.numpy()).sum(1)).mean()
    assert loss_function("cross_entropy")(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert loss_function("nll")(F.log_softmax(logits, 1), target).item() == pytest.approx(expected, rel=1e-6)
    assert loss_function("nll", "sum")(F.log_softmax(logits, 1), target).item() == pytest.approx(2 * expected, rel=1e-6)
    with pytest.raises(ValueError, match="'hinge'"):
        loss_function("hinge")


def test_step_seed_is_deterministic_and_distinct():
    seeds = {step_seed(s, e, b) for s in (0, 1) for e in (0, 1) for b in range(50)}
    assert len(seeds) == 200
    assert step_seed(7, 2, 3) == step_seed(7, 2, 3)


def test_evaluate_matches_direct_computation_and_restores_mode():
    model, _ = setup_run()
    images, labels = synthetic(40, seed=5)
    test = data.DataLoader(images, labels, batch_size=16)
    for mode in (True, False):
        model.train(mode)
        loss, acc = evaluate(model, test, "nll")
        assert model.training is mode and model.drop.training is mode
    model.eval()
    with mt.no_grad():
        out = model(mt.Tensor(test.images)).numpy()
    assert loss == pytest.approx(-out[np.arange(40), labels].mean(), rel=1e-5)
    assert acc == pytest.approx((out.argmax(1) == labels).mean())


# ---- one epoch -------------------------------------------------------------------------------
def test_train_epoch_learns_and_reports():
    model, opt = setup_run()
    train = loader(n=200)
    events = []
    first = train_epoch(model, opt, train, "nll", epoch=0, seed=0, on_step=events.append, log_every=4)
    for e in range(1, 4):
        last = train_epoch(model, opt, train, "nll", epoch=e, seed=0, log_every=4)
    assert first["images"] == 200 and last["images"] == 200
    assert last["loss"] < first["loss"] and last["accuracy"] > 0.8
    assert [ev["step"] for ev in events] == list(range(1, len(train) + 1))
    logged = [ev for ev in events if ev["log"] is not None]
    assert [ev["batch"] for ev in logged] == [3, 7, 11]
    assert all(0 <= ev["log"]["accuracy"] <= 1 and ev["log"]["images_per_second"] > 0 for ev in logged)


def test_same_seed_same_run_other_seed_other_run():
    results = []
    for seed in (0, 0, 1):
        model, opt = setup_run()
        train_epoch(model, opt, loader(seed=seed), "nll", epoch=0, seed=seed)
        results.append(params(model))
    assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])
    assert not np.array_equal(results[0]["fc.weight"], results[2]["fc.weight"])


@pytest.mark.parametrize("stop_after", [1, 4, 6])  # mid-epoch, and after the epoch's last batch
def test_resume_at_any_batch_reproduces_the_uninterrupted_run(tmp_path, stop_after):
    train = loader()
    assert len(train) == 6
    model, opt = setup_run()
    for e in range(2):
        stats = train_epoch(model, opt, train, "nll", epoch=e, seed=0, log_every=4)
    reference = params(model)

    model, opt = setup_run()

    def interrupt(event):
        if event["batch"] + 1 == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        train_epoch(model, opt, train, "nll", epoch=0, seed=0, on_step=interrupt, log_every=4)
    stop = info.value
    assert (stop.epoch, stop.next_batch, stop.step) == (0, stop_after, stop_after)
    path = save_checkpoint(tmp_path / "c.npz", model, opt, config={"seed": 0}, epoch=stop.epoch,
                           batch=stop.next_batch, step=stop.step, partial=stop.totals)

    ck = load_checkpoint(path)
    model, opt = setup_run(seed=123)  # different initial weights: all must come from the file
    model.load_state_dict(ck.model_state)
    opt.load_state_dict(ck.optimizer_state)
    first = train_epoch(model, opt, train, "nll", epoch=ck.epoch, seed=0, start_batch=ck.batch,
                        totals=ck.partial, log_every=4)
    assert first["images"] == 96
    last = train_epoch(model, opt, train, "nll", epoch=1, seed=0, log_every=4)
    for key, value in reference.items():
        np.testing.assert_array_equal(params(model)[key], value, err_msg=key)
    assert last["loss"] == stats["loss"] and last["accuracy"] == stats["accuracy"]


def test_nonfinite_loss_names_its_step(monkeypatch):
    real = training.LOSSES["nll"]
    calls = []

    def nan_at_third_batch(output, target, reduction):
        calls.append(1)
        loss = real(output, target, reduction=reduction)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setitem(training.LOSSES, "nll", nan_at_third_batch)
    model, opt = setup_run()
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 9 \(batch 3 of epoch 2\)") as info:
        train_epoch(model, opt, loader(), "nll", epoch=1, seed=0, log_every=50)
    assert (info.value.epoch, info.value.batch, info.value.step) == (1, 2, 9)


def test_huge_learning_rate_is_caught():
    mt.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12 * 12, 16), nn.Linear(16, 4))
    opt = make_optimizer("sgd", list(model.parameters()), 1e4)
    with np.errstate(all="ignore"), pytest.raises(NonFiniteLossError, match="loss became .* at step"):
        for epoch in range(3):
            train_epoch(model, opt, loader(), "cross_entropy", epoch=epoch, seed=0, log_every=4)


def test_interrupt_is_never_raised_mid_step():
    """Inside interrupts_at_batch_boundaries, SIGINT lets the step finish; a second one
    raises at once."""
    model, opt = setup_run()

    def send_sigint(event):
        if event["batch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with interrupts_at_batch_boundaries():
        with pytest.raises(TrainingInterrupted) as info:
            train_epoch(model, opt, loader(), "nll", epoch=0, seed=0, on_step=send_sigint)
        assert info.value.next_batch == 2 and info.value.totals["images"] == 32
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---- real data ----------------------------------------------------------------------------------
@pytest.mark.skipif(data.find_dataset("fashion-mnist", "train") is None,
                    reason="Fashion-MNIST files not found (apt-get install dataset-fashion-mnist, "
                           "or set MINITORCH_DATA)")
def test_small_cnn_learns_real_fashion_mnist():
    """500 steps of small-cnn (its defaults: batch 64, sgd lr 0.01 momentum 0.5) on real
    Fashion-MNIST reach well above chance (10%) on 2,000 test images."""
    spec = models.get_spec("small-cnn")
    steps = 500
    mean, std = data.NORMALIZATION["fashion-mnist"]
    train_x, train_y = data.load_dataset("fashion-mnist", "train", download=False)
    test_x, test_y = data.load_dataset("fashion-mnist", "test", download=False)
    n = steps * spec.batch_size
    train = data.DataLoader(train_x[:n], train_y[:n], batch_size=spec.batch_size, shuffle=True,
                            mean=mean, std=std)
    test = data.DataLoader(test_x[:2000], test_y[:2000], batch_size=500, mean=mean, std=std)
    mt.manual_seed(0)
    model = models.get_model(spec.name)
    opt = make_optimizer(spec.optimizer, list(model.parameters()), spec.lr, spec.momentum)
    stats = train_epoch(model, opt, train, spec.loss, epoch=0, seed=0, log_every=100)
    loss, acc = evaluate(model, test, spec.loss)
    assert len(train) == steps and stats["images"] == n
    assert acc > 0.70, f"test accuracy {acc:.3f} after {steps} steps"
    assert loss < 0.9
