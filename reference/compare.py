"""``python -m reference.compare``: train zoo models with minitorch_cnn and with their
PyTorch twins, same seed and settings, and tabulate test accuracy and speed side by side.

For each ``MODEL:EPOCHS`` of ``--models`` it runs, one after the other, as subprocesses
(so neither framework's threads or memory affect the other's run)::

    python -m minitorch_cnn.train --model M --epochs E --no-progress --out DIR/M-ours --summary-json DIR/M-ours.json
    python -m reference.train_torch --model M --epochs E --threads T --summary-json DIR/M-torch.json

in an environment where both use ``--threads`` threads: ``OPENBLAS_NUM_THREADS`` is
set to it (NumPy's BLAS; torch gets ``--threads``) and the ``OPENBLAS_CORETYPE`` /
``OPENBLAS_L2_SIZE`` pins are removed, so that OpenBLAS picks its kernels for this CPU.
Each run's output goes to ``DIR/M-ours.log`` / ``DIR/M-torch.log``. The table
(Markdown, with the commands and the machine's load average before and after) is
printed and written to ``DIR/compare.md``.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from minitorch_cnn.files import atomic_write
from minitorch_cnn.models import MODELS

__all__ = ["FRAMEWORKS", "parse_models", "child_environment", "commands", "format_table",
           "compare", "main"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
FRAMEWORKS = ("ours", "torch")
DEFAULT_MODELS = "mnist-example:3,bn-cnn:5,lenet3:5"


def parse_models(text):
    """``"a:3,b:5"`` -> ``[("a", 3), ("b", 5)]``; ValueError naming a bad item."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, epochs = item.partition(":")
        if name not in MODELS:
            raise ValueError(f"--models: unknown model {name!r} in {item!r}; valid names: "
                             f"{', '.join(MODELS)}")
        if not sep or not epochs.isdigit() or int(epochs) < 1:
            raise ValueError(f"--models: {item!r} must be MODEL:EPOCHS with EPOCHS >= 1")
        pairs.append((name, int(epochs)))
    if not pairs:
        raise ValueError("--models: no MODEL:EPOCHS given")
    return pairs


def child_environment(threads, base=None):
    """``base`` (default ``os.environ``) without the OpenBLAS kernel pins and with
    ``OPENBLAS_NUM_THREADS=threads``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in OPENBLAS_PINS}
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    return env


def commands(model, epochs, out_dir, threads, extra=()):
    """``{"ours": argv, "torch": argv}`` for one model; ``extra`` flags go to both."""
    base = ["--model", model, "--epochs", str(epochs), *extra]
    prefix = os.path.join(out_dir, model)
    return {
        "ours": [sys.executable, "-m", "minitorch_cnn.train", *base, "--no-progress",
                 "--out", prefix + "-ours", "--summary-json", prefix + "-ours.json"],
        "torch": [sys.executable, "-m", "reference.train_torch", *base, "--threads", str(threads),
                  "--summary-json", prefix + "-torch.json"],
    }


def _run(argv, env, log_path):
    """Run ``argv`` from the repository root, its output to ``log_path`` and echoed."""
    print("$ " + shlex.join(argv), flush=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            print("    " + line, end="", flush=True)
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"exit status {code} from: {shlex.join(argv)} (output in {log_path})")


def _load_summary(path):
    with open(path) as f:
        return json.load(f)


def _pct(x):
    return f"{100 * x:.2f}%"


def format_table(rows):
    """Markdown table from ``[(model, epochs, {"ours": summary, "torch": summary})]``."""
    lines = ["| model | epochs | ours test acc | torch test acc | ours s/epoch | torch s/epoch "
             "| ours img/s | torch img/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, epochs, s in rows:
        per_epoch = {fw: s[fw]["train_seconds"] / s[fw]["epochs"] for fw in FRAMEWORKS}
        lines.append(f"| {model} | {epochs} | {_pct(s['ours']['test_accuracy'])} | "
                     f"{_pct(s['torch']['test_accuracy'])} | {per_epoch['ours']:.1f} | "
                     f"{per_epoch['torch']:.1f} | {s['ours']['images_per_second']:.0f} | "
                     f"{s['torch']['images_per_second']:.0f} |")
    return "\n".join(lines)


def _load_average():
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "unavailable"


def compare(pairs, out_dir, threads, extra=()):
    """Run both frameworks for each ``(model, epochs)``; write ``out_dir/compare.md``
    and return its text."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    env = child_environment(threads)
    load_before, started = _load_average(), time.perf_counter()
    rows, ran = [], []
    for model, epochs in pairs:
        argvs = commands(model, epochs, out_dir, threads, extra)
        summaries = {}
        for fw in FRAMEWORKS:
            _run(argvs[fw], env, os.path.join(out_dir, f"{model}-{fw}.log"))
            summaries[fw] = _load_summary(os.path.join(out_dir, f"{model}-{fw}.json"))
            ran.append(shlex.join(argvs[fw]))
        rows.append((model, epochs, summaries))
    minutes = (time.perf_counter() - started) / 60
    text = "\n".join([
        f"# minitorch_cnn (NumPy) against PyTorch (CPU), {threads} thread(s) each", "",
        "Same seed, settings, data order and initial weights; only dropout masks differ. "
        "Seconds per epoch are training time, evaluation excluded.", "",
        format_table(rows), "",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {_load_average()}; "
        f"{minutes:.1f} minutes in all.", "",
        "Environment: OPENBLAS_NUM_THREADS=%d; %s removed. Commands, from %s:" % (
            threads, " and ".join(OPENBLAS_PINS), ROOT), "",
        "```", *ran, "```", ""])
    path = os.path.join(out_dir, "compare.md")
    atomic_write(path, lambda f: f.write(text.encode()))
    return text


def _integer(minimum):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text):
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return int(text)
    return parse


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m reference.compare",
        description="Train zoo models with minitorch_cnn and with PyTorch (same seed and "
                    "settings) and write a Markdown table of test accuracy and speed.")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help=f"comma-separated MODEL:EPOCHS (default: {DEFAULT_MODELS})")
    p.add_argument("--out", required=True, help="output folder: runs, logs, summaries, compare.md")
    p.add_argument("--threads", type=_integer(1), default=2,
                   help="threads for each framework (default: 2)")
    p.add_argument("--seed", type=_integer(0), default=None,
                   help="seed for both (default: the trainers' own, 0)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files, for both")
    p.add_argument("--train-subset", type=_integer(1), default=None, metavar="N",
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--test-subset", type=_integer(2), default=None, metavar="N",
                   help="evaluate on the first N test images only (quick runs)")
    args = p.parse_args(argv)
    try:
        pairs = parse_models(args.models)
    except ValueError as e:
        p.error(str(e))
    extra = []
    for flag, value in (("--seed", args.seed), ("--data-dir", args.data_dir),
                        ("--train-subset", args.train_subset), ("--test-subset", args.test_subset)):
        if value is not None:
            extra += [flag, str(value)]
    try:
        text = compare(pairs, args.out, args.threads, extra)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
