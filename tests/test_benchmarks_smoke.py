"""The benchmark suite runs, and its report command computes the right ratios.

The suite runs in subprocesses (``python -m pytest benchmarks/...``), as a user runs
it, on cheap LeNet-sized subsets, on every framework (the GPU ones skip here):

- a plain run of the layer benchmarks (LeNet's conv2d, max_pool2d, linear and loss,
  forward and forward+backward), which must time nothing;
- a timed run, cut to the fewest rounds, of LeNet's training step and inference and the
  scaling benchmark's batch 16, whose JSON must hold both CPU frameworks side by side
  in every group and feed the report.

Each run pays for starting torch, so the two split the suite rather than repeat it.
The report is also checked on a small synthetic JSON whose ratios are known.
"""
import json
import math
import re
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


def test_timed_run_pairs_frameworks_and_feeds_the_report(tmp_path):
    json_path = tmp_path / "bench.json"
    run_benchmarks("benchmarks/test_bench_steps.py", "benchmarks/test_bench_scaling.py",
                   "-k", f"({LENET}) or batch16", "--benchmark-only", "--benchmark-max-time=0",
                   f"--benchmark-json={json_path}")
    data = json.loads(json_path.read_text())
    by_group = {}
    for bench in data["benchmarks"]:
        by_group.setdefault(bench["group"], {})[bench["extra_info"]["framework"]] = bench
        assert bench["extra_info"]["threads"] == THREADS and bench["extra_info"]["dtype"] == "float32"
    assert set(by_group) == {"train-step:lenet", "inference:lenet", "scaling:lenet:batch-0016"}
    for group, frameworks in by_group.items():
        assert CPU_PAIR <= set(frameworks), group
    assert by_group["train-step:lenet"]["ours-numpy"]["extra_info"]["batch_size"] == 100
    assert by_group["inference:lenet"]["torch-cpu"]["extra_info"]["batch_size"] == 1000
    conditions = data["machine_info"]["minitorch_bench"]
    assert conditions["threads"] == THREADS and any("blas" in line for line in conditions["libraries"])

    result = run(["-m", "benchmarks.report", str(json_path), "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    step = by_group["train-step:lenet"]
    ratio = step["ours-numpy"]["stats"]["min"] / step["torch-cpu"]["stats"]["min"]
    assert table_ratio((tmp_path / "report.md").read_text(), "train-step:lenet") == pytest.approx(ratio, abs=0.006)
    assert (tmp_path / "ratios.png").read_bytes().startswith(PNG_MAGIC)


# ---- the report on a synthetic file ---------------------------------------------------
def entry(group, framework, seconds, batch_size=None):
    extra = {"framework": framework}
    if batch_size:
        extra["batch_size"] = batch_size
    return {"group": group, "name": f"test[{framework}]", "extra_info": extra,
            "stats": {"min": seconds, "median": 2 * seconds, "mean": 3 * seconds}}  # the report uses min


def table_ratio(markdown, group, column=-1):
    """Cell ``column`` (from the right) of ``group``'s row in the table of every benchmark."""
    table = markdown.split("## Every benchmark", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in table.splitlines() if line.startswith(f"| {group} |"))
    return float(row.strip("|").split("|")[column])


@pytest.fixture
def synthetic(tmp_path):
    benchmarks = [entry("train-step:a", "ours-numpy", 0.2), entry("train-step:a", "torch-cpu", 0.1),
                  entry("train-step:b", "ours-numpy", 0.01), entry("train-step:b", "torch-cpu", 0.04),
                  entry("inference:a", "ours-numpy", 0.5, 1000), entry("inference:a", "torch-cpu", 0.25, 1000),
                  entry("inference:a", "ours-cupy", 0.003, 1000), entry("inference:a", "torch-cuda", 0.002, 1000),
                  entry("conv2d-fwd:only-ours", "ours-numpy", 0.3)]
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
    assert (out / "ratios.png").read_bytes().startswith(PNG_MAGIC)


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
