"""What a benchmark run states about its conditions: the thread count, the libraries that
compute the matrix products, the environment settings that slow them, and the fairness
rules, for the header that pytest prints and for the JSON file (``machine_info``).

Each framework's worker process (:mod:`benchmarks.workers`) reports its own libraries,
after limiting their threads, so the JSON shows what actually ran.
"""
import contextlib
import os

DEFAULT_THREADS = 2
SMOKE_BATCH = 4
DTYPE = "float32"
#: Environment settings for old OpenBLAS builds that pin a slower kernel on a current NumPy.
OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def threads(config):
    value = config.getoption("bench_threads", default=DEFAULT_THREADS)
    if value < 1:
        import pytest

        raise pytest.UsageError(f"--bench-threads must be at least 1, got {value}")
    return value


def timing(config):
    return bool(config.getoption("benchmark_only", default=False)
                or config.getoption("benchmark_enable", default=False))


def import_torch():
    """torch, or None where it is not installed (then only ours can run)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_summary():
    torch = import_torch()
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


def library_lines(with_torch=True):
    """What computes the matrix products: each threadpoolctl library, and torch's build."""
    from threadpoolctl import threadpool_info

    if with_torch:
        import_torch()  # so that its OpenMP runtime is loaded, and listed
    lines = []
    for lib in threadpool_info():
        kernel = f", kernel {lib['architecture']}" if lib.get("architecture") else ""
        layer = f", {lib['threading_layer']}" if lib.get("threading_layer") else ""
        version = f" {lib['version']}" if lib.get("version") else ""
        lines.append(f"{lib['user_api']}: {lib['internal_api']}{version}{kernel}{layer}, "
                     f"{lib['num_threads']} threads ({_owner_and_name(lib['filepath'])})")
    return lines + ([_torch_summary()] if with_torch else [])


@contextlib.contextmanager
def limited_threads(count, torch=None):
    """Every thread pool at ``count`` threads for the duration: ``torch``'s (if given:
    imported first, so that threadpoolctl also limits its OpenMP pool), the engine's,
    and through threadpoolctl NumPy's BLAS and OpenMP."""
    from threadpoolctl import threadpool_limits

    import minitorch_cnn as mt

    previous = torch.get_num_threads() if torch else None, mt.get_num_threads()
    if torch:
        torch.set_num_threads(count)
    mt.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        if torch:
            torch.set_num_threads(previous[0])
        mt.set_num_threads(previous[1])


def environment_lines():
    lines = []
    for name in OPENBLAS_PINS:
        if name in os.environ:
            lines.append(f"{name}={os.environ[name]} is set: it pins old-OpenBLAS settings that slow a "
                         f"current NumPy's matrix products (`make bench` unsets it)")
    return lines or ["no OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE pin in the environment"]


def conditions(thread_count, timed=True):
    from .workers import MIN_ROUNDS

    return {
        "threads": thread_count,
        "cpu_count": os.cpu_count(),
        "thread_control": ("torch.set_num_threads, minitorch_cnn.set_num_threads and "
                           "threadpoolctl.threadpool_limits"),
        "processes": ("each framework in its own worker process (python -m benchmarks.workers), "
                      "one computing at a time, so that one's threads never compete with the "
                      "other's" if timed else "one process (not timing)"),
        "dtype": DTYPE,
        "data": "Fashion-MNIST training images (CIFAR-shaped models: random uint8 3x32x32 images)",
        "weights": "the same initial weights for every framework (ours -> torch)",
        "warmup": f"one untimed warm-up call, then at least {MIN_ROUNDS} timed rounds of one call "
                  "(as many as fill --benchmark-max-time, sized by a second untimed call)",
    }


def header_lines(config):
    thread_count, timed = threads(config), timing(config)
    if timed:
        selection = ("the full sweep (--bench-full)" if config.getoption("bench_full")
                     else "the quick set: train step and inference of every zoo model, and the "
                          "matrix-product peak (--bench-full adds layers and batch scaling)")
        mode = f"timing (--benchmark-only) {selection}"
    else:
        mode = (f"NOT timing: each benchmark runs once on a batch of <= {SMOKE_BATCH} "
                "(pass --benchmark-only to time them)")
    info = conditions(thread_count, timed)
    return ([f"benchmarks: {mode}",
             f"fair comparison: {thread_count} threads for every framework ({info['thread_control']}); "
             f"{info['processes']}; dtype {DTYPE}; same data and initial weights; {info['warmup']}"]
            + [f"  {line}" for line in library_lines() + environment_lines()])
