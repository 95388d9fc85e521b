"""``mpiexec -n N python -m mpi4py -m minitorch_cnn.train --distributed``: the command
line's data-parallel runs against one process on the same global batch, stops by signal
(SIGUSR1 to mpiexec, which Open MPI forwards; SIGTERM to one of the processes, whose
request must reach the others) and resumes at another number of processes, and errors,
of all processes or of one, that end every process at once. lenet on 640 images in
global batches of 64: 10 steps an epoch, 30 in all. The launches
(``test_distributed.start``: shared memory only, each under a timeout) skip, saying
why, where mpi4py or mpiexec is missing.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minitorch_cnn import train as train_mod
from minitorch_cnn.checkpoint import load_checkpoint

from fashion_subset import fashion_subset
from test_distributed import ROOT, finish, needs_mpi, start

TRAIN_N, TEST_N, EPOCHS = 640, 200, 3
# Runs the command in one process and fails if it imported mpi4py.
WITHOUT_MPI = ("import sys; from minitorch_cnn.train import main; code = main(sys.argv[1:]); "
               "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'; sys.exit(code)")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fashion_subset(tmp_path_factory.mktemp("fashion"), TRAIN_N, TEST_N)


def flags(data_dir, out, epochs=EPOCHS):
    return ["--model", "lenet", "--data-dir", data_dir, "--batch-size", 64, "--lr", 0.05,
            "--momentum", 0.9, "--epochs", epochs, "--threads", 1, "--log-every", 5,
            "--no-progress", "--out", out]


def one_process(*argv):
    """The command in one plain process (no MPI), which must succeed."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", WITHOUT_MPI, *map(str, argv)], env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def distributed(n, *argv):
    """The command under ``mpiexec -n n``, started (see ``finish``)."""
    return start(n, "-m", "minitorch_cnn.train", "--distributed", *argv)


def wait_for_training(process):
    """Read rank 0's output up to the line that says training starts."""
    for line in process.stdout:
        if line.startswith("training lenet"):
            return line
    pytest.fail("the run ended before training: " + process.communicate()[1][-3000:])


def weights(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith("model/")}


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted run in one process: its checkpoint."""
    out = tmp_path_factory.mktemp("one-process")
    one_process(*flags(data_dir, out))
    return load_checkpoint(out / "checkpoint.npz")


@needs_mpi
def test_two_processes_train_the_model_of_one_process_on_the_global_batch(data_dir, reference, tmp_path):
    code, stdout, stderr = finish(distributed(2, *flags(data_dir, tmp_path)), "2 processes")
    assert code == 0, stderr[-3000:]
    ours = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ours.step == reference.step == EPOCHS * TRAIN_N // 64
    assert max_difference(weights(ours.path), weights(reference.path)) <= 1e-5
    # Evaluation splits the batches among the processes and sums the counts; training
    # counts each image once, in one process's share.
    for key in ("val_acc", "test_acc", "images"):
        assert [r[key] for r in ours.history] == [r[key] for r in reference.history]
    assert np.allclose([r["train_loss"] for r in ours.history], [r["train_loss"] for r in reference.history],
                       rtol=0, atol=1e-5)
    assert stdout.count("training lenet") == 1 and stdout.count("done:") == 1  # rank 0 alone
    assert "2 processes x 1 thread(s)" in stdout
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "checkpoint.npz", "error.png", "loss.png",
                                            "metrics.csv"]


def stop_then_resume(data_dir, reference, out, send, expected_code, by, resume):
    """Start 2 processes on a long run, ``send`` a signal once training runs, check that
    every process stopped after the same step with rank 0's checkpoint, continue that
    checkpoint to EPOCHS with ``resume`` and compare with the uninterrupted run."""
    process = distributed(2, *flags(data_dir, out, epochs=100))
    wait_for_training(process)
    send(process)
    code, stdout, stderr = finish(process, "the stopped run")
    assert code == expected_code, stderr[-3000:]
    assert stderr.count(f"interrupted by {by} after batch") == 1, stderr[-3000:]
    stopped = load_checkpoint(out / "checkpoint.npz")
    assert 1 <= stopped.step < reference.step, "stopped too late to compare"
    resume("--resume", out / "checkpoint.npz", "--epochs", EPOCHS, "--no-progress")
    done = load_checkpoint(out / "checkpoint.npz")
    assert done.step == reference.step
    assert max_difference(weights(done.path), weights(reference.path)) <= 1e-5
    for key in ("val_acc", "test_acc"):
        assert [r[key] for r in done.history] == [r[key] for r in reference.history]


@needs_mpi
def test_sigusr1_to_mpiexec_stops_every_process_and_one_process_resumes(data_dir, reference, tmp_path):
    stop_then_resume(data_dir, reference, tmp_path, lambda p: os.kill(p.pid, signal.SIGUSR1),
                     train_mod.EXIT_USR1, "SIGUSR1", one_process)


def rank_pids(pid):
    """The processes running the command below ``pid`` (mpiexec), from /proc."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            children = [int(c) for c in f.read().split()]
        todo += children
        for child in children:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"minitorch_cnn.train" in f.read():
                    found.append(child)
    return found


