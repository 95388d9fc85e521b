"""Shared fixtures and settings of the benchmark suite.

Timing. pytest-benchmark times whatever it collects unless told otherwise; here a
benchmark is timed only under ``--benchmark-only`` (or ``--benchmark-enable``). A plain
``pytest benchmarks`` runs each body once on a batch of at most :data:`SMOKE_BATCH`, as a
smoke test, so that it costs seconds and times nothing.

Fairness, the same for every framework and stated in the header and the JSON:
- threads: ``--bench-threads N`` (default 2) for both, through ``torch.set_num_threads``,
  ``minitorch_cnn.set_num_threads`` and ``threadpoolctl.threadpool_limits`` (NumPy's
  BLAS, torch's OpenMP);
- dtype float32, the same input arrays and the same initial weights;
- one untimed warm-up call before timing, so first-call costs (allocations, lazy
  kernel builds) stay out of the numbers; then enough rounds to fill
  ``--benchmark-max-time`` (at least 3);
- the 1-minute load average as each benchmark starts goes into its ``extra_info``: on
  a shared machine other processes' threads inflate multi-threaded times, and the
  report warns about it;
- the BLAS libraries and the kernels they picked (threadpoolctl) are printed, with the
  ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` settings that pin an old kernel.

Data: Fashion-MNIST's real training images, first ``n``, normalised as for training
(skipped with a reason where the files are missing). The CIFAR-10 models get random
uint8 images of CIFAR's shape (3x32x32), normalised the same way: CIFAR-10 is not
installed here, and a step's cost does not depend on the pixel values.
"""
import functools
import math
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pytest

from .frameworks import FRAMEWORKS, FrameworkUnavailable, get_framework

DEFAULT_THREADS = 2
SMOKE_BATCH = 4
MIN_ROUNDS = 3
DTYPE = "float32"
#: Environment settings for old OpenBLAS builds that pin a slower kernel on a current NumPy.
OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
RANDOM_DATA_SEED = 0


def pytest_addoption(parser):
    group = parser.getgroup("minitorch_cnn benchmarks")
    group.addoption("--bench-threads", type=int, default=DEFAULT_THREADS, metavar="N",
                    help=f"CPU threads for every framework (default {DEFAULT_THREADS})")


def _threads(config):
    threads = config.getoption("bench_threads", default=DEFAULT_THREADS)
    if threads < 1:
        raise pytest.UsageError(f"--bench-threads must be at least 1, got {threads}")
    return threads


def pytest_configure(config):
    _threads(config)  # a bad --bench-threads stops the run before anything is collected


def _timing(config):
    return bool(config.getoption("benchmark_only", default=False)
                or config.getoption("benchmark_enable", default=False))


def _import_torch():
    """torch, or None where it is not installed (then only ours can run)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_summary():
    torch = _import_torch()
    if torch is None:
        return "torch: not installed"
    build = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for part in build.replace(",", "\n").split()
                 if part.startswith("BLAS_INFO=")), "unknown")
    return (f"torch {torch.__version__}: BLAS {blas} (statically linked, so not listed by threadpoolctl), "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")


def _owner_and_name(path):
    """``torch/lib/libgomp.so.1``: the library, under the package that ships it."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.basename(path)


def _library_lines():
    """What computes the matrix products: each threadpoolctl library, and torch's build."""
    from threadpoolctl import threadpool_info

    _import_torch()  # so that its OpenMP runtime is loaded, and listed
    lines = []
    for lib in threadpool_info():
        kernel = f", kernel {lib['architecture']}" if lib.get("architecture") else ""
        layer = f", {lib['threading_layer']}" if lib.get("threading_layer") else ""
        version = f" {lib['version']}" if lib.get("version") else ""
        lines.append(f"{lib['user_api']}: {lib['internal_api']}{version}{kernel}{layer}, "
                     f"{lib['num_threads']} threads ({_owner_and_name(lib['filepath'])})")
    return lines + [_torch_summary()]


def _environment_lines():
    lines = []
    for name in OPENBLAS_PINS:
        if name in os.environ:
            lines.append(f"{name}={os.environ[name]} is set: it pins old-OpenBLAS settings that slow a "
                         f"current NumPy's matrix products (`make bench` unsets it)")
    return lines or ["no OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE pin in the environment"]


def _conditions(threads):
    return {
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "thread_control": ("torch.set_num_threads, minitorch_cnn.set_num_threads and "
                           "threadpoolctl.threadpool_limits"),
        "dtype": DTYPE,
        "data": "Fashion-MNIST training images (CIFAR-shaped models: random uint8 3x32x32 images)",
        "weights": "the same initial weights for every framework (ours -> torch)",
        "warmup": f"one untimed warm-up call, then at least {MIN_ROUNDS} timed rounds of one call "
                  "(as many as fill --benchmark-max-time, sized by a second untimed call)",
    }


def pytest_report_header(config):
    threads = _threads(config)
    mode = ("timing (--benchmark-only)" if _timing(config) else
            f"NOT timing: each benchmark runs once on a batch of <= {SMOKE_BATCH} "
            "(pass --benchmark-only to time them)")
    conditions = _conditions(threads)
    return ([f"benchmarks: {mode}",
             f"fair comparison: {threads} threads for every framework ({conditions['thread_control']}); "
             f"dtype {DTYPE}; same data and initial weights; {conditions['warmup']}"]
            + [f"  {line}" for line in _library_lines() + _environment_lines()])


