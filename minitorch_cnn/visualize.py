"""The pictures of ``python -m minitorch_cnn.inspect``: kernel grids, filter evolution,
feature maps, prediction galleries, confusion matrices and curves, as PNG files.

Every figure is laid out in inches on a fixed canvas and saved at :data:`DPI` without
``bbox_inches="tight"``, so a PNG's pixel size follows from its layout alone
(:func:`grid_png_size`) and a test can check it. Files are written atomically.
Inputs are NumPy arrays. Figures are ``matplotlib.figure.Figure`` objects rendered by
Agg without pyplot, so importing this module changes no global matplotlib state.
"""
import struct
import textwrap

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .files import atomic_write

DPI = 100
TITLE_INCHES = 0.45      # band above a tile grid for its title (two lines)
MIN_WIDTH = 4.0          # a narrow grid is centred on a canvas this wide, so its title fits
GAP = 0.06               # fraction of a tile left blank on each side
MAX_GRID_INCHES = 24.0   # a grid never grows beyond this, its tiles shrink instead
WRONG = "#d62728"        # colour of a wrong prediction
RIGHT = "#2c7a2c"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- files ----------------------------------------------------------------------------
def save_figure(fig, path):
    """Write ``fig`` to ``path`` as a PNG atomically; returns ``path``."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))


def _plot(figsize=(6.4, 4.0)):
    """A figure with one axes, for the curves and charts."""
    fig = Figure(figsize=figsize, dpi=DPI)
    return fig, fig.subplots()


def png_size(path):
    """``(width, height)`` in pixels from a PNG's header; ValueError if it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file (bad signature or no IHDR chunk)")
    return struct.unpack(">II", head[16:24])


# ---- layout ---------------------------------------------------------------------------
def grid_shape(count, columns=None):
    """(rows, cols) of a near-square grid holding ``count`` tiles (or ``columns`` wide)."""
    cols = columns or int(np.ceil(np.sqrt(count)))
    return int(np.ceil(count / cols)), cols


def _tile_inches(rows, cols, tile):
    return min(tile, MAX_GRID_INCHES / max(rows, cols))


def grid_png_size(rows, cols, tile, label=0.0, title=True):
    """Pixel size of a :class:`TileCanvas` of that layout, as saved."""
    w, h = TileCanvas.inches(rows, cols, tile, label, title)
    return int(round(w * DPI)), int(round(h * DPI))


class TileCanvas:
    """A figure cut into ``rows`` x ``cols`` square tiles of ``tile`` inches, each with
    ``label`` inches above it for a caption, under an optional title band; at least
    :data:`MIN_WIDTH` wide, the grid centred."""

    def __init__(self, rows, cols, tile, label=0.0, title=None):
        self.rows, self.cols, self.label = rows, cols, label
        self.tile = _tile_inches(rows, cols, tile)
        self.width, self.height = self.inches(rows, cols, tile, label, title is not None)
        self.left = (self.width - cols * self.tile) / 2
        self.fig = Figure(figsize=(self.width, self.height), dpi=DPI)
        if title is not None:
            # about 13 characters of 9-point text per inch
            self.fig.text(0.5, 1 - 0.5 * TITLE_INCHES / self.height,
                          textwrap.fill(title, int(self.width * 13)),
                          ha="center", va="center", fontsize=9)

    @staticmethod
    def inches(rows, cols, tile, label, title):
        tile = _tile_inches(rows, cols, tile)
        return (max(cols * tile, MIN_WIDTH),
                rows * (tile + label) + (TITLE_INCHES if title else 0.0))

    def axes(self, row, col, rowspan=1, colspan=1):
        """An axes covering tiles [row, row+rowspan) x [col, col+colspan), ticks off."""
        t, pad = self.tile, GAP * self.tile
        left = self.left + col * t + pad
        top = row * (t + self.label) + self.label  # inches from the top of the grid
        width = colspan * t - 2 * pad
        height = rowspan * (t + self.label) - self.label - 2 * pad
        bottom = self.rows * (t + self.label) - top - pad - height  # the grid ends at y=0
        ax = self.fig.add_axes([left / self.width, bottom / self.height,
                                width / self.width, height / self.height])
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def save(self, path):
        return save_figure(self.fig, path)


