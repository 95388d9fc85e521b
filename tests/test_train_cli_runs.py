"""``python -m minitorch_cnn.train`` as a user meets it, each case in a real subprocess: runs
that never lose work (a second run into a folder, resume beside its checkpoint, SIGTERM,
a full disk, the best model kept), --data-dir as the only data, one-line errors with
their exit codes (0 done, 1 failed, 2 unusable input, 130 Ctrl-C, 143 SIGTERM), and the
--init-from, --list-models, --version and --backend auto flags. Tiny data and lenet keep
each run to a few steps."""
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minitorch_cnn
from minitorch_cnn import models
from minitorch_cnn import train as train_mod
from minitorch_cnn.checkpoint import load_checkpoint, save_checkpoint
from minitorch_cnn.metrics import read_metrics
from minitorch_cnn.training import make_optimizer
from fashion_subset import FILES, fashion_subset, write_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_N, TEST_N = 128, 40


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fashion_subset(tmp_path_factory.mktemp("fashion"), TRAIN_N, TEST_N)


def cli(*argv, cwd=None, limit_file_size=None):
    """Run the command in a subprocess of this checkout; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

    def limits():  # a disk that fills at limit_file_size bytes (EFBIG instead of ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, "-m", "minitorch_cnn.train", *map(str, argv)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=240,
                          preexec_fn=limits if limit_file_size else None)


def run_args(data_dir, *extra, epochs=1):
    return [str(a) for a in ("--model", "lenet", "--data-dir", data_dir, "--batch-size", 64,
                             "--epochs", epochs, "--log-every", 1, "--no-progress", *extra)]


def one_line_error(result, code, *fragments):
    """The run exited with ``code`` and said why in one line holding every fragment."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("error:", "python -m minitorch_cnn.train: error:")), \
        result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def assert_same_weights(a, b):
    a, b = load_checkpoint(a).model_state, load_checkpoint(b).model_state
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished 2-epoch run on one thread, shared (read-only) by the tests below."""
    out = tmp_path_factory.mktemp("finished")
    result = cli(*run_args(data_dir, "--out", out, "--threads", "1", "--summary-json",
                           out / "summary.json", epochs=2))
    assert result.returncode == 0, result.stderr
    return out, result


def copy_run(source, dest):
    shutil.copytree(source, dest)
    return dest


# ---- 1. a second run never destroys the first ---------------------------------------------------
def test_a_fresh_run_into_a_folder_holding_a_run_refuses_unless_overwrite(data_dir, finished, tmp_path):
    out = copy_run(finished[0], tmp_path / "run")
    before = {name: (out / name).read_bytes() for name in ("checkpoint.npz", "best.npz", "metrics.csv")}
    one_line_error(cli(*run_args(data_dir, "--out", out, "--seed", "5")), 2, out, "holds a run",
                   "--overwrite")
    assert {name: (out / name).read_bytes() for name in before} == before

    assert cli(*run_args(data_dir, "--out", out, "--seed", "5", "--overwrite")).returncode == 0
    ck = load_checkpoint(out / "checkpoint.npz")
    assert (ck.config["seed"], ck.epoch) == (5, 1)
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv") if r["kind"] == "epoch"] == [1]
    assert load_checkpoint(out / "best.npz").config["seed"] == 5


def test_a_default_out_that_holds_a_run_moves_to_a_suffixed_folder(data_dir, tmp_path):
    """The accidental rerun of the same command, and Ctrl-C on it: the first run's files
    are never opened for writing."""
    first = cli(*run_args(data_dir), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    runs = tmp_path / "runs"
    good = (runs / "lenet-fashion-mnist-0" / "checkpoint.npz").read_bytes()
    again = cli(*run_args(data_dir, "--epochs", "0"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{runs / 'lenet-fashion-mnist-0'} holds a run already: this one goes to " \
           f"{runs / 'lenet-fashion-mnist-0-1'}" in again.stdout
    assert sorted(os.listdir(runs)) == ["lenet-fashion-mnist-0", "lenet-fashion-mnist-0-1"]
    assert (runs / "lenet-fashion-mnist-0" / "checkpoint.npz").read_bytes() == good
    summary_line = again.stdout.strip().splitlines()[-1]
    assert f"outputs in {runs / 'lenet-fashion-mnist-0-1'}" in summary_line  # absolute


# ---- 2. resume writes beside the checkpoint it was given ------------------------------------------
def test_resume_writes_beside_the_given_checkpoint_or_to_out(data_dir, finished, tmp_path):
    original = finished[0]
    before = (original / "metrics.csv").read_bytes()
    copy = copy_run(original, tmp_path / "copy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A relative checkpoint path, resumed from another directory.
    result = cli("--resume", os.path.relpath(copy / "checkpoint.npz", elsewhere), "--epochs", 3,
                 "--no-progress", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(copy / "checkpoint.npz").epoch == 3
    assert [r["epoch"] for r in read_metrics(copy / "metrics.csv") if r["kind"] == "epoch"] == [1, 2, 3]
    assert (original / "metrics.csv").read_bytes() == before and os.listdir(elsewhere) == []
    # --out: the new epochs go there; the resumed checkpoint's folder is only read.
    result = cli("--resume", original / "checkpoint.npz", "--epochs", 3, "--out", tmp_path / "third",
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "third" / "checkpoint.npz").epoch == 3
    third_rows = read_metrics(tmp_path / "third" / "metrics.csv")  # the whole run's rows
    assert [(r["kind"], r["step"]) for r in third_rows] == [
        (r["kind"], r["step"]) for r in read_metrics(copy / "metrics.csv")]
    for folder in (copy, tmp_path / "third"):  # each names the best checkpoint in its own folder
        assert load_checkpoint(folder / "checkpoint.npz").best["path"] == str(folder / "best.npz")
        assert (folder / "best.npz").is_file()
    assert load_checkpoint(original / "checkpoint.npz").epoch == 2
    # The thread count was kept (1, from the checkpoint): bit-identical to the copy's run.
    assert "1 thread(s)" in result.stdout and "note:" not in result.stdout
    assert_same_weights(tmp_path / "third" / "checkpoint.npz", copy / "checkpoint.npz")


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_resume_with_another_thread_count_says_so_and_cleans_stale_temporaries(finished, tmp_path):
    copy = copy_run(finished[0], tmp_path / "copy")
    stale = copy / f".checkpoint.npz.{dead_pid()}.x7y8z9w0.tmp"  # a save killed with kill -9
    stale.write_bytes(b"PK" + bytes(1000))
    result = cli("--resume", copy / "checkpoint.npz", "--epochs", 3, "--threads", 2, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert load_checkpoint(finished[0] / "checkpoint.npz").config["threads"] == 1
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "trained with 1 thread(s) and goes on with 2" in notes[0]


# ---- 3. --data-dir is the data, and every run says which files it read -----------------------------
def test_data_dir_is_authoritative(data_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    half = tmp_path / "half"
    half.mkdir()
    for name in FILES["train"]:
        shutil.copy(data_dir / name, half / name)
    for folder, message in ((tmp_path / "typo", "does not exist"), (tmp_path / "empty", "is empty"),
                            (half, "holds no Fashion-MNIST 'test' split")):
        result = cli(*run_args(folder, "--out", tmp_path / "out"))
        one_line_error(result, 2, f"--data-dir: data folder {folder} {message}")
        assert "Traceback" not in result.stderr and not (tmp_path / "out" / "metrics.csv").exists()


def test_the_data_files_read_are_printed_and_recorded_with_their_sha256(data_dir, finished):
    out, result = finished
    expected = [{"path": str(data_dir / name),
                 "sha256": hashlib.sha256((data_dir / name).read_bytes()).hexdigest()}
                for name in FILES["train"] + FILES["test"]]
    for entry in expected:
        assert f"data: {entry['path']} sha256 {entry['sha256']}" in result.stdout
    assert json.loads((out / "summary.json").read_text())["data_files"] == expected
    assert load_checkpoint(out / "checkpoint.npz").config["data_files"] == expected


# ---- 4. outputs checked before the first step; a full disk keeps the last checkpoint -------------
def test_an_unwritable_output_is_found_before_training(data_dir, tmp_path):
    (tmp_path / "run" / "checkpoint.npz").mkdir(parents=True)
    result = cli(*run_args(data_dir, "--out", tmp_path / "run"))
    one_line_error(result, 2, f"cannot write the checkpoint {tmp_path / 'run' / 'checkpoint.npz'}",
                   "is a folder")
    assert "training" not in result.stdout and not (tmp_path / "run" / "metrics.csv").exists()
    (tmp_path / "a-file").write_text("x")
    one_line_error(cli(*run_args(data_dir, "--out", tmp_path / "a-file" / "run")), 2,
                   "cannot be created or written to")
    # A read-only folder: root writes through permissions, but not into sysfs.
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        read_only = tmp_path / "ro"
    elif sys.platform.startswith("linux") and os.path.isdir("/sys/kernel"):
        read_only = "/sys/kernel/minitorch-test-run"
    else:
        return
    one_line_error(cli(*run_args(data_dir, "--out", read_only)), 2,
                   f"cannot write the checkpoint {read_only}", "cannot be created or written to")


def test_a_full_disk_keeps_the_last_checkpoint(data_dir, finished, tmp_path):
    run = copy_run(finished[0], tmp_path / "run")
    good = (run / "checkpoint.npz").read_bytes()
    # The files may grow to 64 KB: metrics and plots fit, a checkpoint (130 KB) does not.
    result = cli("--resume", run / "checkpoint.npz", "--epochs", 3, "--log-every", 100,
                 "--no-progress", limit_file_size=64_000)
    one_line_error(result, 1, "cannot write", "File too large", "the last good checkpoint",
                   f"{run / 'checkpoint.npz'} (epoch 2, batch 0) is kept")
    assert (run / "checkpoint.npz").read_bytes() == good
    assert not [name for name in os.listdir(run) if name.endswith(".tmp")]


# ---- 5. one-line errors for data files and checkpoints ---------------------------------------------
def test_a_bad_data_file_or_one_with_no_images_is_a_one_line_error(data_dir, tmp_path):
    bad = copy_run(data_dir, tmp_path / "bad")
    with open(bad / FILES["test"][0], "r+b") as f:
        f.truncate(1000)
    one_line_error(cli(*run_args(bad, "--out", tmp_path / "o1")), 2, bad / FILES["test"][0],
                   "body is shorter than the header states")
    empty = copy_run(data_dir, tmp_path / "no-images")
    write_split(empty, "train", np.zeros((0, 28, 28)), np.zeros(0))
    one_line_error(cli(*run_args(empty, "--out", tmp_path / "o2")), 2,
                   f"{empty / FILES['train'][0]} holds 0 image(s)")


def test_a_checkpoint_whose_weights_do_not_fit_is_a_one_line_error(data_dir, tmp_path):
    model = models.get_model("lenet3")  # lenet3's weights under lenet's name
    config = {"model": "lenet", "dataset": "fashion-mnist", "loss": "cross_entropy",
              "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "batch_size": 64, "seed": 0}
    save_checkpoint(tmp_path / "c.npz", model, make_optimizer("sgd", list(model.parameters()), 0.1),
                    config=config, epoch=1, batch=0, step=2)
    for flags in (["--resume", tmp_path / "c.npz"], ["--init-from", tmp_path / "c.npz", "--out", tmp_path / "o"],
                  ["--eval-only", "--resume", tmp_path / "c.npz"]):
        one_line_error(cli(*flags, "--data-dir", data_dir, "--no-progress"), 2, tmp_path / "c.npz",
                       "weights do not fit model 'lenet'")


# ---- 6. signals, and the way out of a NaN stop --------------------------------------------------------
def test_sigterm_saves_a_checkpoint_and_exits_143(data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "minitorch_cnn.train",
                            *map(str, run_args(data_dir, "--out", out, "--batch-size", "4", epochs=50))],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None and not (
            (out / "metrics.csv").exists() and "\nstep," in (out / "metrics.csv").read_text()):
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    ck = load_checkpoint(out / "checkpoint.npz")
    assert 0 < ck.step < 50 * TRAIN_N // 4 and ck.step == ck.epoch * TRAIN_N // 4 + ck.batch


def test_a_nan_stop_points_to_init_from_with_a_smaller_lr(data_dir, tmp_path):
    result = cli(*run_args(data_dir, "--out", tmp_path / "run", "--lr", "1e4", epochs=2))
    line = one_line_error(result, 1, "loss became nan", "smaller learning rate", "--lr 1000")
    assert "Traceback" not in result.stderr and "checkpoint" in line


# ---- 7. --init-from ------------------------------------------------------------------------------------
def test_init_from_starts_a_new_run_from_the_weights(data_dir, finished, tmp_path):
    source = finished[0] / "checkpoint.npz"
    summary = tmp_path / "s.json"
    result = cli(*run_args(data_dir, "--init-from", source, "--lr", "0.01", "--out", tmp_path / "new",
                           "--summary-json", summary, epochs=0))
    assert result.returncode == 0, result.stderr
    new, old = json.loads(summary.read_text()), json.loads((finished[0] / "summary.json").read_text())
    assert (new["test_accuracy"], new["lr"], new["epochs"]) == (old["test_accuracy"], 0.01, 0)
    assert new["init_from"] == str(source) and f"weights from {source}" in result.stdout


# ---- 8. the best model is kept beside the last ------------------------------------------------------------
def test_best_checkpoint_is_kept_named_and_evaluable(data_dir, finished, tmp_path):
    out = finished[0]
    summary = json.loads((out / "summary.json").read_text())
    history = load_checkpoint(out / "checkpoint.npz").history
    best_epoch = 1 + int(np.argmax([h["val_acc"] for h in history]))
    best = load_checkpoint(out / "best.npz")
    assert (summary["best_checkpoint"], summary["best_epoch"]) == (str(out / "best.npz"), best_epoch)
    assert summary["checkpoint"] == str(out / "checkpoint.npz") and best.epoch == best_epoch
    assert summary["best_val_accuracy"] == history[best_epoch - 1]["val_acc"]
    result = cli("--eval-only", "--resume", out / "best.npz", "--summary-json", tmp_path / "e.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "e.json").read_text())["val_accuracy"] == summary["best_val_accuracy"]
    # Training on from best.npz in its own folder would write over that run's checkpoints.
    one_line_error(cli("--resume", out / "best.npz", "--epochs", 3), 2, "give --out NEW_FOLDER")


# ---- 9. what users expect of a training command ----------------------------------------------------------
def test_list_models_version_and_backend_auto(data_dir, tmp_path):
    listing = cli("--list-models")
    assert listing.returncode == 0
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert list(rows) == list(models.MODELS)
    for name, spec in models.MODELS.items():
        count = sum(p.numel() for p in models.get_model(name).parameters())
        assert f"{count:,}" in rows[name] and spec.dataset in rows[name] and spec.tutorial in rows[name]
    assert "adam 0.01" in rows["bn-cnn"] and "sgd 0.1" in rows["lenet"]

    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"minitorch_cnn {minitorch_cnn.__version__}"

    auto = cli(*run_args(data_dir, "--backend", "auto", "--out", tmp_path / "run", epochs=0))
    assert auto.returncode == 0, auto.stderr
    said = [line for line in auto.stdout.splitlines() if line.startswith("backend auto:")]
    assert len(said) == 1
    used = "cupy" if said[0].startswith("backend auto: cupy") else "numpy"
    assert f"fashion-mnist ({used})" in auto.stdout.splitlines()[-1]


# ---- 10. the kernels are built before training --------------------------------------------------------------
def test_the_backend_is_prepared_once_before_the_first_step(data_dir, tmp_path, monkeypatch):
    backend = train_mod.backends.get_backend_by_name("numpy")
    calls = []
    monkeypatch.setattr(type(backend), "prepare", lambda self: calls.append("prepare"))
    real = train_mod.train_epoch

    def train_epoch(*a, **kw):
        calls.append("train")
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "train_epoch", train_epoch)
    assert train_mod.main(run_args(data_dir, "--out", tmp_path / "run", epochs=2)) == 0
    assert calls == ["prepare", "train", "train"]
