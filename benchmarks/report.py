"""Turn a pytest-benchmark JSON file into a ratio table (ours / PyTorch) and a bar chart.

    python -m benchmarks.report .benchmarks/latest.json --out .benchmarks

writes ``DIR/report.md`` (also printed) and ``DIR/ratios.png``. Each benchmark group
holds one entry per framework (``extra_info["framework"]``); a row's ratio is our
fastest time over PyTorch's fastest on the same device, so below 1 means ours is
faster. The minimum, as ``timeit`` advises: other processes on a shared machine only
ever add time, so the fastest round is the best estimate of the work itself.
"""
import argparse
import json
import math
import sys
from pathlib import Path

from .frameworks import PAIRS

REPORT_NAME = "report.md"
CHART_NAME = "ratios.png"
INFERENCE = "inference"  # the group prefix of test_bench_steps.test_inference
STATISTIC = "min"


class ReportError(ValueError):
    """The JSON file cannot be turned into a report; the message names the file and fault."""


def load_benchmarks(path):
    """``(machine_info, benchmarks)`` of a ``--benchmark-json`` file, checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file (run `make bench` or pass --benchmark-json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: not a readable JSON file: {err}") from None
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list):
        raise ReportError(f"{path}: no 'benchmarks' list; is it a pytest-benchmark JSON file?")
    for i, bench in enumerate(benchmarks):
        try:
            float(bench["stats"][STATISTIC])
        except (KeyError, TypeError, ValueError):
            raise ReportError(f"{path}: benchmark #{i} has no numeric 'stats.{STATISTIC}'") from None
    return data.get("machine_info") or {}, benchmarks


def framework_of(bench):
    """The framework that ran a benchmark entry, or None for a foreign entry."""
    return (bench.get("extra_info") or {}).get("framework") or (bench.get("params") or {}).get("framework")


def ratio_rows(benchmarks):
    """One row per group, in name order: each framework's fastest time and batch size
    and, per (ours, torch) pair run on both, the ratio of those times."""
    groups = {}
    for bench in benchmarks:
        framework = framework_of(bench)
        if framework is not None and bench.get("group"):  # else not one of this suite's
            groups.setdefault(str(bench["group"]), {})[framework] = bench
    rows = []
    for group, by_framework in sorted(groups.items()):
        times = {f: float(b["stats"][STATISTIC]) for f, b in by_framework.items()}
        batches = {f: (b.get("extra_info") or {}).get("batch_size") for f, b in by_framework.items()}
        ratios = {pair: times[pair[0]] / times[pair[1]]
                  for pair in PAIRS if pair[0] in times and times.get(pair[1], 0) > 0}
        rows.append({"group": group, "times": times, "batches": batches, "ratios": ratios})
    return rows


def pairs_present(rows):
    return [pair for pair in PAIRS if any(pair in row["ratios"] for row in rows)]


def format_seconds(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def category(group):
    """The kind of benchmark: a group's name up to its first colon."""
    return group.split(":", 1)[0]


def geometric_means(rows, pair):
    """``{category: (count, geometric mean ratio)}`` over the rows that have ``pair``."""
    logs = {}
    for row in rows:
        if pair in row["ratios"]:
            logs.setdefault(category(row["group"]), []).append(math.log(row["ratios"][pair]))
    return {cat: (len(v), math.exp(sum(v) / len(v))) for cat, v in sorted(logs.items())}


def conditions(machine_info, benchmarks):
    """The fairness conditions the benchmark run recorded (see ``benchmarks/conftest.py``)."""
    info = machine_info.get("minitorch_bench")
    if not info:
        return ["(the JSON file does not record the run's conditions)"]
    lines = [f"- Threads: {info.get('threads')} for every framework ({info.get('thread_control')}).",
             f"- dtype {info.get('dtype')}; {info.get('data')}; {info.get('weights')}.",
             f"- {info.get('warmup')}."]
    lines += [f"- {line}" for line in info.get("libraries", [])]
    lines += [f"- {line}" for line in info.get("environment", [])]
    return lines + load_note(benchmarks, info.get("cpu_count"))


def load_note(benchmarks, cpu_count):
    """The machine's load average as the benchmarks started, and a warning where other
    processes had more runnable threads than there were CPUs left for the run's own."""
    loads = [b["extra_info"]["load_average"] for b in benchmarks
             if isinstance((b.get("extra_info") or {}).get("load_average"), (int, float))]
    if not loads:
        return []
    line = (f"- 1-minute load average as each benchmark started: {min(loads):.1f} to {max(loads):.1f}"
            + (f" on {cpu_count} CPUs" if cpu_count else "") + " (the run's own threads count too).")
    if cpu_count and max(loads) > cpu_count + 1:
        busy = sum(load > cpu_count + 1 for load in loads)
        line += (f" **Warning:** {busy} of {len(loads)} benchmarks started with the load above "
                 f"{cpu_count + 1}: other processes competed for the CPUs, and multi-threaded "
                 "times (where threads wait for one another) can be inflated many times over.")
    return [line]


