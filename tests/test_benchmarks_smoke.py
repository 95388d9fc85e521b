"""The benchmark suite runs, and its report command computes the right ratios.

The suite runs in subprocesses (``python -m pytest ...``), as a user runs it, on cheap
LeNet-sized subsets, on every framework (the GPU ones skip here):

- a plain run of the layer benchmarks (LeNet's conv2d, max_pool2d, linear and loss,
  forward and forward+backward), which must time nothing;
- ``pytest --benchmark-only`` from the repository root, as the README gives it, cut to
  the fewest rounds of LeNet's training step and inference, the matrix-product peak
  and (with ``--bench-full``) the scaling benchmark's batch 16: its JSON must hold both
  CPU frameworks side by side in every group, each timed in a process of its own, and
  its closing table and the report must agree with the JSON;
- what the root collects: the tests without the flag, the quick benchmark set with it.

Each run pays for starting torch, so they split the suite rather than repeat it. The
report is also checked on a small synthetic JSON whose ratios are known, and the FLOP
count and the worker process on their own.
"""
import json
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark", reason="the benchmark extra is not installed: pip install -e '.[bench]'")
pytest.importorskip("threadpoolctl", reason="the benchmark extra is not installed: pip install -e '.[bench]'")

ROOT = Path(__file__).resolve().parents[1]
LENET = "lenet and not lenet3 and not cifar"
CPU_PAIR = {"ours-numpy", "torch-cpu"}
THREADS = 1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(args, timeout=180):
    """``python args...`` from the repository root (where ``benchmarks`` is importable)."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_benchmarks(*args):
    pytest.importorskip("torch", reason="the benchmarks compare against PyTorch: pip install -e '.[reference]'")
    # One thread: the check is of behaviour, and two spinning threads per process slow
    # a shared 2-core machine down tenfold. It also checks that --bench-threads applies.
    result = run(["-m", "pytest", "-rs", "-p", "no:cacheprovider", f"--bench-threads={THREADS}", *args])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result.stdout


def test_plain_run_times_nothing():
    out = run_benchmarks("benchmarks/test_bench_layers.py", "-k", LENET)
    assert "NOT timing" in out and f"fair comparison: {THREADS} threads" in out  # the header says so
    assert "Name (time in" not in out  # and pytest-benchmark printed no table
    # LeNet's 8 layer cases (2 conv, 2 pool, 3 linear, the loss), 2 passes, 2 CPU frameworks.
    assert int(re.search(r"(\d+) passed", out).group(1)) == 8 * 2 * 2, out[-3000:]


def test_benchmark_only_from_the_root_times_ours_and_torch_apart(tmp_path):
    json_path = tmp_path / "bench.json"
    out = run_benchmarks("--benchmark-only", "--bench-full", "-k",
                         f"not test_layer and (({LENET}) or batch16 or peak)",
                         "--benchmark-max-time=0", f"--benchmark-json={json_path}")
    data = json.loads(json_path.read_text())
    by_group = {}
    for bench in data["benchmarks"]:
        assert bench["fullname"].startswith("benchmarks/")  # not the tests, which it would skip
        by_group.setdefault(bench["group"], {})[bench["extra_info"]["framework"]] = bench
        assert bench["extra_info"]["threads"] == THREADS and bench["extra_info"]["dtype"] == "float32"
    assert set(by_group) == {"train-step:lenet", "inference:lenet", "scaling:lenet:batch-0016",
                             "peak:matmul-2048"}
    for group, frameworks in by_group.items():
        assert CPU_PAIR <= set(frameworks), group
        ours, torch = frameworks["ours-numpy"]["extra_info"], frameworks["torch-cpu"]["extra_info"]
        assert ours["process"] != torch["process"]  # each framework in a worker of its own,
        assert not ours["torch_loaded"] and torch["torch_loaded"]  # and ours never loads torch
    assert by_group["train-step:lenet"]["ours-numpy"]["extra_info"]["batch_size"] == 100
    assert by_group["inference:lenet"]["torch-cpu"]["extra_info"]["batch_size"] == 1000
    assert by_group["train-step:lenet"]["ours-numpy"]["extra_info"]["flops"] == 3 * 100 * LENET_FLOPS
    conditions = data["machine_info"]["minitorch_bench"]
    assert conditions["threads"] == THREADS and "own worker process" in conditions["processes"]
    assert any(line.startswith("torch-cpu worker: ") and "blas" in line for line in conditions["libraries"])

    step = by_group["train-step:lenet"]
    ratio = step["ours-numpy"]["stats"]["min"] / step["torch-cpu"]["stats"]["min"]
    # The closing table: ours beside PyTorch per model, the same ratio as the JSON's.
    closing = out.split("minitorch_cnn beside PyTorch", 1)[1]
    assert float(model_cell(closing, "lenet", 3)) == pytest.approx(ratio, abs=0.006)
    assert "Matrix-product peak (float32, same threads): ours-numpy" in closing

    result = run(["-m", "benchmarks.report", str(json_path), "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "report.md").read_text()
    assert table_ratio(text, "train-step:lenet") == pytest.approx(ratio, abs=0.006)
    assert float(model_cell(text, "lenet", 3)) == pytest.approx(ratio, abs=0.006)
    ours_gflops = 3 * 100 * LENET_FLOPS / step["ours-numpy"]["stats"]["min"] / 1e9
    assert float(model_cell(text, "lenet", 7).split(" / ")[0]) == pytest.approx(ours_gflops, rel=0.06)
    assert (tmp_path / "ratios.png").read_bytes().startswith(PNG_MAGIC)


def collected(*args):
    """The test ids that ``pytest --collect-only -q ARGS`` from the root lists."""
    result = run(["-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *args])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_the_root_collects_the_tests_or_with_benchmark_only_the_quick_benchmarks():
    pytest.importorskip("torch", reason="the benchmarks compare against PyTorch: pip install -e '.[reference]'")
    tests = collected()
    assert tests and all(item.startswith("tests/") for item in tests)
    quick = collected("--benchmark-only")
    assert quick and all(item.startswith("benchmarks/test_bench_steps.py::") for item in quick)
    assert {re.search(r"::(\w+)\[", item).group(1) for item in quick} == \
        {"test_train_step", "test_inference", "test_matmul_peak"}


# ---- the FLOP count and the worker ----------------------------------------------------------
#: LeNet by hand: conv1 6x1x5x5 over 24x24, conv2 12x6x5x5 over 8x8, linear 192-120-60-10.
LENET_FLOPS = 2 * (6 * 25 * 24 * 24 + 12 * 6 * 25 * 8 * 8 + 192 * 120 + 120 * 60 + 60 * 10)


def test_flops_are_counted_from_the_layers():
    from benchmarks.workloads import Inference, MatMul, TrainStep, forward_flops

    assert forward_flops("lenet") == LENET_FLOPS == 464_880
    assert forward_flops("fc2") > 0 and forward_flops("vgg-bn") > 500 * forward_flops("lenet")
    assert TrainStep("lenet", 100).flops == 3 * 100 * LENET_FLOPS  # backward ~ 2x forward
    assert Inference("lenet", 1000).flops == 1000 * LENET_FLOPS
    assert MatMul(64).flops == 2 * 64 ** 3
    from minitorch_cnn.models import get_model
    assert all("forward" not in vars(m) for m in get_model("lenet").modules())  # restored


def test_worker_times_in_its_own_process_and_reports_errors():
    from benchmarks.workers import MIN_ROUNDS, Worker, WorkerError
    from benchmarks.workloads import MatMul, TrainStep

    worker = Worker("ours-numpy", THREADS)
    try:
        assert worker.info["pid"] == worker.process.pid != os.getpid()
        assert worker.info["torch_loaded"] is False
        status, durations = worker.time(MatMul(8), 0.0)
        assert status == "ok" and len(durations) == MIN_ROUNDS and all(d > 0 for d in durations)
        with pytest.raises(WorkerError, match="no-such-model"):
            worker.time(TrainStep("no-such-model", 4), 0.0)
        assert worker.time(MatMul(8), 0.0)[0] == "ok"  # an error in one workload is not fatal
    finally:
        worker.close()
    assert worker.process.returncode == 0


# ---- the report on a synthetic file ---------------------------------------------------
def entry(group, framework, seconds, batch_size=None, flops=None):
    extra = {"framework": framework}
    if batch_size:
        extra["batch_size"] = batch_size
    if ":" in group and group.split(":")[0] in ("train-step", "inference"):
        extra["model"] = group.split(":")[1]
    if flops:
        extra["flops"] = flops
    return {"group": group, "name": f"test[{framework}]", "extra_info": extra,
            "stats": {"min": seconds, "median": 2 * seconds, "mean": 3 * seconds}}  # the report uses min


def model_cell(markdown, model, column):
    """Cell ``column`` of ``model``'s row in the first per-model table."""
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {model} |"))
    return row.strip("|").split("|")[column].strip()


