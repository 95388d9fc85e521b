"""Data-parallel training over MPI: 2 and 3 ranks on this machine (``mpiexec``, shared
memory, each launch bounded by a timeout) against one process on the global batch.

The rank program is ``distributed_ranks.py``; its 677-image set in global batches of 64
gives uneven shares on three ranks (22/21/21, and 13/12/12 of the last 37-row batch).
The tests skip, saying why, where mpi4py or an MPI launcher is missing (``make setup``
installs both from PyPI).
"""
import functools
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minitorch_cnn as mt
from minitorch_cnn.checkpoint import load_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import distributed_ranks as ranks  # noqa: E402

LAUNCH_TIMEOUT_S = 180


def _mpiexec():
    beside_python = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside_python if os.access(beside_python, os.X_OK) else shutil.which("mpiexec")


def _why_no_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi-local]')"
    if _mpiexec() is None:
        return "no mpiexec found (pip install -e '.[mpi-local]' brings Open MPI's)"
    return None


needs_mpi = pytest.mark.skipif(_why_no_mpi() is not None, reason=str(_why_no_mpi()))


def start(n, *program, runner=("-m", "mpi4py")):
    """``mpiexec -n n python -m mpi4py PROGRAM...`` in a session of its own, output piped."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               # Open MPI refuses root without these; test traffic stays on this machine.
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl="self,sm", OMPI_MCA_btl_tcp_if_include="lo")
    command = [_mpiexec(), "-n", str(n), "--oversubscribe", "--bind-to", "none", sys.executable,
               *runner, *map(str, program)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(process, what):
    """(returncode, stdout, stderr) of ``process``, killed and failed past the time limit."""
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{what} did not finish within {LAUNCH_TIMEOUT_S} s")
    return process.returncode, stdout, stderr


def launch(n, scenario, out, *extra, runner=("-m", "mpi4py")):
    """Run ``n`` ranks of ``scenario``; returns (returncode, stderr, seconds)."""
    started = time.perf_counter()
    process = start(n, os.path.join(HERE, "distributed_ranks.py"), scenario, out, *extra, runner=runner)
    code, _, stderr = finish(process, f"{n} ranks of {scenario!r}")
    return code, stderr, time.perf_counter() - started


def run_ranks(n, scenario, out, *extra):
    """Each rank's final state_dict, after a launch that must succeed."""
    code, stderr, _ = launch(n, scenario, out, *extra)
    assert code == 0, stderr[-3000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(n)]


@functools.lru_cache(maxsize=None)
def reference(scenario):
    """The one-process run on the global batch, on one thread as each rank."""
    threads = mt.get_num_threads()
    mt.set_num_threads(1)
    try:
        return ranks.train(scenario)
    finally:
        mt.set_num_threads(threads)


def max_difference(a, b, keys=None):
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in (keys or a))


def assert_identical(states, keys=None):
    for r, state in enumerate(states[1:], start=1):
        for k in keys or states[0]:
            assert np.array_equal(state[k], states[0][k]), f"rank {r} differs from rank 0 in {k}"


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_lenet_30_sgd_steps_match_one_process_on_the_global_batch(n, tmp_path):
    states = run_ranks(n, "lenet", tmp_path)
    assert_identical(states)
    assert max_difference(states[0], reference("lenet")) <= 1e-6


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_sync_batchnorm_matches_one_process_batchnorm(n, tmp_path):
    states = run_ranks(n, "bn", tmp_path)
    assert_identical(states)  # running statistics included: they are the global batch's
    assert max_difference(states[0], reference("bn")) <= 1e-6


@needs_mpi
def test_per_rank_batchnorm_statistics_are_ddps_default_and_really_differ(tmp_path):
    states = run_ranks(2, "bn-local", tmp_path)
    params = [k for k in states[0] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert_identical(states, params)
    assert not np.array_equal(states[0]["features.1.running_mean"], states[1]["features.1.running_mean"])
    assert max_difference(states[0], reference("bn-local"), params) > 1e-5


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_dropout_masks_do_not_depend_on_the_number_of_ranks(n, tmp_path):
    states = run_ranks(n, "dropout", tmp_path)
    assert_identical(states)
    assert max_difference(states[0], reference("dropout")) <= 1e-6


@needs_mpi
def test_a_checkpoint_written_at_2_ranks_resumes_at_1_and_3(tmp_path):
    run_ranks(2, "resume", tmp_path)
    checkpoint = tmp_path / "checkpoint.npz"
    assert checkpoint.exists()
    for n in (1, 3):
        out = tmp_path / f"at{n}"
        out.mkdir()
        states = run_ranks(n, "resume", out, checkpoint)
        assert_identical(states)
        assert max_difference(states[0], reference("resume")) <= 1e-6


@needs_mpi
@pytest.mark.parametrize("runner", [("-m", "mpi4py"), ()], ids=["python -m mpi4py", "plain python"])
def test_an_exception_in_one_rank_ends_the_whole_job_with_its_message(runner, tmp_path):
    # Under plain python the abort is init_process_group's exception hook.
    code, stderr, seconds = launch(2, "fail", tmp_path, runner=runner)
    assert code != 0
    assert "rank 1 fails on purpose at step 3" in stderr
    assert seconds < 60  # rank 0 waits in an all-reduce: without the abort, until killed
    assert not (tmp_path / "rank0.npz").exists()


def _fashion_mnist_here():
    return mt.data.find_dataset("fashion-mnist", "train") and mt.data.find_dataset("fashion-mnist", "test")


@needs_mpi
@pytest.mark.skipif(not _fashion_mnist_here(), reason="Fashion-MNIST is not on this machine")
def test_the_example_loop_stops_every_rank_on_a_signal_and_resumes_at_another_count(tmp_path):
    example = os.path.join(ROOT, "examples", "train_distributed.py")
    flags = ["--model", "lenet", "--train-subset", "1000", "--epochs", "2"]
    process = start(2, example, *flags, "--out", tmp_path)
    assert process.stdout.readline().startswith("training lenet on 2 rank(s)")
    os.kill(process.pid, signal.SIGUSR1)  # mpiexec forwards it to every rank
    code, stdout, stderr = finish(process, "the example at 2 ranks")
    assert code != 0 and "stopped after step" in stdout, stderr[-3000:]
    stopped = load_checkpoint(tmp_path / "checkpoint.npz")
    assert (stopped.epoch, stopped.batch) < (2, 0) and stopped.step >= 1
    code, stdout, stderr = finish(start(3, example, "--resume", tmp_path / "checkpoint.npz", "--epochs", "2"),
                                  "the example resumed at 3 ranks")
    assert code == 0, stderr[-3000:]
    done = load_checkpoint(tmp_path / "checkpoint.npz")
    assert (done.epoch, done.batch, done.step) == (2, 0, 20)
    assert "validation accuracy" in stdout
