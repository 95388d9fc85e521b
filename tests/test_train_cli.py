"""``python -m minitorch_cnn.train`` end to end on a small subset of Fashion-MNIST: outputs,
exact resumption (from an epoch checkpoint, after Ctrl-C mid-epoch, and after a real SIGINT
to a subprocess), --eval-only, --summary-json, the NaN stop, and clear errors for bad input."""
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import minitorch_cnn as mt
from minitorch_cnn import backends, data, models, training
from minitorch_cnn import train as train_mod
from minitorch_cnn.checkpoint import load_checkpoint
from minitorch_cnn.metrics import MetricsLog, read_metrics

TRAIN_N, TEST_N = 512, 200


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The first images of real Fashion-MNIST as IDX files (or, where the real files are
    missing, class-dependent synthetic images), so every run loads in milliseconds."""
    folder = tmp_path_factory.mktemp("fashion")
    real = data.find_dataset("fashion-mnist", "train") and data.find_dataset("fashion-mnist", "test")
    for split, n, names in (("train", 2 * TRAIN_N, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                            ("test", TEST_N, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        if real:
            images, labels = data.load_dataset("fashion-mnist", split, download=False)
        else:
            rng = np.random.default_rng(len(split))
            labels = rng.integers(0, 10, size=n)
            images = (np.random.default_rng(0).random((10, 28, 28))[labels] * 200
                      + rng.random((n, 28, 28)) * 55).astype(np.uint8)
        data.write_idx(folder / names[0], images[:n].astype(np.uint8))
        data.write_idx(folder / names[1], labels[:n].astype(np.uint8))
    return str(folder)


def args(data_dir, out, *extra, epochs=2):
    return ["--model", "lenet", "--data-dir", data_dir, "--train-subset", str(TRAIN_N),
            "--test-subset", str(TEST_N), "--batch-size", "64", "--epochs", str(epochs),
            "--log-every", "2", "--no-progress", "--out", str(out), *extra]


def weights(path):
    return load_checkpoint(path).model_state


def assert_same_weights(a, b):
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_png(path):
    with open(path, "rb") as f:
        head = f.read(24)
        f.seek(-12, os.SEEK_END)
        tail = f.read()
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", head[16:24])
    assert width > 100 and height > 100
    assert tail[4:8] == b"IEND"


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """Two uninterrupted epochs: the run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    summary = out / "summary.json"
    assert train_mod.main(args(data_dir, out, "--record-filters", "4", "--summary-json", str(summary))) == 0
    return out


def interrupt_at_step(monkeypatch, step):
    """Make Ctrl-C arrive right after global step ``step`` (as on_step would see it)."""
    real = train_mod.train_epoch

    def with_interrupt(*a, on_step, **kw):
        def hook(event):
            on_step(event)
            if event["step"] == step:
                raise KeyboardInterrupt
        return real(*a, on_step=hook, **kw)

    monkeypatch.setattr(train_mod, "train_epoch", with_interrupt)


# ---- a whole run and what it writes ------------------------------------------------------------
def test_outputs_of_a_run(reference):
    rows = read_metrics(reference / "metrics.csv")
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(2, 17, 2))  # 8 batches an epoch, log every 2
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 8), (2, 16)]
    for r in epochs:
        assert all(0 <= r[c] <= 1 for c in ("train_acc", "val_acc", "test_acc"))
        assert r["test_loss"] > 0 and r["images_per_second"] > 0
    for name in ("loss.png", "error.png"):
        assert_png(reference / name)

    summary = json.loads((reference / "summary.json").read_text())
    assert {"model", "backend", "dataset", "epochs", "seed", "test_accuracy", "test_loss",
            "train_seconds", "images_per_second", "checkpoint"} <= set(summary)
    assert (summary["model"], summary["backend"], summary["dataset"], summary["epochs"],
            summary["seed"]) == ("lenet", "numpy", "fashion-mnist", 2, 0)
    assert summary["test_accuracy"] == epochs[-1]["test_acc"]
    assert summary["test_loss"] == pytest.approx(epochs[-1]["test_loss"])
    assert summary["train_seconds"] > 0 and summary["images_per_second"] > 0

    ck = load_checkpoint(summary["checkpoint"])
    assert summary["checkpoint"] == str(reference / "checkpoint.npz")
    assert (ck.epoch, ck.batch, ck.step) == (2, 0, 16)
    assert ck.config["model"] == "lenet" and ck.config["batch_size"] == 64
    assert [h["epoch"] for h in ck.history] == [1, 2]

    with np.load(reference / "filters.npz", allow_pickle=False) as f:
        assert f["steps"].tolist() == [0, 4, 8, 12, 16]
        assert f["weights"].shape == (5, 6, 1, 5, 5) and f["weights"].dtype == np.float32
        np.testing.assert_array_equal(f["weights"][-1], ck.model_state["conv1.weight"])
        mt.manual_seed(0)
        np.testing.assert_array_equal(f["weights"][0], models.get_model("lenet").conv1.weight.numpy())


