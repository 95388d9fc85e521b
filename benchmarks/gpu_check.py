"""The one-shot device check of the CuPy backend: ``make gpu-check`` on a GPU machine.

Everything it needs is in the working tree (Fashion-MNIST under ./data/fashion-mnist,
from ``make gpu-data``); it runs with the machine's own python3 (CuPy, PyTorch CUDA, nvcc,
pytest) and installs nothing. In order, each part timed and its outcome kept:

1. kernels: ``tests/test_kernels.py``, the CUDA kernels compiled by NVRTC (and nvcc
   where it is on PATH) against the generic path;
2. ops: the op, module, optimizer and PyTorch-twin suites on cupy (``MT_TEST_BACKEND``);
3. no-sync: ``tests/test_cupy_backend.py``, its training steps under
   ``cupyx.allow_synchronize(False)``;
4. accuracy: one epoch of lenet by the calm protocol of test_cupy_backend.py on numpy
   and on cupy, and their test accuracies;
5. train: ``python -m minitorch_cnn.train --backend cupy --model bn-cnn`` for an epoch;
6. steps: the training step time of every zoo model at its tutorial batch size, ours
   on cupy against PyTorch CUDA with TF32 off on both (CuPy's default), then with
   PyTorch's own default (TF32 convolutions), and PyTorch's kernel launches per step
   from its profiler.

The report goes to ``$OUT/gpu-check.md`` when ``$OUT`` is set, else ``out/gpu-check.md``.
With ``--standin`` every part runs on the CuPy stand-in of ``tests/fake_cupy.py`` on the
CPU (quick sizes; PyTorch CUDA is then reported unavailable), so the script is tested
where there is no GPU: ``make gpu-check GPU_CHECK_STANDIN=1``.
"""
import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
OP_SUITES = ["tests/test_tensor.py", "tests/test_functional.py", "tests/test_nn.py",
             "tests/test_optim.py", "tests/test_gradcheck.py", "tests/test_reference.py"]
PARTS = ("kernels", "ops", "no-sync", "accuracy", "train", "steps")
# lenet at SGD lr 0.02, momentum 0.9: see test_cupy_backend.py for why this protocol
CALM = dict(lr=0.02, momentum=0.9, batch_size=100)
ACCURACY_TOLERANCE = 0.3  # points; the test's, for the same reason
WARMUP_STEPS, TIMED_STEPS = 5, 30


class Report:
    """Markdown sections, one per part, written after each part (a killed run keeps
    what it had)."""

    def __init__(self, path, title):
        self.path, self.lines, self.failed = Path(path), [f"# {title}", ""], []

    def section(self, name, ok, seconds, body):
        if not ok:
            self.failed.append(name)
        self.lines += [f"## {name}: {'ok' if ok else 'FAILED'} ({seconds:.0f} s)", "", *body, ""]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines))


def _fenced(text, lines=40):
    tail = text.strip().splitlines()[-lines:]
    return ["```", *tail, "```"]


def pytest_part(files, backend, timeout, extra=()):
    """Run pytest on ``files`` with the engine on ``backend``; (ok, report lines)."""
    env = dict(os.environ, MT_TEST_BACKEND=backend, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *extra, *files]
    try:
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return False, [f"timed out after {timeout} s: `{' '.join(command[1:])}`",
                       *_fenced((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes)
                                else exc.stdout or "")]
    return run.returncode == 0, [f"`MT_TEST_BACKEND={backend} {' '.join(command[1:])}`: exit {run.returncode}",
                                 *_fenced(run.stdout + run.stderr, 25)]