def table_ratio(markdown, group, column=-1):
    """Cell ``column`` (from the right) of ``group``'s row in the table of every benchmark."""
    table = markdown.split("## Every benchmark", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in table.splitlines() if line.startswith(f"| {group} |"))
    return float(row.strip("|").split("|")[column])


@pytest.fixture
def synthetic(tmp_path):
    benchmarks = [entry("train-step:a", "ours-numpy", 0.2, flops=4e9), entry("train-step:a", "torch-cpu", 0.1, flops=4e9),
                  entry("train-step:b", "ours-numpy", 0.01), entry("train-step:b", "torch-cpu", 0.04),
                  entry("inference:a", "ours-numpy", 0.5, 1000), entry("inference:a", "torch-cpu", 0.25, 1000),
                  entry("inference:a", "ours-cupy", 0.003, 1000), entry("inference:a", "torch-cuda", 0.002, 1000),
                  entry("conv2d-fwd:only-ours", "ours-numpy", 0.3),
                  entry("peak:matmul-2048", "ours-numpy", 0.5, flops=50e9),
                  entry("peak:matmul-2048", "torch-cpu", 0.25, flops=50e9)]
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
    return path


def test_report_ratios_summary_and_chart(synthetic, tmp_path):
    out = tmp_path / "report"
    result = run(["-m", "benchmarks.report", str(synthetic), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    assert text in result.stdout
    # Columns: ours-numpy, torch-cpu, ours-cupy, torch-cuda, then the two ratios.
    assert table_ratio(text, "train-step:a", -2) == pytest.approx(2.0)
    assert table_ratio(text, "train-step:b", -2) == pytest.approx(0.25)
    assert table_ratio(text, "inference:a", -2) == pytest.approx(2.0)
    assert table_ratio(text, "inference:a", -1) == pytest.approx(1.5)
    summary = next(line for line in text.splitlines() if line.startswith("| train-step |"))
    assert f"{math.sqrt(2.0 * 0.25):.2f} (2)" in summary  # geometric mean of 2 and 0.25
    throughput = [line for line in text.splitlines() if line.startswith("| inference:a |")][-1]
    assert "| 2,000 | 4,000 | 333,333 | 500,000 |" in throughput
    # A group without a PyTorch twin is listed without a ratio.
    assert "| conv2d-fwd:only-ours | 300 ms | – | – | – | – | – |" in text
    # Per model: times in ms, ratios, GFLOP/s (4 GFLOP in 0.2 s and 0.1 s), the peaks.
    assert model_cell(text, "a", 1) == "200" and model_cell(text, "a", 2) == "100"
    assert model_cell(text, "a", 3) == "2.00" and model_cell(text, "a", 6) == "2.00"
    assert model_cell(text, "a", 7) == "20.0 / –" and model_cell(text, "a", 8) == "40.0 / –"
    assert model_cell(text, "b", 3) == "0.25"
    assert "ours-numpy 100.0 GFLOP/s, torch-cpu 200.0 GFLOP/s" in text
    # The picture: one row per model, two panels; no longer a bar per benchmark.
    png = (out / "ratios.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    width, height = struct.unpack(">II", png[16:24])
    assert 900 <= width <= 1600 and height <= 400, (width, height)


def test_report_warns_when_other_processes_loaded_the_machine(tmp_path):
    quiet, busy = entry("train-step:a", "ours-numpy", 0.2), entry("train-step:a", "torch-cpu", 0.1)
    quiet["extra_info"]["load_average"], busy["extra_info"]["load_average"] = 1.5, 5.0
    path = tmp_path / "loaded.json"
    path.write_text(json.dumps({"machine_info": {"minitorch_bench": {"threads": 2, "cpu_count": 2}},
                                "benchmarks": [quiet, busy]}))
    result = run(["-m", "benchmarks.report", str(path), "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert "load average as each benchmark started: 1.5 to 5.0 on 2 CPUs" in result.stdout
    assert "**Warning:** 1 of 2 benchmarks" in result.stdout


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not a readable JSON file"),
    ('{"machine_info": {}}', "no 'benchmarks' list"),
    ('{"benchmarks": [{"group": "g"}]}', "benchmark #0 has no numeric 'stats.min'"),
])
def test_report_rejects_bad_input_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    result = run(["-m", "benchmarks.report", str(path), "--out", str(tmp_path)])
    assert result.returncode == 2
    assert str(path) in result.stderr and message in result.stderr