def test_same_seed_same_weights_other_seed_others(data_dir, reference, tmp_path):
    assert train_mod.main(args(data_dir, tmp_path / "again")) == 0
    assert_same_weights(weights(tmp_path / "again" / "checkpoint.npz"), weights(reference / "checkpoint.npz"))
    assert train_mod.main(args(data_dir, tmp_path / "seed1", "--seed", "1", "--epochs", "1")) == 0
    other = weights(tmp_path / "seed1" / "checkpoint.npz")["conv1.weight"]
    assert not np.array_equal(other, weights(reference / "checkpoint.npz")["conv1.weight"])


# ---- resuming -------------------------------------------------------------------------------------
def test_resume_from_an_epoch_checkpoint(data_dir, reference, tmp_path):
    out = tmp_path / "run"
    assert train_mod.main(args(data_dir, out, epochs=1)) == 0
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    # Rows a killed run logged after its last checkpoint are dropped when it resumes.
    MetricsLog(out).append("step", epoch=2, step=10, train_loss=9.0, train_acc=0.0)
    # --epochs is the total: this trains epoch 2 only, on the checkpoint's own settings.
    assert train_mod.main(["--resume", str(out / "checkpoint.npz"), "--epochs", "2", "--no-progress"]) == 0
    assert_same_weights(weights(out / "checkpoint.npz"), weights(reference / "checkpoint.npz"))
    rows, ref_rows = read_metrics(out / "metrics.csv"), read_metrics(reference / "metrics.csv")
    assert [(r["kind"], r["epoch"], r["step"]) for r in rows] == [
        (r["kind"], r["epoch"], r["step"]) for r in ref_rows]
    assert 9.0 not in [r["train_loss"] for r in rows]