def display_image(image):
    """An image array for ``imshow``: (H, W) stays, (1, H, W) drops its channel, and
    (3, H, W) becomes (H, W, 3) scaled into [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3:
        image = np.moveaxis(image, 0, -1).astype(np.float32)
        lo, hi = image.min(), image.max()
        return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    if image.ndim != 2:
        raise ValueError(f"cannot show an image of shape {image.shape}")
    return image


def _show(ax, image, **kwargs):
    image = display_image(image)
    cmap = None if image.ndim == 3 else kwargs.pop("cmap", "gray")
    ax.imshow(image, cmap=cmap, interpolation="nearest", **kwargs)


def _symmetric_limit(values):
    """One colour scale for a whole set of kernels, centred on zero, so tiles compare."""
    limit = float(np.abs(values).max())
    return limit if limit > 0 else 1.0


def mosaic(tiles, rows, cols, blank=np.nan):
    """``tiles`` (n, h, w) or (n, h, w, 3) placed row-major into one (rows*(h+1)-1,
    cols*(w+1)-1[, 3]) float image with ``blank`` (NaN: drawn white) between tiles and in
    unused places. Drawing a grid as one image keeps a layer of thousands of kernels
    (VGG's 128x64) a single ``imshow``."""
    n, h, w = tiles.shape[:3]
    if n > rows * cols:
        raise ValueError(f"{n} tiles do not fit a {rows}x{cols} grid")
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1) + tiles.shape[3:], blank,
                  dtype=np.float32)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tiles[k]
    return out


def _show_mosaic(ax, tiles, rows, cols, cmap, limit=None):
    """Draw a :func:`mosaic` (on a symmetric ±``limit`` scale if given); blank is white."""
    colours = matplotlib.colormaps[cmap].with_extremes(bad="white")
    scale = {} if limit is None else {"vmin": -limit, "vmax": limit}
    ax.imshow(mosaic(tiles, rows, cols), cmap=colours, interpolation="nearest", **scale)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _tile_centres(count, size):
    """Positions, in mosaic pixels, of the centres of ``count`` tiles of ``size`` pixels."""
    return [k * (size + 1) + (size - 1) / 2 for k in range(count)]


# ---- kernels ----------------------------------------------------------------------------
KERNEL_TILE = 0.6


def kernel_grid_shape(weight_shape, rgb=False):
    """Layout of a convolution weight (Cout, Cin, kh, kw): a near-square grid of one tile
    per output channel when there is one input channel (or, with ``rgb``, three shown as
    colours); otherwise one row per output channel and one column per input channel."""
    cout, cin = weight_shape[:2]
    return grid_shape(cout) if cin == 1 or rgb else (cout, cin)


def draw_kernels(weight, title, path, rgb=False):
    """One tile per kernel, blue < 0 < red on one scale for the whole layer; with ``rgb``
    (a first layer over colour images) each output channel's three kernels are one colour
    tile, mid-grey being zero."""
    weight = np.asarray(weight)
    cout, cin, kh, kw = weight.shape
    if rgb and cin != 3:
        raise ValueError(f"rgb kernels need 3 input channels, this weight has {cin}")
    rows, cols = kernel_grid_shape(weight.shape, rgb)
    limit = _symmetric_limit(weight)
    if rgb:
        layout = "one colour tile per output channel (grey = 0)"
    elif cin == 1:
        layout = "one tile per kernel"
    else:
        layout = "rows: output channel, columns: input channel"
    canvas = TileCanvas(rows, cols, KERNEL_TILE, title=f"{title}; {layout}")
    ax = canvas.axes(0, 0, rows, cols)
    if rgb:
        colour = (weight.transpose(0, 2, 3, 1) / limit + 1) / 2  # (Cout, kh, kw, 3) in [0, 1]
        ax.imshow(mosaic(colour, rows, cols, blank=1.0), interpolation="nearest")
        for spine in ax.spines.values():
            spine.set_visible(False)
    else:
        _show_mosaic(ax, weight.reshape(cout * cin, kh, kw), rows, cols, "RdBu_r", limit)
    return canvas.save(path)


