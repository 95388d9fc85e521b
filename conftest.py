"""The repository's pytest entry: which suite a bare ``pytest`` runs, and the benchmark
options (registered here, as options must be known before any test folder is read).

``pytest`` (and ``pytest -q tests``, ``make test``) runs the tests of ``tests/``, as
``pytest.ini``'s ``testpaths`` says. ``pytest --benchmark-only`` with no path runs the
benchmark suite of ``benchmarks/`` instead: the tests hold no benchmark, so it would
otherwise skip every one of them and time nothing. See ``benchmarks/__init__.py``.
"""
from pathlib import Path

import pytest

BENCHMARKS = "benchmarks"


def pytest_addoption(parser):
    from benchmarks.environment import DEFAULT_THREADS

    group = parser.getgroup("minitorch_cnn benchmarks")
    group.addoption("--bench-threads", type=int, default=DEFAULT_THREADS, metavar="N",
                    help=f"CPU threads for every framework (default {DEFAULT_THREADS})")
    group.addoption("--bench-full", action="store_true",
                    help="time the full sweep (every layer of the zoo, batch scaling), not only "
                         "the quick set of training steps and inference")


def runs_benchmarks(config):
    """Whether any path this run collects lies in ``benchmarks/``."""
    folder = config.rootpath / BENCHMARKS
    return any(Path(arg.split("::")[0]).resolve().is_relative_to(folder) for arg in config.args)


def pytest_configure(config):
    if (config.args_source is pytest.Config.ArgsSource.TESTPATHS
            and config.getoption("benchmark_only", default=False)):
        config.args = [str(config.rootpath / BENCHMARKS)]
        config.args_source = pytest.Config.ArgsSource.ARGS
    if runs_benchmarks(config):
        from benchmarks.environment import threads

        threads(config)  # a bad --bench-threads stops the run before anything is collected


def pytest_report_header(config):
    if runs_benchmarks(config):
        from benchmarks.environment import header_lines

        return header_lines(config)
    return None
