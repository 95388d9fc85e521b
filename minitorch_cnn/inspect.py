"""Looking inside a trained network: ``python -m minitorch_cnn.inspect SUBCOMMAND ...``.

Subcommands (each writes PNGs and its own ``summary-<subcommand>.json`` into ``--out``,
so that all of them can share one folder, and prints a short text summary):

- ``filters CKPT``: the first and second convolution layers' kernels as image grids.
- ``evolution FILTERS_NPZ``: how each first-layer kernel changed over training, from
  the ``filters.npz`` that ``train --record-filters N`` writes.
- ``features CKPT --index I``: the activations after each convolution for test image I
  (the model's ``retrieve_features``), beside the image.
- ``predictions CKPT``: a gallery of test images with predicted and true classes, and
  the confusion matrix of the test set (PNG and CSV).
- ``shift CKPT --max-shift K``: test accuracy of images shifted 0..K pixels left, right,
  up and down (zero fill), as a curve, plus one image's predictions under the shifts.
- ``permutation``: trains the fully connected ``fc2`` and the equally small
  ``small-cnn`` on original pixels and on one fixed random permutation of the pixels.
- ``report RUN_DIR``: one self-contained HTML page of a training run: its curves, and
  the inspections above found in ``--out`` (default ``RUN_DIR/inspect``); those of the
  run's checkpoint that are missing or older than it are run first (not with
  ``--no-run``).

The pure computations (shifting, permuting, confusion matrix, accuracy per shift) are
the small functions at the top; they work on NumPy arrays and are tested on
constructed cases. Images are shifted and permuted as raw pixels (uint8), before the
same normalisation that training applies, so a vacated pixel is black (zero fill).
"""
import argparse
import csv
import io
import json
import os
import sys
import time

import numpy as np

import minitorch_cnn as mt

from . import html_page, visualize
from .checkpoint import load_model
from .files import atomic_replace_text
from .data import (DATASETS, NORMALIZATION, DataLoader, DatasetNotFoundError, class_names,
                   load_dataset)
from .metrics import CSV_NAME, ERROR_PNG, LOSS_PNG, read_metrics
from .models import MODELS, get_spec
from .training import evaluate, make_optimizer, train_epoch

# (rows down, columns right) per pixel of shift; "left" moves the content left.
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


class InspectError(ValueError):
    """A bad argument or input file; the message names it."""


# ---- pure computations -------------------------------------------------------------------
def shift_images(images, dy, dx, fill=0):
    """``images`` (..., H, W) moved ``dy`` pixels down and ``dx`` right (negative: up,
    left): ``out[..., y, x] = images[..., y - dy, x - dx]``. Pixels moved past the edge
    are lost and the vacated ones are ``fill``."""
    images = np.asarray(images)
    h, w = images.shape[-2:]
    out = np.full(images.shape, fill, dtype=images.dtype)  # C order, whatever the input's
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def direction_offset(direction, pixels):
    """``(dy, dx)`` of a shift by ``pixels`` in ``direction`` (a key of DIRECTIONS)."""
    if direction not in DIRECTIONS:
        raise InspectError(f"unknown direction {direction!r}; choose from {', '.join(DIRECTIONS)}")
    dy, dx = DIRECTIONS[direction]
    return dy * pixels, dx * pixels


def random_permutation(size, seed):
    """The fixed pixel permutation of the experiment: the same for a given seed."""
    return np.random.default_rng(seed).permutation(size)


def inverse_permutation(perm):
    """``inv`` with ``inv[perm[i]] == i``, so that permuting by ``perm`` then ``inv`` is
    the identity."""
    perm = np.asarray(perm)
    if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(perm.size)):
        raise InspectError(f"not a permutation of 0..{perm.size - 1}")
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