EVOLUTION_TILE = 0.6
MAX_SNAPSHOTS = 12


def snapshot_columns(count, limit=MAX_SNAPSHOTS):
    """Indices of at most ``limit`` snapshots, evenly spread, always the first and last."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(int))


def evolution_layout(weights_shape):
    """(rows, cols) of :func:`draw_kernel_evolution`: a row per kernel, a column per shown
    snapshot and one more for the total change."""
    k, cout, cin = weights_shape[:3]
    return cout * cin, len(snapshot_columns(k)) + 1


def draw_kernel_evolution(steps, weights, path):
    """Each first-layer kernel (a row) at evenly spread recorded steps (the columns, one
    colour scale), then its total change w(last) - w(first) on a scale of its own, since
    the change is small beside the weights."""
    k, cout, cin, kh, kw = weights.shape
    columns = snapshot_columns(k)
    kernels = weights.reshape(k, cout * cin, kh, kw)
    change = kernels[-1] - kernels[0]
    rows, cols = evolution_layout(weights.shape)
    canvas = TileCanvas(rows, cols, EVOLUTION_TILE,
                        title="first-layer kernels over training (columns: step; last: change)")
    ax = canvas.axes(0, 0, rows, cols - 1)
    snapshots = kernels[columns].transpose(1, 0, 2, 3).reshape(-1, kh, kw)  # row = kernel
    _show_mosaic(ax, snapshots, rows, cols - 1, "RdBu_r", _symmetric_limit(kernels))
    ax.xaxis.tick_top()
    ax.set_xticks(_tile_centres(cols - 1, kw), [str(int(steps[c])) for c in columns], fontsize=7)
    ax.tick_params(axis="x", length=0, pad=1)
    ax = canvas.axes(0, cols - 1, rows, 1)
    _show_mosaic(ax, change, rows, 1, "PuOr_r", _symmetric_limit(change))
    ax.xaxis.tick_top()
    ax.set_xticks(_tile_centres(1, kw), ["change"], fontsize=7)
    ax.tick_params(axis="x", length=0, pad=1)
    return canvas.save(path)


def draw_kernel_change(steps, change, path):
    """Relative distance of each kernel from its initial value, against the step."""
    fig, ax = _plot()
    for j in range(change.shape[1]):
        ax.plot(steps, change[:, j], lw=1, label=f"kernel {j}")
    ax.set_xlabel("training step")
    ax.set_ylabel("||w(t) - w(0)|| / ||w(0)||")
    ax.set_title("how far each first-layer kernel moved")
    if change.shape[1] <= 16:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.91)
    return save_figure(fig, path)


# ---- feature maps ----------------------------------------------------------------------
FEATURE_TILE = 0.8
INPUT_SPAN = 2  # the input image takes 2 x 2 tiles at the left of each feature-map figure


def feature_layout(channels):
    """(rows, cols) of a feature-map figure: the input block, then a grid of channels."""
    rows, cols = grid_shape(channels)
    return max(rows, INPUT_SPAN), cols + INPUT_SPAN


def draw_feature_maps(image, maps, title, path):
    """The input image beside one tile per channel of ``maps`` (C, H, W), each channel
    scaled to its own range (as the tutorials show them)."""
    rows, cols = feature_layout(maps.shape[0])
    canvas = TileCanvas(rows, cols, FEATURE_TILE, title=title)
    _show(canvas.axes(0, 0, INPUT_SPAN, INPUT_SPAN), image)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    scaled = (maps - lo) / np.where(span > 0, span, 1)
    grid_rows, grid_cols = grid_shape(maps.shape[0])
    ax = canvas.axes(0, INPUT_SPAN, grid_rows, grid_cols)
    _show_mosaic(ax, scaled, grid_rows, grid_cols, "viridis")
    return canvas.save(path)


# ---- predictions ------------------------------------------------------------------------
GALLERY_TILE = 1.1
GALLERY_LABEL = 0.36


def draw_gallery(images, true, pred, names, path, columns=8):
    """Test images captioned with predicted and true class; wrong ones framed in red."""
    rows, cols = grid_shape(len(images), min(columns, len(images)))
    wrong = int(np.sum(np.asarray(true) != np.asarray(pred)))
    canvas = TileCanvas(rows, cols, GALLERY_TILE, label=GALLERY_LABEL,
                        title=f"predicted class; {wrong} of {len(images)} wrong, in red with "
                              "the true class")
    for k, image in enumerate(images):
        ax = canvas.axes(*divmod(k, cols))
        _show(ax, image)
        ok = true[k] == pred[k]
        colour = RIGHT if ok else WRONG
        caption = names[pred[k]] if ok else f"{names[pred[k]]}\ntrue: {names[true[k]]}"
        ax.set_title(caption, fontsize=6.5, color=colour, pad=2)
        if not ok:
            for spine in ax.spines.values():
                spine.set_color(WRONG)
                spine.set_linewidth(2.5)
    return canvas.save(path)


def draw_confusion(matrix, names, path):
    """Counts with true classes as rows, predicted as columns; diagonal is correct."""
    n = len(names)
    fig, ax = _plot((7.5, 6.5))
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # row-normalised colour
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    for t in range(n):
        for p in range(n):
            ax.text(p, t, str(int(matrix[t, p])), ha="center", va="center", fontsize=7,
                    color="white" if shown[t, p] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"confusion matrix ({int(matrix.sum())} images, accuracy {accuracy:.4f})")
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.2, top=0.93)
    return save_figure(fig, path)


# ---- translation -------------------------------------------------------------------------
def draw_shift_curves(shifts, accuracy, path):
    """Accuracy against shift, one line per direction."""
    fig, ax = _plot()
    for direction, values in accuracy.items():
        ax.plot(shifts, values, marker="o", ms=3, label=direction)
    ax.set_xlabel("shift (pixels)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_xticks(list(shifts))
    ax.set_title("accuracy of shifted test images (zero fill)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.91)
    return save_figure(fig, path)


SHIFT_TILE = 0.9
SHIFT_LABEL = 0.22


def draw_shifted_examples(images, pred, true, names, directions, path):
    """One image shifted 0..K pixels (columns) in each direction (rows), with the
    prediction for each; ``images`` is (directions, K+1, ...) and ``pred`` (directions, K+1)."""
    rows, cols = len(directions), images.shape[1]
    canvas = TileCanvas(rows, cols, SHIFT_TILE, label=SHIFT_LABEL,
                        title=f"one test image (true class {names[true]}) shifted by 0..{cols - 1} "
                              "pixels, with the prediction for each")
    for r in range(rows):
        for c in range(cols):
            ax = canvas.axes(r, c)
            _show(ax, images[r, c])
            ax.set_title(f"{directions[r]} {c}: {names[pred[r, c]]}", fontsize=6,
                         color=RIGHT if pred[r, c] == true else WRONG, pad=2)
    return canvas.save(path)


# ---- permutation ----------------------------------------------------------------------------
def draw_permutation_bars(results, path):
    """Test accuracy of each model on original and permuted pixels, side by side."""
    models = list(results)
    x = np.arange(len(models))
    fig, ax = _plot()
    for k, (variant, colour) in enumerate((("original", "#4c72b0"), ("permuted", "#dd8452"))):
        values = [results[m][variant] for m in models]
        bars = ax.bar(x + (k - 0.5) * 0.38, values, 0.38, label=variant + " pixels", color=colour)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, models)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("test accuracy")
    ax.set_title("one fixed pixel permutation: fully connected vs convolutional")
    ax.legend(loc="upper center", ncol=2)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.91)
    return save_figure(fig, path)