@dataclass
class BenchSettings:
    threads: int
    timing: bool
    libraries: list = field(default_factory=list)

    def batch(self, n):
        """The batch size to run: ``n`` when timing, a tiny one for a smoke run."""
        return n if self.timing else min(n, SMOKE_BATCH)


_SETTINGS_KEY = pytest.StashKey[BenchSettings]()


@pytest.fixture(scope="session")
def bench_settings(pytestconfig):
    """The session's settings, with every framework limited to the same thread count
    for as long as the benchmarks run."""
    from threadpoolctl import threadpool_limits

    import minitorch_cnn as mt

    settings = BenchSettings(_threads(pytestconfig), _timing(pytestconfig))
    torch = _import_torch()  # loaded first, so that threadpoolctl also limits its OpenMP pool
    previous = torch.get_num_threads() if torch else None, mt.get_num_threads()
    if torch:
        torch.set_num_threads(settings.threads)
    mt.set_num_threads(settings.threads)
    try:
        with threadpool_limits(limits=settings.threads):
            settings.libraries = _library_lines()
            pytestconfig.stash[_SETTINGS_KEY] = settings
            yield settings
    finally:
        if torch:
            torch.set_num_threads(previous[0])
        mt.set_num_threads(previous[1])


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the run's conditions in the JSON (``benchmarks.report`` prints them)."""
    settings = config.stash.get(_SETTINGS_KEY, None)
    if settings is not None:
        machine_info["minitorch_bench"] = dict(_conditions(settings.threads), libraries=settings.libraries,
                                               environment=_environment_lines())


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc):
    """Parametrize over the frameworks last, making them the innermost loop: the
    frameworks of one benchmark run back to back, under the same machine load (which
    drifts on a shared machine), and each test id ends in the framework's name."""
    if "framework" in metafunc.fixturenames:
        metafunc.parametrize("framework", FRAMEWORKS, indirect=True)


@pytest.fixture
def framework(request, bench_settings):
    """Each framework in turn (see :func:`pytest_generate_tests`); one that cannot run
    here skips with the reason."""
    try:
        return get_framework(request.param)
    except FrameworkUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture
def measure(benchmark, bench_settings, pytestconfig):
    """``measure(framework, group, fn, **extra_info)``: time ``fn`` in benchmark group
    ``group``, or, when not timing, call it once.

    Timing: one untimed warm-up call, one untimed call to size the rounds, then
    ``max(MIN_ROUNDS, ceil(max_time / its time))`` timed calls of one iteration each
    (``--benchmark-max-time``, default 1 s). pytest-benchmark's own calibration would
    insist on 5 rounds, which for a VGG step on a CPU (a second or more a call) adds
    half a minute per benchmark."""
    max_time = float(pytestconfig.getoption("benchmark_max_time"))

    def run(framework, group, fn, **extra_info):
        benchmark.group = group
        benchmark.extra_info.update(framework=framework.name, threads=bench_settings.threads,
                                    dtype=DTYPE, **extra_info)
        if not bench_settings.timing:
            benchmark.disabled = True
            benchmark(fn)
            return
        # The machine's load as timing starts: on a shared machine, other processes'
        # threads competing for the CPUs inflate every time (see the report's note).
        benchmark.extra_info["load_average"] = os.getloadavg()[0]
        fn()  # warm-up, not timed: first-call costs (allocations, lazy setup) stay out
        start = time.perf_counter()
        fn()  # sizes the rounds; a warm call, unlike the first, is a fair estimate
        rounds = max(MIN_ROUNDS, math.ceil(max_time / max(time.perf_counter() - start, 1e-9)))
        benchmark.pedantic(fn, rounds=rounds, iterations=1)

    return run


class Batch(NamedTuple):
    x: np.ndarray            # float32 NCHW, normalised
    y: np.ndarray            # int64 labels
    description: str         # where the images come from, for extra_info
    group_note: str          # appended to a group name when the data are not real


@functools.lru_cache(maxsize=None)
def _fashion_mnist():
    from minitorch_cnn.data import load_dataset

    return load_dataset("fashion-mnist", "train", download=False)


@pytest.fixture(scope="session")
def batch_of():
    """``batch_of(dataset, n) -> Batch``, normalised as for training: Fashion-MNIST's
    first ``n`` training images, or ``n`` random images of CIFAR's shape for cifar10."""
    from minitorch_cnn.data import NORMALIZATION, DataLoader, DatasetNotFoundError

    def make(dataset, n):
        if dataset == "fashion-mnist":
            try:
                images, labels = _fashion_mnist()
            except DatasetNotFoundError as err:
                pytest.skip(f"Fashion-MNIST is not installed: {err}")
            if n > len(images):
                raise ValueError(f"batch of {n} is larger than Fashion-MNIST's {len(images)} images")
            images, labels = images[:n], labels[:n]
            description, note = f"Fashion-MNIST train[:{n}]", ""
        elif dataset == "cifar10":
            rng = np.random.default_rng(RANDOM_DATA_SEED)
            images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, 10, size=n, dtype=np.int64)
            description = f"{n} random uint8 3x32x32 images (CIFAR-10 is not installed here)"
            note = " (random CIFAR-shaped data)"
        else:
            raise ValueError(f"no benchmark data for dataset {dataset!r}")
        mean, std = NORMALIZATION[dataset]
        x, y = next(iter(DataLoader(images, labels, batch_size=n, mean=mean, std=std)))
        return Batch(x, y, description, note)

    return make
