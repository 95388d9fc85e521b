"""Turn a pytest-benchmark JSON file into a ratio table (ours / PyTorch) and a picture.

    python -m benchmarks.report .benchmarks/latest.json --out .benchmarks

writes ``DIR/report.md`` (also printed) and ``DIR/ratios.png``. Each benchmark group
holds one entry per framework (``extra_info["framework"]``); a row's ratio is our
fastest time over PyTorch's fastest on the same device, so below 1 means ours is
faster. The minimum, as ``timeit`` advises: other processes on a shared machine only
ever add time, so the fastest round is the best estimate of the work itself.

The picture has two panels, one row per zoo model: the train-step and inference ratios,
and the GFLOP/s each framework achieved (``extra_info["flops"]`` over the fastest time)
beside the peak of a large float32 matrix product at the same thread count (the
``peak:`` group), the physical limit that a network's products can at best approach.
The same per-model table ends the benchmark run (``pytest --benchmark-only``).
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
TRAIN_STEP = "train-step"
PEAK = "peak"  # the group prefix of test_bench_steps.test_matmul_peak
MODEL_KINDS = (TRAIN_STEP, INFERENCE)
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
        infos = [b.get("extra_info") or {} for b in by_framework.values()]
        batches = {f: (b.get("extra_info") or {}).get("batch_size") for f, b in by_framework.items()}
        ratios = {pair: times[pair[0]] / times[pair[1]]
                  for pair in PAIRS if pair[0] in times and times.get(pair[1], 0) > 0}
        flops = next((i["flops"] for i in infos if i.get("flops")), None)
        rows.append({"group": group, "times": times, "batches": batches, "ratios": ratios,
                     "model": next((i["model"] for i in infos if i.get("model")), None),
                     "gflops": {f: flops / t / 1e9 for f, t in times.items() if t > 0} if flops else {}})
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
             f"- Processes: {info.get('processes', 'not recorded')}.",
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


def by_model(rows):
    """``{model: {kind: row}}`` of the train-step and inference rows, in run order."""
    models = {}
    for row in rows:
        if category(row["group"]) in MODEL_KINDS and row["model"]:
            models.setdefault(row["model"], {})[category(row["group"])] = row
    return models


def peaks(rows):
    """``{framework: GFLOP/s}`` of the matrix-product peak benchmark."""
    return next((row["gflops"] for row in rows if category(row["group"]) == PEAK), {})


def _ms(row, framework):
    return f"{row['times'][framework] * 1e3:.3g}" if row and framework in row["times"] else "–"


def _cell(values, key, fmt):
    return format(values[key], fmt) if values and key in values else "–"


def model_summary(rows):
    """Ours beside PyTorch per zoo model, as Markdown table lines: fastest train-step
    and inference times (ms), their ratios, and the GFLOP/s achieved by each."""
    models = by_model(rows)
    out = []
    for ours, torch in pairs_present(rows):
        if not any(kind.get(k) and (ours, torch) in kind[k]["ratios"] for kind in models.values()
                   for k in MODEL_KINDS):
            continue
        out += [f"| model | train step {ours} ms | {torch} ms | ratio | inference {ours} ms | "
                f"{torch} ms | ratio | GFLOP/s {ours} train / inference | {torch} train / inference |",
                "|---|" + "---:|" * 8]
        for model, kinds in models.items():
            step, infer = kinds.get(TRAIN_STEP), kinds.get(INFERENCE)
            cells = [_ms(step, ours), _ms(step, torch), _cell(step and step["ratios"], (ours, torch), ".2f"),
                     _ms(infer, ours), _ms(infer, torch), _cell(infer and infer["ratios"], (ours, torch), ".2f"),
                     f"{_cell(step and step['gflops'], ours, '.1f')} / {_cell(infer and infer['gflops'], ours, '.1f')}",
                     f"{_cell(step and step['gflops'], torch, '.1f')} / {_cell(infer and infer['gflops'], torch, '.1f')}"]
            out.append(f"| {model} | " + " | ".join(cells) + " |")
        peak = peaks(rows)
        if ours in peak or torch in peak:
            out.append("")
            out.append(f"Matrix-product peak (float32, same threads): {ours} "
                       f"{_cell(peak, ours, '.1f')} GFLOP/s, {torch} {_cell(peak, torch, '.1f')} GFLOP/s.")
        out.append("")
    return out


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
    summary = model_summary(rows)
    if summary:
        out += ["## Per model (fastest time per call, ratio ours / PyTorch, GFLOP/s achieved)",
                ""] + summary
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
    """Two panels, one row per zoo model (the CPU pair, else the first pair run):
    left, the ratio ours / PyTorch of a training step and of inference (log scale, left
    of 1: ours faster); right, the GFLOP/s each framework achieved, beside the matrix
    product's peak (dashed), so the distance to the physical limit shows."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 2 rather than 5x10^-1, 2x10^0
    models = by_model(rows)
    pair = next((p for p in pairs_present(rows) if any(
        p in kind["ratios"] for kinds in models.values() for kind in kinds.values())), None)
    names = list(models)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.6 + 0.45 * max(1, len(names))),
                                      sharey=True)
    if pair is None or not names:
        left.text(0.5, 0.5, "no model benchmarked in both frameworks", ha="center", va="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    height = 0.38
    colours = {TRAIN_STEP: "#4c72b0", INFERENCE: "#dd8452"}
    for k, kind in enumerate(MODEL_KINDS):
        ys = [i + (k - 0.5) * height for i, m in enumerate(names)
              if kind in models[m] and pair in models[m][kind]["ratios"]]
        ratios = [models[m][kind]["ratios"][pair] for m in names
                  if kind in models[m] and pair in models[m][kind]["ratios"]]
        left.barh(ys, [r - 1 for r in ratios], left=1, height=height, color=colours[kind],
                  label=kind.replace("-", " "))
        for y, r in zip(ys, ratios):
            left.annotate(f"{r:.2f}", (r, y), xytext=(3 if r >= 1 else -3, 0),
                          textcoords="offset points", ha="left" if r >= 1 else "right",
                          va="center", fontsize=8)
        for f, marker, fill in ((pair[0], "o", colours[kind]), (pair[1], "s", "none")):
            points = [(models[m][kind]["gflops"][f], i + (k - 0.5) * height)
                      for i, m in enumerate(names) if kind in models[m] and f in models[m][kind]["gflops"]]
            if points:
                right.scatter(*zip(*points), marker=marker, s=36, facecolors=fill,
                              edgecolors=colours[kind], label=f"{f} {kind.replace('-', ' ')}")
    left.axvline(1.0, color="black", linewidth=1)
    left.set_xscale("log")
    spread = max(abs(math.log(r)) for kinds in models.values() for kind in kinds.values()
                 for p, r in kind["ratios"].items() if p == pair)
    left.set_xlim(math.exp(-1.35 * spread - 0.1), math.exp(1.35 * spread + 0.1))  # 1 centred
    left.set_yticks(range(len(names)), names)
    left.invert_yaxis()
    left.set_xlabel(f"time ratio {pair[0]} / {pair[1]} (log; left of 1: ours faster)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 1.2 / fig.get_figheight() / 4), ncol=2,
                fontsize=8)
    for (f, gflops), style in zip(sorted(peaks(rows).items()), ("--", ":")):
        right.axvline(gflops, color="black", linestyle=style, linewidth=1,
                      label=f"{f} matmul peak {gflops:.0f}")
    right.set_xscale("log")
    for axis in (left.xaxis, right.xaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
        axis.set_tick_params(which="minor", labelsize=7)
    right.set_xlabel("GFLOP/s achieved (log scale)")
    right.grid(axis="x", which="both", alpha=0.3)
    right.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.suptitle(f"{pair[0]} beside {pair[1]}: a training step and inference per zoo model")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
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