def one_epoch_accuracy(backend_name, train, test):
    """Test accuracy (%) of lenet after one epoch of ``train`` by the calm protocol."""
    import minitorch_cnn as mt
    from minitorch_cnn import optim, training
    from minitorch_cnn.models import get_model

    norm = mt.data.NORMALIZATION["fashion-mnist"]
    with mt.backend(backend_name) as be:
        mt.manual_seed(0)
        model = get_model("lenet")
        opt = optim.SGD(model.parameters(), lr=CALM["lr"], momentum=CALM["momentum"])
        loader = mt.data.DataLoader(*train, batch_size=CALM["batch_size"], shuffle=True, seed=0,
                                    mean=norm[0], std=norm[1], xp=be.xp)
        training.train_epoch(model, opt, loader, "cross_entropy", epoch=0, seed=0)
        test_loader = mt.data.DataLoader(*test, batch_size=1000, mean=norm[0], std=norm[1], xp=be.xp)
        return 100.0 * training.evaluate(model, test_loader, "cross_entropy")[1]


def accuracy_part(args):
    import minitorch_cnn as mt

    train = mt.data.load_dataset("fashion-mnist", "train", root=args.data_dir, download=False)
    test = mt.data.load_dataset("fashion-mnist", "test", root=args.data_dir, download=False)
    if args.train_images:
        train, test = tuple(a[:args.train_images] for a in train), tuple(a[:args.train_images] for a in test)
    cpu = one_epoch_accuracy("numpy", train, test)
    gpu = one_epoch_accuracy("cupy", train, test)
    ok = abs(cpu - gpu) <= ACCURACY_TOLERANCE
    return ok, [f"lenet, one epoch of {len(train[1])} images (SGD lr {CALM['lr']}, momentum "
                f"{CALM['momentum']}, batch {CALM['batch_size']}), {len(test[1])} test images:",
                f"numpy {cpu:.2f}%, cupy {gpu:.2f}%, difference {gpu - cpu:+.2f} points "
                f"(tolerance {ACCURACY_TOLERANCE})"]


def train_part(args):
    from minitorch_cnn import train as train_mod

    out = Path(args.report).parent / "gpu-check-train"
    argv = ["--backend", "cupy", "--model", "bn-cnn", "--epochs", "1", "--no-progress", "--out", str(out),
            "--summary-json", str(out / "summary.json")]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.train_images:
        argv += ["--train-subset", str(args.train_images), "--test-subset", str(args.train_images)]
    started = time.perf_counter()
    code = train_mod.main(argv)
    body = [f"`python -m minitorch_cnn.train {' '.join(argv)}`: exit {code} in {time.perf_counter() - started:.1f} s"]
    summary = out / "summary.json"
    if summary.exists():
        body += ["```json", summary.read_text().strip(), "```"]
    return code == 0, body


