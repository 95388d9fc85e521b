"""One worker process per framework, so that ours and PyTorch are timed apart.

In one process, the worker threads of one framework's libraries (OpenBLAS's spin after
each product, PyTorch's OpenMP pool) keep running while the other framework computes,
and steal its cores; on a 2-core machine that inflates the other's times several-fold.
So a timed benchmark sends its workload (:mod:`benchmarks.workloads`) to the worker of
its framework, a fresh interpreter (``python -m benchmarks.workers FRAMEWORK THREADS``)
that loads that framework alone (ours never imports torch), limits its threads to the
run's count, builds the workload, and times it: one untimed warm-up call, one untimed
call to size the rounds, then ``max(MIN_ROUNDS, ceil(max_time / that call's time))``
timed calls of one iteration each. Only one worker computes at a time; the pytest
process waits on the pipe meanwhile.

The protocol is pickles over the worker's stdin and stdout: a ``"ready"`` message with
what the worker loaded, then for each ``(workload, max_time)`` one of ``("ok",
durations)``, ``("skip", reason)`` (the framework or the data is not available here)
or ``("error", traceback)``.
"""
import math
import os
import pickle
import subprocess
import sys
import time
import traceback
from pathlib import Path

MIN_ROUNDS = 3
ROOT = Path(__file__).resolve().parents[1]


def time_rounds(fn, max_time, min_rounds=MIN_ROUNDS):
    """The durations in seconds of the timed calls of ``fn`` (see the module's doc)."""
    fn()  # warm-up, not timed: first-call costs (allocations, lazy setup) stay out
    start = time.perf_counter()
    fn()  # sizes the rounds; a warm call, unlike the first, is a fair estimate
    rounds = max(min_rounds, math.ceil(max_time / max(time.perf_counter() - start, 1e-9)))
    durations = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return durations


class WorkerError(RuntimeError):
    """A worker failed; the message holds its traceback."""


class Worker:
    """The pytest side of one framework's worker process."""

    def __init__(self, framework, threads):
        self.framework = framework
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.workers", framework, str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env)
        status, self.info = self._receive()
        if status != "ready":
            raise WorkerError(f"{framework} worker did not start: {self.info}")

    def _receive(self):
        try:
            return pickle.load(self.process.stdout)
        except EOFError:
            raise WorkerError(f"the {self.framework} worker exited (status "
                              f"{self.process.wait()}); its error is above") from None

    def time(self, workload, max_time):
        """``("ok", durations)`` or ``("skip", reason)``; raises :class:`WorkerError`."""
        pickle.dump((workload, max_time), self.process.stdin)
        self.process.stdin.flush()
        status, result = self._receive()
        if status == "error":
            raise WorkerError(f"{self.framework} worker: {result}")
        return status, result

    def close(self):
        """End the worker: it exits when its stdin closes, after any request in flight
        (one that takes over a minute, as after Ctrl-C mid-VGG, is killed)."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WorkerPool:
    """A worker per framework, started when first needed, all closed at the end."""

    def __init__(self, threads):
        self.threads = threads
        self.workers = {}

    def get(self, framework):
        if framework not in self.workers:
            self.workers[framework] = Worker(framework, self.threads)
        return self.workers[framework]

    def close(self):
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()


class ReplayClock:
    """pytest-benchmark's timer for the rounds a worker timed: :meth:`advance`, the
    function pytest-benchmark calls for each round, moves the clock on by the next
    duration the worker measured, so that its statistics are the worker's."""

    def __init__(self):
        self.now, self.durations = 0.0, iter(())

    def __call__(self):
        return self.now

    def __repr__(self):
        return "ReplayClock(durations timed by the framework's worker process)"

    def load(self, durations):
        self.durations = iter(durations)

    def advance(self):
        self.now += next(self.durations)


REPLAY_CLOCK = ReplayClock()


# ---- the worker process ------------------------------------------------------------------
def serve(framework_name, threads):
    """Answer timing requests on stdin until it closes (see the module's doc)."""
    from .environment import import_torch, library_lines, limited_threads
    from .frameworks import FrameworkUnavailable, get_framework

    channel, sys.stdout = sys.stdout.buffer, sys.stderr  # the pipe carries pickles only

    def send(message):
        pickle.dump(message, channel)
        channel.flush()

    uses_torch = framework_name.startswith("torch")
    with limited_threads(threads, import_torch() if uses_torch else None):
        try:
            framework, unavailable = get_framework(framework_name), None
        except FrameworkUnavailable as err:
            framework, unavailable = None, str(err)
        send(("ready", {"pid": os.getpid(), "torch_loaded": "torch" in sys.modules,
                        "unavailable": unavailable,
                        "libraries": library_lines(with_torch=uses_torch)}))
        while True:
            try:
                workload, max_time = pickle.load(sys.stdin.buffer)
            except EOFError:
                return
            except Exception:  # noqa: BLE001  (a request that cannot be read ends the stream)
                send(("error", traceback.format_exc()))
                return
            send(reply(framework, unavailable, workload, max_time))


def reply(framework, unavailable, workload, max_time):
    """The answer to one request (see the module's doc)."""
    from minitorch_cnn.data import DatasetNotFoundError

    from .frameworks import FrameworkUnavailable

    if framework is None:
        return "skip", unavailable
    try:
        return "ok", time_rounds(workload.build(framework), max_time)
    except (FrameworkUnavailable, DatasetNotFoundError) as err:
        return "skip", str(err)
    except Exception:  # noqa: BLE001  (sent back, and raised there with the traceback)
        return "error", traceback.format_exc()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