@needs_mpi
@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"),
                    reason="finding mpiexec's processes needs Linux's /proc/PID/task/PID/children")
def test_sigterm_to_one_process_stops_them_all_and_one_rank_resumes(data_dir, reference, tmp_path):
    def sigterm_one_rank(process):
        # Slurm's scancel signals every process (Open MPI's mpiexec would kill them on
        # SIGTERM); one is enough: its request travels with the next all-reduce.
        pids = rank_pids(process.pid)
        assert len(pids) == 2, pids
        os.kill(pids[-1], signal.SIGTERM)

    def resume_at_one_rank(*argv):
        code, _, stderr = finish(distributed(1, *argv), "the run resumed at 1 rank")
        assert code == 0, stderr[-3000:]

    stop_then_resume(data_dir, reference, tmp_path, sigterm_one_rank, train_mod.EXIT_TERMINATED,
                     "SIGTERM", resume_at_one_rank)


@needs_mpi
def test_a_failure_in_one_process_ends_the_job_at_once_with_its_message(data_dir, tmp_path):
    process = distributed(2, *flags(data_dir, tmp_path, epochs=100))
    wait_for_training(process)
    # Rank 0 alone writes: a folder where its checkpoint goes fails only there.
    checkpoint = tmp_path / "checkpoint.npz"
    while not checkpoint.is_dir():
        try:
            (checkpoint / "in-the-way").mkdir(parents=True)
        except (FileExistsError, NotADirectoryError):
            checkpoint.unlink(missing_ok=True)
    started = time.perf_counter()
    code, stdout, stderr = finish(process, "a run whose rank 0 cannot write")
    assert code == 1, stderr[-3000:]
    assert stderr.count(f"error: cannot write {checkpoint}") == 1, stderr[-3000:]
    assert time.perf_counter() - started < 60  # the other process was not left waiting
    assert "epoch 3/100" not in stdout


@needs_mpi
@pytest.mark.parametrize("bad, message", [
    (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
    (["--backend", "auto"], "--distributed needs --backend numpy or cupy"),
    # Only rank 0 places the outputs: the others learn of its failure before training.
    (["--out", "{file}/run"], "cannot write the checkpoint"),
], ids=["a bad flag", "a flag processes cannot share", "an output only rank 0 checks"])
def test_unusable_input_ends_every_process_with_status_2_at_once(data_dir, tmp_path, bad, message):
    (tmp_path / "file").write_text("not a folder")
    argv = flags(data_dir, tmp_path / "out", epochs=1) + [a.format(file=tmp_path / "file") for a in bad]
    started = time.perf_counter()
    code, stdout, stderr = finish(distributed(2, *argv), "a run with unusable input")
    assert code == 2, stderr[-3000:]
    assert stderr.count(message) == 1, stderr[-3000:]  # said once, by one process
    assert "training lenet" not in stdout and not (tmp_path / "out" / "checkpoint.npz").exists()
    assert time.perf_counter() - started < 60  # in seconds, never waiting for a peer