def markdown(rows, machine_info, benchmarks):
    pairs = pairs_present(rows)
    frameworks = [name for pair in pairs for name in pair]
    out = ["# minitorch_cnn beside PyTorch", "",
           "Ratio = our fastest time / PyTorch's fastest time for the same work on the same "
           "device (the fastest round: other processes only ever add time); below 1 means "
           "ours is faster.", ""]
    out += conditions(machine_info, benchmarks) + [""]
    if not pairs:
        out.append("No benchmark group holds both our result and PyTorch's: nothing to compare.")
        return "\n".join(out) + "\n"
    out += ["## Summary (geometric mean of the ratios)", "",
            "| kind | " + " | ".join(f"{a} / {b} (n)" for a, b in pairs) + " |",
            "|---|" + "---:|" * len(pairs)]
    means = {pair: geometric_means(rows, pair) for pair in pairs}
    for cat in sorted({c for m in means.values() for c in m}):
        cells = [f"{means[p][cat][1]:.2f} ({means[p][cat][0]})" if cat in means[p] else "–" for p in pairs]
        out.append(f"| {cat} | " + " | ".join(cells) + " |")
    out += ["", "## Every benchmark (fastest time per call)", "",
            "| benchmark | " + " | ".join(frameworks) + " | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |",
            "|---|" + "---:|" * (len(frameworks) + len(pairs))]
    for row in rows:
        times = [format_seconds(row["times"][f]) if f in row["times"] else "–" for f in frameworks]
        ratios = [f"{row['ratios'][p]:.2f}" if p in row["ratios"] else "–" for p in pairs]
        out.append(f"| {row['group']} | " + " | ".join(times + ratios) + " |")
    out += throughput(rows, frameworks)
    return "\n".join(out) + "\n"


def throughput(rows, frameworks):
    """Images per second of the inference benchmarks (batch size / fastest time)."""
    rows = [row for row in rows if category(row["group"]) == INFERENCE and row["ratios"]]
    if not rows:
        return []
    out = ["", "## Inference throughput (images/s)", "",
           "| benchmark | " + " | ".join(frameworks) + " |", "|---|" + "---:|" * len(frameworks)]
    for row in rows:
        cells = [f"{row['batches'][f] / row['times'][f]:,.0f}" if row["batches"].get(f) else "–"
                 for f in frameworks]
        out.append(f"| {row['group']} | " + " | ".join(cells) + " |")
    return out


def bar_chart(rows, path):
    """Horizontal bars from 1 to each ratio on a log scale (right of 1: ours slower),
    one colour per framework pair, the ratio written at the bar's end."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    pairs = pairs_present(rows)
    rows = [row for row in rows if row["ratios"]]
    height = 0.8 / max(1, len(pairs))
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.25 * max(1, len(rows)) * max(1, len(pairs))))
    for k, pair in enumerate(pairs):
        ys = [i + k * height for i, row in enumerate(rows) if pair in row["ratios"]]
        ratios = [row["ratios"][pair] for row in rows if pair in row["ratios"]]
        ax.barh(ys, [r - 1 for r in ratios], left=1, height=height, label=f"{pair[0]} / {pair[1]}")
        for y, r in zip(ys, ratios):
            ax.annotate(f"{r:.2f}", (r, y), xytext=(3 if r >= 1 else -3, 0), textcoords="offset points",
                        ha="left" if r >= 1 else "right", va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 2 rather than 5x10^-1, 2x10^0
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.margins(x=0.15)
    ax.set_yticks([i + height * (len(pairs) - 1) / 2 for i in range(len(rows))])
    ax.set_yticklabels([row["group"] for row in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio, ours / PyTorch (log scale; left of 1: ours faster)")
    if pairs:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(json_path, out_dir):
    """Write ``report.md`` and ``ratios.png`` into ``out_dir``; return the Markdown."""
    machine_info, benchmarks = load_benchmarks(json_path)
    rows = ratio_rows(benchmarks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, machine_info, benchmarks)
    (out_dir / REPORT_NAME).write_text(text)
    bar_chart(rows, out_dir / CHART_NAME)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="a pytest-benchmark --benchmark-json file")
    parser.add_argument("--out", default=".benchmarks", help="folder for report.md and ratios.png")
    args = parser.parse_args(argv)
    try:
        text = write_report(args.json, args.out)
    except ReportError as err:
        parser.exit(2, f"error: {err}\n")
    sys.stdout.write(text)
    print(f"\nwrote {Path(args.out) / REPORT_NAME} and {Path(args.out) / CHART_NAME}")


if __name__ == "__main__":
    main()