def test_ctrl_c_mid_epoch_then_resume(data_dir, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupt_at_step(monkeypatch, 11)  # batch 3 of epoch 2
    assert train_mod.main(args(data_dir, out, "--record-filters", "4")) == 130
    err = capsys.readouterr().err
    assert "after batch 3 of epoch 2" in err and f"--resume {out / 'checkpoint.npz'}" in err
    ck = load_checkpoint(out / "checkpoint.npz")
    assert (ck.epoch, ck.batch, ck.step) == (1, 3, 11) and ck.partial["images"] == 3 * 64
    monkeypatch.undo()

    # The resumed run keeps the first one's --log-every and --record-filters.
    assert train_mod.main(["--resume", str(out / "checkpoint.npz"), "--no-progress"]) == 0
    assert_same_weights(weights(out / "checkpoint.npz"), weights(reference / "checkpoint.npz"))
    rows, ref_rows = read_metrics(out / "metrics.csv"), read_metrics(reference / "metrics.csv")
    assert [(r["kind"], r["step"]) for r in rows] == [(r["kind"], r["step"]) for r in ref_rows]
    last, ref_last = rows[-1], ref_rows[-1]
    assert last["train_loss"] == pytest.approx(ref_last["train_loss"], rel=1e-9)
    assert (last["train_acc"], last["test_acc"]) == (ref_last["train_acc"], ref_last["test_acc"])
    with np.load(out / "filters.npz") as f, np.load(reference / "filters.npz") as g:
        assert f["steps"].tolist() == g["steps"].tolist()
        np.testing.assert_array_equal(f["weights"], g["weights"])


def test_sigint_to_a_subprocess_then_resume(tmp_path):
    """The real thing: run `python -m minitorch_cnn.train`, send SIGINT while epoch 2 runs,
    resume, and compare with an uninterrupted subprocess run of the same seed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    real = data.find_dataset("fashion-mnist", "train") and data.find_dataset("fashion-mnist", "test")
    if not real:
        pytest.skip("Fashion-MNIST files not found (apt-get install dataset-fashion-mnist)")
    common = [sys.executable, "-m", "minitorch_cnn.train", "--model", "lenet", "--train-subset", "1024",
              "--test-subset", "200", "--batch-size", "16", "--epochs", "3", "--log-every", "1",
              "--no-progress"]
    uninterrupted = subprocess.Popen(common + ["--out", str(tmp_path / "a")], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = subprocess.Popen(common + ["--out", str(tmp_path / "b")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv_path = tmp_path / "b" / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if csv_path.exists() and "\nstep,2," in csv_path.read_text():
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "resume with: python -m minitorch_cnn.train --resume" in err and "Traceback" not in err
    ck = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert (ck.epoch, ck.batch) < (3, 0) and ck.step == 64 * ck.epoch + ck.batch

    resumed = subprocess.run(common[:3] + ["--resume", str(tmp_path / "b" / "checkpoint.npz"), "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stderr.read()
    uninterrupted.stderr.close()
    assert_same_weights(weights(tmp_path / "b" / "checkpoint.npz"), weights(tmp_path / "a" / "checkpoint.npz"))


# ---- evaluation and summaries ---------------------------------------------------------------------
def test_eval_only(data_dir, reference, tmp_path, capsys):
    summary_path = tmp_path / "eval.json"
    ckpt = reference / "checkpoint.npz"
    assert train_mod.main(["--eval-only", "--resume", str(ckpt), "--data-dir", data_dir,
                           "--summary-json", str(summary_path)]) == 0
    assert "test loss" in capsys.readouterr().out
    summary = json.loads(summary_path.read_text())
    trained = json.loads((reference / "summary.json").read_text())
    assert summary["test_accuracy"] == trained["test_accuracy"]
    assert summary["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-6)
    assert (summary["model"], summary["epochs"], summary["checkpoint"]) == ("lenet", 2, str(ckpt))
    assert os.path.getmtime(ckpt) < os.path.getmtime(summary_path)  # the checkpoint was only read


# ---- failures ----------------------------------------------------------------------------------------
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = training.LOSSES["cross_entropy"]
    calls = []

    def nan_from_step_11(output, target, reduction):
        calls.append(reduction == "mean")  # training's loss; evaluation sums
        loss = real(output, target, reduction)
        return loss * float("nan") if sum(calls) >= 11 and calls[-1] else loss

    monkeypatch.setitem(training.LOSSES, "cross_entropy", nan_from_step_11)
    assert train_mod.main(args(data_dir, out, epochs=3)) == 1
    err = capsys.readouterr().err
    assert "became nan at step 11" in err and "last good checkpoint" in err
    # The advice is a command that works: a new run from the good weights, a smaller lr.
    assert f"--init-from {out / 'checkpoint.npz'} --lr 0.01" in err and len(err.splitlines()) == 1
    ck = load_checkpoint(out / "checkpoint.npz")
    assert (ck.epoch, ck.batch, ck.step) == (1, 0, 8)
    assert all(np.isfinite(v).all() for v in ck.model_state.values())


def test_unavailable_backend_exits_2_with_the_reason(monkeypatch, capsys):
    def unavailable(name):
        raise backends.BackendUnavailable("CuPy is not installed (pip install cupy-cuda12x)")

    monkeypatch.setattr(train_mod.backends, "use_backend", unavailable)
    assert train_mod.main(["--backend", "cupy", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "backend 'cupy' is unavailable: CuPy is not installed" in err and "Traceback" not in err


def test_out_of_memory_suggests_a_smaller_batch(data_dir, tmp_path, monkeypatch, capsys):
    def out_of_memory(*a, **kw):
        raise MemoryError("Out of memory allocating 1,073,741,824 bytes")

    monkeypatch.setattr(train_mod, "train_epoch", out_of_memory)
    assert train_mod.main(args(data_dir, tmp_path)) == 1
    assert "smaller --batch-size" in capsys.readouterr().err


def test_threads_flag_sets_the_engines_threads(data_dir, tmp_path):
    before = mt.get_num_threads()
    try:
        assert train_mod.main(args(data_dir, tmp_path, "--threads", "3", epochs=1)) == 0
        assert mt.get_num_threads() == 3
    finally:
        mt.set_num_threads(before)
    assert (tmp_path / "checkpoint.npz").exists()


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
    (["--dataset", "imagenet"], "argument --dataset: invalid choice"),
    (["--epochs", "-1"], "argument --epochs: must be >= 0, got -1"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["--lr", "0"], "argument --lr: must be > 0"),
    (["--momentum", "1.5"], "argument --momentum: must be < 1"),
    (["--model", "lenet", "--dataset", "cifar10"], "--dataset cifar10 has images of shape (3, 32, 32) "
                                                   "but model lenet takes (1, 28, 28)"),
    (["--model", "cifar-lenet", "--dataset", "mnist"], "--dataset mnist has images of shape"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
    (["--eval-only"], "--eval-only needs --resume PATH"),
    (["--resume", "/nonexistent/c.npz"], "--resume: checkpoint /nonexistent/c.npz does not exist"),
    (["--model", "fc2", "--record-filters", "10"], "--record-filters: model fc2 has no Conv2d layer"),
])
def test_bad_flags_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train_mod.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_refuses_what_would_change_the_run(reference, capsys):
    ckpt = str(reference / "checkpoint.npz")
    for argv, message in ((["--model", "fc2"], "--model fc2 differs from the model of checkpoint"),
                          (["--lr", "0.5"], "--lr 0.5 differs from checkpoint"),
                          (["--epochs", "1"], "--epochs 1 is fewer than the 2 epoch(s)")):
        with pytest.raises(SystemExit):
            train_mod.main(["--resume", ckpt, *argv])
        assert message in capsys.readouterr().err


def test_resume_of_a_finished_run_trains_nothing(reference, data_dir, tmp_path, capsys):
    copy = tmp_path / "c.npz"
    copy.write_bytes((reference / "checkpoint.npz").read_bytes())
    assert train_mod.main(["--resume", str(copy), "--out", str(tmp_path), "--no-progress"]) == 0
    assert "2 epoch(s), 16 steps" in capsys.readouterr().out
    assert_same_weights(weights(copy), weights(reference / "checkpoint.npz"))


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        train_mod.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--backend", "--model", "--dataset", "--epochs", "--batch-size", "--lr", "--momentum",
                 "--optimizer", "--seed", "--data-dir", "--checkpoint", "--resume", "--out",
                 "--summary-json", "--eval-only", "--train-subset", "--test-subset", "--log-every",
                 "--record-filters", "--no-progress"):
        assert flag in text
    assert train_mod.DEFAULT_MODEL in text


def test_defaults_without_flags():
    parser = train_mod.build_parser()
    config = train_mod.resolve_config(parser.parse_args([]), parser)
    spec = models.get_spec(train_mod.DEFAULT_MODEL)
    assert config["model"] == train_mod.DEFAULT_MODEL and config["dataset"] == "fashion-mnist"
    assert config["backend"] == "numpy" and config["seed"] == 0
    assert (config["epochs"], config["batch_size"], config["lr"], config["optimizer"]) == (
        spec.epochs, spec.batch_size, spec.lr, spec.optimizer)
    assert config["out"] == os.path.join("runs", f"{spec.name}-fashion-mnist-0")
    assert config["checkpoint"] == os.path.join(config["out"], "checkpoint.npz")