def permute_pixels(images, perm):
    """``images`` (..., H, W) with pixel ``perm[i]`` moved to position ``i`` (row-major),
    the same permutation for every image and channel."""
    images = np.asarray(images)
    h, w = images.shape[-2:]
    if len(perm) != h * w:
        raise InspectError(f"a permutation of {len(perm)} pixels does not fit {h}x{w} images")
    flat = images.reshape(images.shape[:-2] + (h * w,))
    # Indexing the last axis leaves the image axis innermost in memory; C order keeps
    # every later per-image gather (DataLoader batches) a contiguous copy.
    return np.ascontiguousarray(flat[..., perm]).reshape(images.shape)


def confusion_matrix(true, pred, num_classes):
    """Counts ``m[t, p]`` of items of true class t predicted as p (int64)."""
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise InspectError(f"{true.shape[0]} labels but {pred.shape[0]} predictions")
    for what, v in (("label", true), ("prediction", pred)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise InspectError(f"a {what} lies outside 0..{num_classes - 1}")
    return np.bincount(true * num_classes + pred,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_csv(matrix, names):
    """The confusion matrix as CSV: a header of predicted classes, a row per true class."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["true\\predicted"] + list(names))
    writer.writerows([name] + [int(v) for v in row] for name, row in zip(names, matrix))
    return text.getvalue()


def accuracy(true, pred):
    true, pred = np.asarray(true), np.asarray(pred)
    return float(np.mean(true == pred)) if true.size else float("nan")


def accuracy_per_shift(predict, images, labels, max_shift, directions=tuple(DIRECTIONS)):
    """``{direction: [accuracy at shift 0, 1, ..., max_shift]}`` of ``predict`` (a
    function from images to class indices) on ``images`` shifted with zero fill.
    Shift 0 is the unshifted accuracy, computed once and shared by every direction."""
    if max_shift < 0:
        raise InspectError(f"max_shift must be non-negative, got {max_shift}")
    def shifted_accuracy(direction, pixels):
        return accuracy(labels, predict(shift_images(images, *direction_offset(direction, pixels))))

    unshifted = accuracy(labels, predict(images))
    return {d: [unshifted] + [shifted_accuracy(d, s) for s in range(1, max_shift + 1)]
            for d in directions}


def kernel_change(weights):
    """Per recorded step and kernel, ``||w(t) - w(0)|| / ||w(0)||``: (K, Cout*Cin)."""
    k = weights.shape[0]
    kernels = weights.reshape(k, -1, weights.shape[-2] * weights.shape[-1]).astype(np.float64)
    start = np.linalg.norm(kernels[0], axis=-1)
    return np.linalg.norm(kernels - kernels[0], axis=-1) / np.maximum(start, 1e-12)


# ---- the model, on data as training prepares it ----------------------------------------
def normalized_loader(images, labels, dataset, batch_size):
    """Batches normalised exactly as training normalises them, on the active backend."""
    mean, std = NORMALIZATION[dataset]
    return DataLoader(images, labels, batch_size=batch_size, mean=mean, std=std,
                      xp=mt.get_backend().xp)


def predict(model, images, dataset, batch_size=1000):
    """Predicted class indices (NumPy int64) of raw uint8 ``images`` (N, [C,] H, W)."""
    model.eval()
    loader = normalized_loader(images, np.zeros(len(images), np.int64), dataset, batch_size)
    out = []
    with mt.no_grad():
        for x, _ in loader:
            out.append(model(mt.Tensor(x)).argmax(dim=1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def conv_layers(model):
    """``[(dotted name, Conv2d)]`` in the order the model registers them."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, mt.nn.Conv2d)]


def load_test_set(dataset, data_dir, subset):
    """The test split, or its first ``subset`` images."""
    images, labels = load_dataset(dataset, "test", root=data_dir)
    return (images, labels) if subset is None else (images[:subset], labels[:subset])


def load_checkpoint(args):
    """``(model, dataset name)`` of ``args.checkpoint`` on ``args.backend``."""
    model, checkpoint = load_model(args.checkpoint, backend=args.backend)
    dataset = checkpoint.config.get("dataset")
    if dataset not in NORMALIZATION:
        raise InspectError(f"checkpoint {args.checkpoint}: config names no known dataset "
                           f"(dataset={dataset!r})")
    model.eval()
    return model, dataset


# ---- output ---------------------------------------------------------------------------------
def summary_name(command):
    """Each subcommand's own summary file, so that subcommands can share one ``--out``."""
    return f"summary-{command}.json"


def finish(args, summary, lines):
    """Write ``summary-<command>.json``, print the text summary; the command's exit status."""
    summary = {"command": args.command, **summary}
    path = atomic_replace_text(out_path(args, summary_name(args.command)),
                               json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines + [f"wrote {path}"]))
    return 0


def out_path(args, name):
    return os.path.join(args.out, name)


def _stats(array):
    array = np.asarray(array, dtype=np.float64)
    return {"min": float(array.min()), "max": float(array.max()), "mean": float(array.mean()),
            "std": float(array.std())}


# ---- subcommands -------------------------------------------------------------------------
def cmd_filters(args):
    model, _ = load_checkpoint(args)
    convs = conv_layers(model)[:2]
    if not convs:
        raise InspectError(f"checkpoint {args.checkpoint}: the model has no convolution layer")
    layers, lines = [], [f"filters of {args.checkpoint}:"]
    for k, (name, conv) in enumerate(convs, 1):
        weight = conv.weight.numpy()
        rgb = k == 1 and weight.shape[1] == 3  # a first layer over colour images
        png = visualize.draw_kernels(weight, f"layer {k} ({name}): kernels {weight.shape}",
                                     out_path(args, f"filters_layer{k}.png"), rgb=rgb)
        layers.append({"layer": k, "module": name, "shape": list(weight.shape), "png": png,
                       "grid": list(visualize.kernel_grid_shape(weight.shape, rgb)),
                       **_stats(weight)})
        lines.append(f"  layer {k} {name}: {weight.shape}, weights in [{weight.min():.3f}, "
                     f"{weight.max():.3f}] -> {png}")
    return finish(args, {"checkpoint": args.checkpoint, "layers": layers}, lines)


def load_filter_record(path):
    """``(steps (K,), weights (K, Cout, Cin, kh, kw))`` from ``train --record-filters``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("steps", "weights") if k not in f.files]
            if missing:
                raise InspectError(f"{path}: missing array(s) {', '.join(missing)}; "
                                   "expected 'steps' and 'weights'")
            steps, weights = f["steps"], f["weights"]
    except (OSError, ValueError) as e:
        if isinstance(e, InspectError):
            raise
        raise InspectError(f"{path}: not a readable .npz file ({e})") from None
    if weights.ndim != 5 or steps.shape != weights.shape[:1] or not len(steps):
        raise InspectError(f"{path}: expected 'steps' (K,) and 'weights' (K, Cout, Cin, kh, kw) "
                           f"with K >= 1, got {steps.shape} and {weights.shape}")
    return steps, weights


def cmd_evolution(args):
    steps, weights = load_filter_record(args.record)
    change = kernel_change(weights)
    grid = visualize.draw_kernel_evolution(steps, weights, out_path(args, "evolution.png"))
    curve = visualize.draw_kernel_change(steps, change, out_path(args, "kernel_change.png"))
    final = change[-1]
    summary = {"record": args.record, "snapshots": int(len(steps)),
               "steps": [int(s) for s in steps], "kernel_shape": list(weights.shape[1:]),
               "columns": [int(steps[i]) for i in visualize.snapshot_columns(len(steps))],
               "final_relative_change": [float(c) for c in final],
               "pngs": [grid, curve]}
    lines = [f"{len(steps)} snapshots of {weights.shape[1] * weights.shape[2]} first-layer "
             f"kernels, steps {int(steps[0])}..{int(steps[-1])}",
             f"  relative change at the last step: mean {final.mean():.3f}, "
             f"most {final.max():.3f} (kernel {int(final.argmax())}), "
             f"least {final.min():.3f} (kernel {int(final.argmin())})",
             f"  -> {grid}, {curve}"]
    return finish(args, summary, lines)


def cmd_features(args):
    model, dataset = load_checkpoint(args)
    if not hasattr(model, "retrieve_features"):
        raise InspectError(f"checkpoint {args.checkpoint}: model {type(model).__name__} has no "
                           "retrieve_features(); choose a convolutional model")
    images, labels = load_test_set(dataset, args.data_dir, args.test_subset)
    if not 0 <= args.index < len(images):
        raise InspectError(f"--index {args.index} is outside the test set 0..{len(images) - 1}")
    image = images[args.index:args.index + 1]
    x, _ = next(iter(normalized_loader(image, labels[args.index:args.index + 1], dataset, 1)))
    with mt.no_grad():
        maps = [f.numpy()[0] for f in model.retrieve_features(mt.Tensor(x))]
        pred = model(mt.Tensor(x)).argmax(dim=1).item()
    names = class_names(dataset)
    true = int(labels[args.index])
    layers, lines = [], [f"test image {args.index}: true {names[true]}, predicted {names[pred]}"]
    for k, m in enumerate(maps, 1):
        png = visualize.draw_feature_maps(
            image[0], m, f"after convolution {k}: {m.shape[0]} maps of {m.shape[1]}x{m.shape[2]}",
            out_path(args, f"features_layer{k}.png"))
        layers.append({"layer": k, "shape": list(m.shape), "png": png,
                       "fraction_zero": float(np.mean(m == 0)), **_stats(m)})
        lines.append(f"  layer {k}: {m.shape}, mean {m.mean():.3f}, max {m.max():.3f} -> {png}")
    summary = {"checkpoint": args.checkpoint, "index": args.index, "true": names[true],
               "predicted": names[pred], "layers": layers}
    return finish(args, summary, lines)


def cmd_predictions(args):
    model, dataset = load_checkpoint(args)
    images, labels = load_test_set(dataset, args.data_dir, args.test_subset)
    names = class_names(dataset)
    pred = predict(model, images, dataset, args.batch_size)
    matrix = confusion_matrix(labels, pred, len(names))
    count = min(args.count, len(images))
    shown = np.sort(np.random.default_rng(args.seed).choice(len(images), count, replace=False))
    gallery = visualize.draw_gallery(images[shown], labels[shown], pred[shown], names,
                                     out_path(args, "predictions.png"))
    confusion_png = visualize.draw_confusion(matrix, names, out_path(args, "confusion.png"))
    table = atomic_replace_text(out_path(args, "confusion.csv"), confusion_csv(matrix, names))
    acc = accuracy(labels, pred)
    per_class = {n: float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None
                 for i, n in enumerate(names)}
    off = matrix - np.diag(np.diag(matrix))
    worst = [(int(t), int(p)) for t, p in zip(*np.unravel_index(np.argsort(-off, axis=None)[:3],
                                                                  off.shape)) if off[t, p]]
    summary = {"checkpoint": args.checkpoint, "test_images": int(len(images)), "accuracy": acc,
               "per_class_accuracy": per_class, "confusion": matrix.tolist(),
               "most_confused": [{"true": names[t], "predicted": names[p], "count": int(off[t, p])}
                                 for t, p in worst],
               "gallery_indices": shown.tolist(), "pngs": [gallery, confusion_png], "csv": table}
    lines = [f"accuracy {acc:.4f} on {len(images)} test images "
             f"({int(np.sum(labels[shown] != pred[shown]))} of {count} shown are wrong)"]
    lines += [f"  {names[t]} taken for {names[p]}: {int(off[t, p])} times" for t, p in worst]
    lines.append(f"  -> {gallery}, {confusion_png}, {table}")
    return finish(args, summary, lines)


def cmd_shift(args):
    model, dataset = load_checkpoint(args)
    images, labels = load_test_set(dataset, args.data_dir, args.test_subset)
    if not 0 <= args.index < len(images):
        raise InspectError(f"--index {args.index} is outside the test set 0..{len(images) - 1}")

    def classify(batch):
        return predict(model, batch, dataset, args.batch_size)

    table = accuracy_per_shift(classify, images, labels, args.max_shift)
    shifts = list(range(args.max_shift + 1))
    curve = visualize.draw_shift_curves(shifts, table, out_path(args, "shift_accuracy.png"))
    names, image = class_names(dataset), images[args.index]
    example = np.stack([np.stack([shift_images(image, *direction_offset(d, s)) for s in shifts])
                        for d in DIRECTIONS])
    example_pred = classify(example.reshape((-1,) + image.shape)).reshape(example.shape[:2])
    true = int(labels[args.index])
    view = visualize.draw_shifted_examples(example, example_pred, true, names, list(DIRECTIONS),
                                           out_path(args, "shift_example.png"))
    summary = {"checkpoint": args.checkpoint, "test_images": int(len(images)), "shifts": shifts,
               "fill": 0, "unshifted_accuracy": table[next(iter(table))][0], "accuracy": table,
               "example": {"index": args.index, "true": names[true],
                           "predicted": {d: [names[p] for p in row]
                                         for d, row in zip(DIRECTIONS, example_pred)}},
               "pngs": [curve, view]}
    lines = [f"accuracy of {len(images)} shifted test images (zero fill):",
             "  shift " + " ".join(f"{s:>6d}" for s in shifts)]
    lines += [f"  {d:<5s} " + " ".join(f"{a:6.3f}" for a in accs) for d, accs in table.items()]
    lines.append(f"  -> {curve}, {view}")
    return finish(args, summary, lines)


def train_and_test(spec, train_set, test_set, dataset, epochs, seed, eval_batch_size):
    """Test accuracy of the model of ``spec`` trained from seed ``seed`` for ``epochs``
    with its own optimizer, learning rate and batch size, as ``train`` trains it."""
    mt.manual_seed(seed)  # the same initial weights for the original and permuted runs
    model = spec.build()
    optimizer = make_optimizer(spec.optimizer, model.parameters(), spec.lr, spec.momentum)
    mean, std = NORMALIZATION[dataset]
    xp = mt.get_backend().xp
    train_loader = DataLoader(*train_set, batch_size=spec.batch_size, shuffle=True, seed=seed,
                              mean=mean, std=std, xp=xp)
    test_loader = DataLoader(*test_set, batch_size=eval_batch_size, mean=mean, std=std, xp=xp)
    for epoch in range(epochs):
        train_epoch(model, optimizer, train_loader, spec.loss, epoch=epoch, seed=seed)
    return evaluate(model, test_loader, spec.loss)[1]


def cmd_permutation(args):
    train_x, train_y = load_dataset(args.dataset, "train", root=args.data_dir)
    if args.train_subset is not None:
        train_x, train_y = train_x[:args.train_subset], train_y[:args.train_subset]
    test_x, test_y = load_test_set(args.dataset, args.data_dir, args.test_subset)
    h, w = train_x.shape[-2:]
    perm = random_permutation(h * w, args.seed)
    variants = {"original": ((train_x, train_y), (test_x, test_y)),
                "permuted": ((permute_pixels(train_x, perm), train_y),
                             (permute_pixels(test_x, perm), test_y))}
    results = {}
    for name in args.models:
        spec = get_spec(name)
        epochs = args.epochs or spec.epochs
        results[name] = {"epochs": epochs}
        for variant, (train_set, test_set) in variants.items():
            started = time.perf_counter()
            results[name][variant] = train_and_test(spec, train_set, test_set, args.dataset,
                                                    epochs, args.seed, args.batch_size)
            print(f"  {name} on {variant} pixels, {epochs} epoch(s): test accuracy "
                  f"{results[name][variant]:.4f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)  # runs take minutes: report each as it ends
        results[name]["drop"] = results[name]["original"] - results[name]["permuted"]
    chart = visualize.draw_permutation_bars(results, out_path(args, "permutation.png"))
    summary = {"dataset": args.dataset, "train_images": int(len(train_x)),
               "test_images": int(len(test_x)), "seed": args.seed,
               "permutation": f"np.random.default_rng({args.seed}).permutation({h * w})",
               "accuracy": results, "png": chart}
    lines = [f"pixel permutation on {args.dataset} ({len(train_x)} train / {len(test_x)} test "
             f"images, seed {args.seed}):",
             f"  {'model':<10s} {'epochs':>6s} {'original':>9s} {'permuted':>9s} {'drop':>7s}"]
    lines += [f"  {m:<10s} {r['epochs']:6d} {r['original']:9.4f} {r['permuted']:9.4f} "
              f"{r['drop']:7.4f}" for m, r in results.items()]
    lines.append(f"  -> {chart}")
    return finish(args, summary, lines)


# ---- one page of a run -------------------------------------------------------------------
CHECKPOINT_NAME, FILTER_RECORD_NAME, REPORT_NAME = "checkpoint.npz", "filters.npz", "report.html"
#: What ``report`` shows, in page order, and which inspections it may run itself: those
#: of the run's checkpoint, or of its filter record. ``permutation`` is shown when found
#: in ``--out`` but never run: it trains models of its own, not the run's.
REPORTED = ("filters", "evolution", "features", "predictions", "shift", "permutation")
RUNNABLE = {"filters": CHECKPOINT_NAME, "evolution": FILTER_RECORD_NAME,
            "features": CHECKPOINT_NAME, "predictions": CHECKPOINT_NAME, "shift": CHECKPOINT_NAME}


def read_summary(out, command):
    """The summary ``command`` wrote into ``out``, or None."""
    path = os.path.join(out, summary_name(command))
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InspectError(f"{path}: not a readable summary ({e})") from None


def stale_or_missing(args, out, command):
    """Whether ``report`` should run ``command``: its input is in the run folder and its
    summary is absent or older than that input (the run was trained again since)."""
    source = os.path.join(args.run_dir, RUNNABLE[command])
    summary = os.path.join(out, summary_name(command))
    return os.path.exists(source) and (not os.path.exists(summary)
                                       or os.path.getmtime(summary) < os.path.getmtime(source))


def run_inspection(args, out, command):
    """Run ``command`` on the run folder's input into ``out``, with the report's options;
    None, or the reason it could not run (which the page then shows)."""
    argv = [command, os.path.join(args.run_dir, RUNNABLE[command]), "--out", out]
    if command != "evolution":
        argv += ["--backend", args.backend, "--seed", str(args.seed),
                 "--batch-size", str(args.batch_size)]
        argv += ["--data-dir", args.data_dir] if args.data_dir else []
        argv += ["--test-subset", str(args.test_subset)] if args.test_subset else []
    print(f"report: running inspect {' '.join(argv)}", flush=True)
    try:
        run_command(build_parser().parse_args(argv))
    except REPORTED_ERRORS as e:
        print(f"report: inspect {command} failed: {e}", file=sys.stderr)
        return f"inspect {command} failed: {e}"
    return None


def _png(out, path):
    """A PNG that a summary names, looked up in ``out`` (the summary may hold a path
    relative to another working directory)."""
    return os.path.join(out, os.path.basename(path))


def _percent(value):
    return "" if value is None else f"{100 * value:.2f}%"


def curves_section(run_dir):
    section = html_page.Section("curves", "Training curves")
    csv_path = os.path.join(run_dir, CSV_NAME)
    epochs = ([r for r in read_metrics(csv_path) if r["kind"] == "epoch"]
              if os.path.exists(csv_path) else [])
    if epochs:
        section.table = (["epoch", "train accuracy", "validation accuracy", "test accuracy",
                          "test loss"],
                         [[r["epoch"], _percent(r["train_acc"]), _percent(r["val_acc"]),
                           _percent(r["test_acc"]),
                           "" if r["test_loss"] is None else f"{r['test_loss']:.4f}"]
                          for r in epochs])
    section.images = [(os.path.join(run_dir, name), caption)
                      for name, caption in ((LOSS_PNG, "loss"), (ERROR_PNG, "error"))
                      if os.path.exists(os.path.join(run_dir, name))]
    if not epochs and not section.images:
        section.missing = f"no {CSV_NAME}, {LOSS_PNG} or {ERROR_PNG} in {run_dir}"
    return section


def inspection_sections(command, summary, out):
    """The page's sections for one inspection's summary."""
    if command == "filters":
        return [html_page.Section("filters", "Filters", images=[
            (_png(out, layer["png"]), f"layer {layer['layer']} ({layer['module']}) "
             f"{layer['shape']}, weights in [{layer['min']:.3f}, {layer['max']:.3f}]")
            for layer in summary["layers"]])]
    if command == "evolution":
        return [html_page.Section("evolution", "Filters over training", text=[
            f"{summary['snapshots']} snapshots, steps {summary['steps'][0]}..{summary['steps'][-1]}"],
            images=[(_png(out, p), os.path.basename(p)) for p in summary["pngs"]])]
    if command == "features":
        return [html_page.Section("features", "Feature maps", text=[
            f"test image {summary['index']}: true {summary['true']}, "
            f"predicted {summary['predicted']}"],
            images=[(_png(out, layer["png"]), f"after convolution {layer['layer']}: "
                     f"{layer['shape']}, {100 * layer['fraction_zero']:.0f}% zeros")
                    for layer in summary["layers"]])]
    if command == "predictions":
        gallery, confusion = summary["pngs"]
        per_class = summary["per_class_accuracy"]
        return [html_page.Section("predictions", "Predictions", text=[
                    f"accuracy {_percent(summary['accuracy'])} on {summary['test_images']} "
                    "test images"] + [f"{c['true']} taken for {c['predicted']}: {c['count']} times"
                                      for c in summary["most_confused"]],
                    images=[(_png(out, gallery), "a sample of test images")]),
                html_page.Section("confusion", "Confusion matrix",
                                  table=(["class", "accuracy"],
                                         [[name, _percent(a)] for name, a in per_class.items()]),
                                  images=[(_png(out, confusion), "true class (rows) against "
                                           "predicted class (columns)")])]
    if command == "shift":
        curve, example = summary["pngs"]
        return [html_page.Section("shift", "Shifted test images", text=[
            f"accuracy of {summary['test_images']} test images shifted by 0..{summary['shifts'][-1]} "
            "pixels (zero fill)"],
            table=(["direction"] + [f"{s} px" for s in summary["shifts"]],
                   [[d] + [f"{a:.3f}" for a in accs] for d, accs in summary["accuracy"].items()]),
            images=[(_png(out, curve), "accuracy against shift"),
                    (_png(out, example), f"test image {summary['example']['index']} shifted")])]
    return [html_page.Section("permutation", "Permuted pixels", table=(
        ["model", "epochs", "original", "permuted", "drop"],
        [[m, r["epochs"], f"{r['original']:.4f}", f"{r['permuted']:.4f}", f"{r['drop']:.4f}"]
         for m, r in summary["accuracy"].items()]), images=[(_png(out, summary["png"]), "")])]


def cmd_report(args):
    out = args.out
    failed = {}
    if not args.no_run:
        for command in RUNNABLE:
            if stale_or_missing(args, out, command):
                failed[command] = run_inspection(args, out, command)
    sections, shown, missing = [curves_section(args.run_dir)], [], []
    for command in REPORTED:
        summary = read_summary(out, command)
        if summary is not None:
            sections += inspection_sections(command, summary, out)
            shown.append(command)
        elif command in RUNNABLE:
            reason = failed.get(command) or (
                f"no {summary_name(command)} in {out}" + (
                    f" and no {RUNNABLE[command]} in {args.run_dir} to run it on"
                    if not os.path.exists(os.path.join(args.run_dir, RUNNABLE[command]))
                    else " (--no-run)"))
            sections.append(html_page.Section(command, command.capitalize(), missing=reason))
            missing.append(command)
    title = f"minitorch_cnn run {os.path.abspath(args.run_dir)}"
    page = html_page.render(title, [f"inspections from {os.path.abspath(out)}"], sections)
    path = atomic_replace_text(out_path(args, REPORT_NAME), page)
    summary = {"run_dir": os.path.abspath(args.run_dir), "html": os.path.abspath(path),
               "sections": [s.id for s in sections if not s.missing], "missing": missing}
    lines = [f"report of {args.run_dir}: {', '.join(['curves'] + shown)}"
             + (f"; missing: {', '.join(missing)}" if missing else ""), f"  -> {path}"]
    return finish(args, summary, lines)


# ---- command line ----------------------------------------------------------------------
def _int_at_least(minimum):
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value
    return parse


_positive_int = _int_at_least(1)


def build_parser():
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", required=True,
                     help="folder for the PNGs and summary-<subcommand>.json")
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    options.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    options.add_argument("--test-subset", type=_positive_int, default=None,
                        help="use only the first N test images")
    options.add_argument("--seed", type=_int_at_least(0), default=0,
                        help="seeds every random choice (gallery sample, permutation, training)")
    options.add_argument("--batch-size", type=_positive_int, default=1000,
                        help="images per forward pass when evaluating")
    common = argparse.ArgumentParser(add_help=False, parents=[out, options])
    ckpt = argparse.ArgumentParser(add_help=False, parents=[common])
    ckpt.add_argument("checkpoint", help="a .npz checkpoint written by `train`")

    parser = argparse.ArgumentParser(prog="python -m minitorch_cnn.inspect",
                                     description="Looking inside a trained network.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("filters", parents=[ckpt], help="first and second conv layers' kernels")
    p = sub.add_parser("evolution", parents=[out], help="first-layer kernels over training")
    p.add_argument("record", help="filters.npz written by `train --record-filters N`")
    p = sub.add_parser("features", parents=[ckpt], help="feature maps of one test image")
    p.add_argument("--index", type=int, default=0, help="test image index")
    p = sub.add_parser("predictions", parents=[ckpt], help="gallery and confusion matrix")
    p.add_argument("--count", type=_positive_int, default=64, help="images in the gallery")
    p = sub.add_parser("shift", parents=[ckpt], help="accuracy of shifted test images")
    p.add_argument("--max-shift", type=_int_at_least(0), default=6, help="largest shift in pixels")
    p.add_argument("--index", type=int, default=0, help="test image of the single-image view")
    p = sub.add_parser("permutation", parents=[common],
                       help="fc2 vs small-cnn on original and permuted pixels")
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--models", nargs="+", default=["fc2", "small-cnn"], choices=list(MODELS))
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="training epochs (default: each model's own)")
    p.add_argument("--train-subset", type=_positive_int, default=None,
                   help="train on the first N training images only")
    p = sub.add_parser("report", parents=[options],
                       help="one HTML page of a run: curves and every inspection")
    p.add_argument("run_dir", help="a folder written by `train` (its --out)")
    p.add_argument("--out", default=None,
                   help="folder of the inspections and report.html (default: RUN_DIR/inspect)")
    p.add_argument("--no-run", action="store_true",
                   help="show only the inspections already in --out; run none")
    return parser


COMMANDS = {"filters": cmd_filters, "evolution": cmd_evolution, "features": cmd_features,
            "predictions": cmd_predictions, "shift": cmd_shift, "permutation": cmd_permutation,
            "report": cmd_report}
#: What a bad file, flag value or missing dataset raises; reported in one line.
REPORTED_ERRORS = (InspectError, DatasetNotFoundError, mt.BackendUnavailable, OSError, KeyError,
                   ValueError)


def run_command(args):
    """Run the parsed command; its exit status."""
    if args.command == "report":  # checked before its default --out is made inside it
        if not os.path.isdir(args.run_dir):
            raise InspectError(f"run folder {args.run_dir} does not exist or is not a folder")
        args.out = args.out or os.path.join(args.run_dir, "inspect")
    os.makedirs(args.out, exist_ok=True)
    if not hasattr(args, "backend"):  # evolution: NumPy arrays only
        return COMMANDS[args.command](args)
    with mt.backend(args.backend):  # scoped: a caller's default backend is left alone
        mt.manual_seed(args.seed)
        return COMMANDS[args.command](args)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except REPORTED_ERRORS as e:
        print(f"inspect {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