def median_step_ms(step):
    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(TIMED_STEPS):
        started = time.perf_counter()
        step()  # ends in a device synchronisation
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def torch_launches(framework, step):
    """CUDA kernels PyTorch's profiler saw in one step, or None."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
        return sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    except Exception:  # the profiler is optional here: a missing CUPTI must not fail the check
        return None


def steps_part(args):
    from benchmarks.frameworks import FrameworkUnavailable, get_framework, train_step
    from minitorch_cnn.models import MODELS

    names = args.models or list(MODELS)
    ours = get_framework("ours-cupy")
    try:
        torch_fw = get_framework("torch-cuda")
        import torch
    except FrameworkUnavailable as exc:
        torch_fw, note = None, f"PyTorch CUDA not measured: {exc}"
    rows = ["| model | batch | ours-cupy ms | torch-cuda ms, TF32 off | ratio | torch-cuda ms, "
            "its default | ratio | torch launches/step |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        spec = MODELS[name]
        rng = np.random.default_rng(0)
        shape = (spec.batch_size, *spec.input_shape)
        x, y = rng.standard_normal(shape).astype(np.float32), rng.integers(0, 10, spec.batch_size)
        ours_ms = median_step_ms(train_step(ours, spec, x, y))
        cells = [name, str(spec.batch_size), f"{ours_ms:.2f}"]
        if torch_fw is None:
            cells += ["-"] * 5
        else:
            defaults = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            for tf32 in (False, None):
                torch.backends.cuda.matmul.allow_tf32 = defaults[0] if tf32 is None else tf32
                torch.backends.cudnn.allow_tf32 = defaults[1] if tf32 is None else tf32
                torch_ms = median_step_ms(train_step(torch_fw, spec, x, y))
                cells += [f"{torch_ms:.2f}", f"{ours_ms / torch_ms:.2f}x"]
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = defaults
            launches = torch_launches(torch_fw, train_step(torch_fw, spec, x, y))
            cells.append("-" if launches is None else str(launches))
        rows.append("| " + " | ".join(cells) + " |")
    body = [f"median of {TIMED_STEPS} steps after {WARMUP_STEPS} warm-up steps, each ending in a device sync; "
            "random inputs; ratio = ours / torch (lower is better)", "", *rows]
    return True, body + ([] if torch_fw is not None else ["", note])


def device_line():
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return (f"{props['name'].decode()}, CuPy {cupy.__version__}, CUDA runtime "
                f"{cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}")
    except Exception as exc:  # the stand-in, or no device: say so rather than fail
        return f"no CUDA device description ({type(exc).__name__}: {exc})"


def run_parts(args, report):
    backend = "cupy-standin" if args.standin else "cupy"
    pytest_parts = {
        "kernels": lambda: pytest_part(["tests/test_kernels.py"], backend, args.timeout),
        "ops": lambda: pytest_part(OP_SUITES, backend, args.timeout, ("-x",) if args.standin else ()),
        "no-sync": lambda: pytest_part(["tests/test_cupy_backend.py"], backend, args.timeout, ("-m", "not slow")),
    }
    in_process = {"accuracy": lambda: accuracy_part(args), "train": lambda: train_part(args),
                  "steps": lambda: steps_part(args)}
    for part in args.parts:
        started = time.perf_counter()
        try:
            ok, body = (pytest_parts.get(part) or in_process[part])()
        except Exception:
            ok, body = False, _fenced(traceback.format_exc())
        report.section(part, ok, time.perf_counter() - started, body)
        print(f"gpu-check: {part}: {'ok' if ok else 'FAILED'} ({time.perf_counter() - started:.0f} s)", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--standin", action="store_true", help="run on the CuPy stand-in (CPU), quick sizes")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of parts (default: all: {','.join(PARTS)})")
    p.add_argument("--report", default=None, help="report path (default: $OUT/gpu-check.md or out/gpu-check.md)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: searched for, ./data first)")
    p.add_argument("--train-images", type=int, default=None, help="train and test on this many images only")
    p.add_argument("--models", default=None, help="comma list of zoo models to time (default: all)")
    p.add_argument("--timeout", type=int, default=240, help="seconds per pytest part (default 240)")
    args = p.parse_args(argv)
    args.parts = [part for part in args.parts.split(",") if part]
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        p.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    args.models = args.models.split(",") if args.models else None
    if args.standin:  # the CPU cannot afford the device's sizes
        args.train_images = args.train_images or 1000
        args.models = args.models or ["lenet", "bn-cnn"]
    out = os.environ.get("OUT")
    args.report = args.report or str(Path(out) / "gpu-check.md" if out else ROOT / "out" / "gpu-check.md")
    return args


def main(argv=None):
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.standin:
            sys.path.insert(0, str(TESTS))
            import fake_cupy

            stack.enter_context(fake_cupy.installed())
        report = Report(args.report, "CuPy backend device check" + (" (on the CuPy stand-in, CPU)" if args.standin else ""))
        report.lines += [f"device: {device_line()}", f"python {sys.version.split()[0]}, numpy {np.__version__}", ""]
        run_parts(args, report)
    print(f"gpu-check: report in {args.report}" + (f"; failed: {', '.join(report.failed)}" if report.failed else ""))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
