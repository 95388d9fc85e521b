"""Checkpoints: a save/load round trip restores model and optimizer exactly, writes are
atomic, and every kind of bad file gives an error naming the file (and the key)."""
import json
import os

import numpy as np
import pytest

import minitorch_cnn as mt
import minitorch_cnn.nn as nn
from minitorch_cnn import checkpoint as ckpt_mod
from minitorch_cnn.checkpoint import (Checkpoint, CheckpointError, load_checkpoint, load_model,
                                      save_checkpoint)
from minitorch_cnn.training import loss_function, make_optimizer

CONFIG = {"model": "fc2", "dataset": "fashion-mnist", "optimizer": "adam", "lr": 0.01,
          "momentum": 0.0, "batch_size": 8, "seed": 3, "epochs": 4}


def small_net():
    """Conv + BatchNorm (buffers, an int64 counter) + Linear: every kind of state entry."""
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 4))


def batch(seed):
    rng = np.random.default_rng(seed)
    return (mt.tensor(rng.standard_normal((5, 1, 6, 6)).astype(np.float32)),
            rng.integers(0, 4, size=5).astype(np.int64))


def train_steps(model, optimizer, seeds):
    loss_fn = loss_function("cross_entropy")
    for s in seeds:
        x, y = batch(s)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


def make(optimizer_name, seed=0):
    mt.manual_seed(seed)
    model = small_net()
    return model, make_optimizer(optimizer_name, list(model.parameters()), 0.05,
                                 0.9 if optimizer_name == "sgd" else 0.0)


def assert_same_state(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_round_trip_resumes_training_exactly(tmp_path, optimizer_name):
    model, opt = make(optimizer_name)
    train_steps(model, opt, [1, 2])
    history = [{"epoch": 1, "test_acc": 0.5}]
    partial = {"loss_sum": 1.5, "correct": 3, "images": 10, "seconds": 0.25}
    path = save_checkpoint(tmp_path / "c.npz", model, opt, config=CONFIG, epoch=1, batch=7,
                           step=19, history=history, partial=partial)
    ck = load_checkpoint(path)
    assert isinstance(ck, Checkpoint)
    assert (ck.epoch, ck.batch, ck.step) == (1, 7, 19)
    assert ck.config == CONFIG and ck.history == history and ck.partial == partial
    assert_same_state(ck.model_state, model.state_dict())
    assert ck.model_state["1.num_batches_tracked"].dtype == np.int64

    # A fresh model and optimizer loaded from the file continue exactly like the originals.
    model2, opt2 = make(optimizer_name, seed=99)
    model2.load_state_dict(ck.model_state)
    opt2.load_state_dict(ck.optimizer_state)
    train_steps(model, opt, [3, 4])
    train_steps(model2, opt2, [3, 4])
    assert_same_state(model.state_dict(), model2.state_dict())


def test_archive_is_plain_arrays_with_json_meta(tmp_path):
    model, opt = make("adam")
    train_steps(model, opt, [1])
    path = save_checkpoint(tmp_path / "c.npz", model, opt, config=CONFIG, epoch=2, batch=0, step=5)
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        meta = json.loads(z["meta"].tobytes().decode())
        assert all(z[k].dtype != object for k in z.files)
    assert {"model/0.weight", "model/1.running_var", "optim/state/0/exp_avg",
            "optim/state/0/exp_avg_sq", "meta"} <= names
    assert meta["format_version"] == ckpt_mod.FORMAT_VERSION
    assert meta["optimizer"]["scalars"]["0"]["step"] == 1
    assert meta["optimizer"]["param_groups"][0]["lr"] == 0.05
    assert meta["rng"]["seed"] == CONFIG["seed"]


def test_crash_mid_save_leaves_previous_file_whole(tmp_path, monkeypatch):
    model, opt = make("sgd")
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, config=CONFIG, epoch=1, batch=0, step=4)
    before = path.read_bytes()
    train_steps(model, opt, [5])

    def half_written_then_crash(f, **arrays):
        f.write(b"PK\x03\x04 partial archive")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_mod.np, "savez", half_written_then_crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, model, opt, config=CONFIG, epoch=2, batch=0, step=8)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]  # no temporary file left behind
    monkeypatch.undo()
    assert load_checkpoint(path).epoch == 1


def test_interrupt_mid_save_leaves_previous_file_whole(tmp_path, monkeypatch):
    model, opt = make("sgd")
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, config=CONFIG, epoch=1, batch=0, step=4)
    before = path.read_bytes()

    def interrupted(f, **arrays):
        f.write(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, opt, config=CONFIG, epoch=2, batch=3, step=11)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_checkpoint(tmp_path / "nope.npz")


@pytest.mark.parametrize("content,match", [
    (b"this is not an archive", "not a readable .npz"),
    (b"", "not a readable .npz"),
])
def test_not_an_npz(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_npy_file_is_rejected(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(CheckpointError, match=r"weights\.npy.*not a \.npz"):
        load_checkpoint(path)


def test_truncated_archive(tmp_path):
    model, opt = make("adam")
    path = save_checkpoint(tmp_path / "c.npz", model, opt, config=CONFIG, epoch=1, batch=0, step=1)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.npz"):
        load_checkpoint(path)


def test_pickled_entries_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=r"evil\.npz.*'meta'"):
        load_checkpoint(path)


def test_missing_meta_and_missing_keys_are_named(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(2))
    with pytest.raises(CheckpointError, match=r"plain\.npz has no 'meta' entry"):
        load_checkpoint(plain)

    model, opt = make("adam")
    train_steps(model, opt, [1])
    good = save_checkpoint(tmp_path / "good.npz", model, opt, config=CONFIG, epoch=1, batch=0, step=1)
    with np.load(good) as z:
        arrays = dict(z)
    no_moment = dict(arrays)
    del no_moment["optim/state/0/exp_avg"]
    np.savez(tmp_path / "no_moment.npz", **no_moment)
    with pytest.raises(CheckpointError, match=r"no_moment\.npz lacks the optimizer entry "
                                              r"'optim/state/0/exp_avg'"):
        load_checkpoint(tmp_path / "no_moment.npz")

    meta = json.loads(arrays["meta"].tobytes().decode())
    del meta["step"]
    arrays["meta"] = ckpt_mod.encode_json(meta)
    np.savez(tmp_path / "no_step.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"no_step\.npz: metadata lacks the key 'step'"):
        load_checkpoint(tmp_path / "no_step.npz")

    meta["step"], meta["format_version"] = 1, 999
    arrays["meta"] = ckpt_mod.encode_json(meta)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(CheckpointError, match="format version 999"):
        load_checkpoint(tmp_path / "future.npz")


def test_load_model_builds_the_zoo_model(tmp_path):
    mt.manual_seed(1)
    from minitorch_cnn import models

    model = models.get_model("fc2")
    opt = make_optimizer("sgd", list(model.parameters()), 0.1)
    path = save_checkpoint(tmp_path / "fc2.npz", model, opt, config=CONFIG, epoch=1, batch=0, step=2)
    loaded, ck = load_model(path, backend="numpy")
    assert type(loaded) is type(model) and ck.config["model"] == "fc2"
    assert_same_state(loaded.state_dict(), model.state_dict())

    # The weights must fit the model the config names.
    np.savez(tmp_path / "wrong.npz", **{**{k: v for k, v in np.load(path).items() if k != "model/fc1.weight"},
                                        "model/fc1.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(CheckpointError, match=r"wrong\.npz.*fc1\.weight"):
        load_model(tmp_path / "wrong.npz")
