"""A run's metrics as one CSV file, and the PNG plots drawn from it.

``metrics.csv`` has one row per logging step (``kind == "step"``: the training loss and
accuracy of the batches since the previous row) and one per epoch (``kind == "epoch"``:
the epoch's training loss and accuracy, validation and test loss and accuracy). Empty
cells mean "not measured in this row". A resumed run appends to the same file after
dropping rows written after its checkpoint was taken, so the file reads as one run.

The plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch):
``loss.png`` (training loss per logged step, test loss at each epoch's end) and
``error.png`` (training and validation error per epoch).
"""
import csv
import io
import math
import os

from .files import atomic_replace_text, atomic_write

COLUMNS = ("kind", "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc",
           "test_loss", "test_acc", "images_per_second", "seconds")
_INT_COLUMNS = {"epoch", "step"}
CSV_NAME, LOSS_PNG, ERROR_PNG = "metrics.csv", "loss.png", "error.png"


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class MetricsLog:
    """Append-only writer of ``<out>/metrics.csv``."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, CSV_NAME)
        os.makedirs(out_dir, exist_ok=True)

    def append(self, kind, **values):
        """Append one row; ``values`` are keyed by :data:`COLUMNS`."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown metrics column(s) {sorted(unknown)}; columns are {COLUMNS}")
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        row = memoryview(_csv_text([{**values, "kind": kind}], header=new).encode("utf-8"))
        with open(self.path, "ab", buffering=0) as f:
            end = f.seek(0, os.SEEK_END)
            try:
                while row:
                    row = row[f.write(row):]
            except OSError:  # a full disk: never leave half a row behind
                f.truncate(end)
                raise

    def truncate_after(self, step):
        """Drop rows logged after global step ``step`` (a resumed run repeats them)."""
        if not os.path.exists(self.path):
            return
        rows = read_metrics(self.path)
        kept = [r for r in rows if r["step"] is None or r["step"] <= step]
        if len(kept) < len(rows):
            atomic_replace_text(self.path, _csv_text(kept, header=True))


def _csv_text(rows, header):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    return buffer.getvalue()


def read_metrics(path):
    """The rows of a metrics CSV as dicts; numbers parsed, empty cells None."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "kind" not in reader.fieldnames:
            raise ValueError(f"{path} is not a metrics CSV (no 'kind' column in its header)")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {}
            for column in COLUMNS:
                text = (raw.get(column) or "").strip()
                try:
                    row[column] = (text if column == "kind" else
                                   None if text == "" else
                                   int(text) if column in _INT_COLUMNS else float(text))
                except ValueError as e:
                    raise ValueError(f"{path}, line {line}: column {column!r} holds {text!r}") from e
            rows.append(row)
    return rows


# ---- plots -------------------------------------------------------------------------------
def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig, ax, xlabel, ylabel, title, path):
    """Label, grid and legend the axes, then write the PNG atomically."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _finite(x):
    return x is not None and math.isfinite(x)


def plot_loss(rows, path, title=""):
    """Training loss per logged step (line) and test loss at each epoch's end (points)."""
    fig, ax = _figure()
    steps = [r for r in rows if r["kind"] == "step" and _finite(r["train_loss"])]
    epochs = [r for r in rows if r["kind"] == "epoch" and _finite(r["test_loss"])]
    ax.plot([r["step"] for r in steps], [r["train_loss"] for r in steps], lw=1, label="training loss")
    ax.plot([r["step"] for r in epochs], [r["test_loss"] for r in epochs], "o", color="tab:red",
            label="test loss (epoch end)")
    return _finish(fig, ax, "step", "loss", title or "loss", path)


def plot_error(rows, path, title=""):
    """Training and validation error (1 - accuracy) per epoch."""
    fig, ax = _figure()
    epochs = [r for r in rows if r["kind"] == "epoch"]
    for column, label in (("train_acc", "training error"), ("val_acc", "validation error")):
        points = [(r["epoch"], 1 - r[column]) for r in epochs if _finite(r[column])]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    return _finish(fig, ax, "epoch", "error", title or "error", path)


def plot_metrics(csv_path, out_dir=None, title=""):
    """Draw ``loss.png`` and ``error.png`` from a metrics CSV; return their paths."""
    out_dir = out_dir or os.path.dirname(os.path.abspath(csv_path))
    rows = read_metrics(csv_path)
    return [plot_loss(rows, os.path.join(out_dir, LOSS_PNG), title),
            plot_error(rows, os.path.join(out_dir, ERROR_PNG), title)]


__all__ = ["COLUMNS", "MetricsLog", "read_metrics", "plot_loss", "plot_error", "plot_metrics"]
