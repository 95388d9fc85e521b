"""Shared fixtures of the benchmark suite (its options and header: the root ``conftest.py``).

Timing. A benchmark is timed only under ``--benchmark-only`` (or
``--benchmark-enable``), and then in the worker process of its framework
(:mod:`benchmarks.workers`): ours and PyTorch never share a process, so neither's
threads compete with the other's. pytest-benchmark keeps the statistics: the worker's
durations are replayed to it through :data:`benchmarks.workers.REPLAY_CLOCK`. By
default only the quick set runs (train step and inference of each zoo model, and the
matrix-product peak); ``--bench-full`` adds the benchmarks marked ``bench_full``
(every layer of the zoo, batch scaling). At the end, a table puts ours beside PyTorch
per model, with each model's GFLOP/s and the peak.

A plain ``pytest benchmarks`` times nothing: it runs each body once, in this process,
on a batch of at most :data:`SMOKE_BATCH`, as a smoke test, so that it costs seconds.

Fairness, the same for every framework and stated in the header and the JSON:
- threads: ``--bench-threads N`` (default 2) for both, through ``torch.set_num_threads``,
  ``minitorch_cnn.set_num_threads`` and ``threadpoolctl.threadpool_limits``;
- dtype float32, the same input arrays and the same initial weights;
- one untimed warm-up call before timing, then enough rounds to fill
  ``--benchmark-max-time`` (at least 3);
- the 1-minute load average as each benchmark starts goes into its ``extra_info``: on
  a shared machine other processes' threads inflate multi-threaded times, and the
  report warns about it;
- the BLAS libraries and the kernels they picked (threadpoolctl), as each worker saw
  them, with the ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` settings that pin an old kernel.
"""
import os
from dataclasses import dataclass, field

import pytest

from . import report
from .environment import (DTYPE, SMOKE_BATCH, conditions, environment_lines, import_torch,
                          library_lines, limited_threads, threads, timing)
from .frameworks import FRAMEWORKS, FrameworkUnavailable, get_framework
from .workers import REPLAY_CLOCK, WorkerPool

FULL_MARK = "bench_full"


@dataclass
class BenchSettings:
    threads: int
    timing: bool
    libraries: list = field(default_factory=list)
    results: list = field(default_factory=list)  # JSON-like entries for the closing table

    def batch(self, n):
        """The batch size to run: ``n`` when timing, a tiny one for a smoke run."""
        return n if self.timing else min(n, SMOKE_BATCH)


_SETTINGS_KEY = pytest.StashKey[BenchSettings]()


def pytest_collection_modifyitems(config, items):
    """Time the quick set unless ``--bench-full``; replay the workers' durations."""
    selected, deselected = [], []
    for item in items:
        if "measure" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.benchmark(timer=REPLAY_CLOCK))
        skip = (timing(config) and not config.getoption("bench_full")
                and item.get_closest_marker(FULL_MARK) is not None)
        (deselected if skip else selected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(scope="session")
def bench_settings(pytestconfig):
    """The session's settings. A smoke run computes in this process, with every
    framework limited to the run's thread count; a timed one in the workers."""
    settings = BenchSettings(threads(pytestconfig), timing(pytestconfig))
    pytestconfig.stash[_SETTINGS_KEY] = settings
    if settings.timing:
        yield settings
        return
    with limited_threads(settings.threads, import_torch()):
        settings.libraries = library_lines()
        yield settings


@pytest.fixture(scope="session")
def workers(bench_settings):
    pool = WorkerPool(bench_settings.threads)
    yield pool
    pool.close()


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the run's conditions in the JSON (``benchmarks.report`` prints them)."""
    settings = config.stash.get(_SETTINGS_KEY, None)
    if settings is not None:
        machine_info["minitorch_bench"] = dict(conditions(settings.threads, settings.timing),
                                               libraries=settings.libraries,
                                               environment=environment_lines())


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc):
    """Parametrize over the frameworks last, making them the innermost loop: the
    frameworks of one benchmark run back to back, under the same machine load (which
    drifts on a shared machine), and each test id ends in the framework's name."""
    if "framework" in metafunc.fixturenames:
        metafunc.parametrize("framework", FRAMEWORKS)


def _adapter(name):
    """The framework to run a smoke call on in this process; skips where it cannot run."""
    try:
        return get_framework(name)
    except FrameworkUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture
def measure(benchmark, bench_settings, pytestconfig, request):
    """``measure(framework, group, workload, **extra_info)``: time ``workload`` (see
    :mod:`benchmarks.workloads`) on ``framework`` in benchmark group ``group``, in that
    framework's worker process; or, when not timing, build it here and call it once."""
    from minitorch_cnn.data import DatasetNotFoundError

    max_time = float(pytestconfig.getoption("benchmark_max_time"))

    def run(framework, group, workload, **extra_info):
        benchmark.group = group
        benchmark.extra_info.update(framework=framework, threads=bench_settings.threads,
                                    dtype=DTYPE, **extra_info)
        if workload.flops:
            benchmark.extra_info["flops"] = workload.flops
        if not bench_settings.timing:
            try:
                fn = workload.build(_adapter(framework))
            except DatasetNotFoundError as err:
                pytest.skip(str(err))
            benchmark.disabled = True
            benchmark(fn)
            return
        # The machine's load as timing starts: on a shared machine, other processes'
        # threads competing for the CPUs inflate every time (see the report's note).
        benchmark.extra_info["load_average"] = os.getloadavg()[0]
        worker = request.getfixturevalue("workers").get(framework)
        status, durations = worker.time(workload, max_time)
        if status == "skip":
            pytest.skip(durations)
        _record_libraries(bench_settings, worker)
        benchmark.extra_info.update(process=worker.info["pid"], torch_loaded=worker.info["torch_loaded"])
        REPLAY_CLOCK.load(durations)
        benchmark.pedantic(REPLAY_CLOCK.advance, rounds=len(durations), iterations=1)
        bench_settings.results.append({"group": group, "extra_info": dict(benchmark.extra_info),
                                       "stats": {"min": min(durations)}})

    return run


def _record_libraries(settings, worker):
    lines = [f"{worker.framework} worker: {line}" for line in worker.info["libraries"]]
    settings.libraries += [line for line in lines if line not in settings.libraries]


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """Ours beside PyTorch, per zoo model, after pytest-benchmark's own table."""
    settings = config.stash.get(_SETTINGS_KEY, None)
    if settings is None or not settings.results:
        return
    terminalreporter.write_sep("=", "minitorch_cnn beside PyTorch (fastest round)")
    for line in report.model_summary(report.ratio_rows(settings.results)):
        terminalreporter.write_line(line)
    info = conditions(settings.threads)
    terminalreporter.write_line(f"{settings.threads} threads per framework; {info['processes']}. "
                                "`python -m benchmarks.report JSON` draws the picture "
                                "(pass --benchmark-json=PATH to keep the run).")
