"""`python -m minitorch_cnn.inspect`: the pure computations on constructed cases, then
every subcommand on a small LeNet that `minitorch_cnn.train` trains in this session.

The CLI tests check that each PNG is a real PNG of the size its layout implies, and
cross-check the numbers against independent paths: the training CLI's own test
accuracy, `training.evaluate`, and a hand-normalised forward pass.
"""
import base64
import csv
import html.parser
import io
import json
import os
import shutil

import numpy as np
import pytest

import minitorch_cnn as mt
from minitorch_cnn import inspect as insp
from minitorch_cnn import html_page, train, training, visualize
from minitorch_cnn.checkpoint import load_model
from minitorch_cnn.data import NORMALIZATION, DataLoader, find_dataset, load_dataset

DATASET = "fashion-mnist"
TEST_SUBSET = 200
NO_DATA = find_dataset(DATASET, "train") is None or find_dataset(DATASET, "test") is None
NO_DATA_REASON = ("Fashion-MNIST files not found (apt-get install dataset-fashion-mnist, "
                  "or set MINITORCH_DATA)")
needs_fashion = pytest.mark.skipif(NO_DATA, reason=NO_DATA_REASON)


# ---- shifting -------------------------------------------------------------------------------
def test_shift_moves_pixels_and_fills_zero():
    image = np.arange(1, 10, dtype=np.uint8).reshape(3, 3)
    assert np.array_equal(insp.shift_images(image, 0, 1), [[0, 1, 2], [0, 4, 5], [0, 7, 8]])
    assert np.array_equal(insp.shift_images(image, -1, 0), [[4, 5, 6], [7, 8, 9], [0, 0, 0]])
    assert np.array_equal(insp.shift_images(image, 1, -2), [[0, 0, 0], [3, 0, 0], [6, 0, 0]])
    assert np.array_equal(insp.shift_images(image, 0, 0), image)
    assert not insp.shift_images(image, 3, 0).any()  # everything pushed out


def test_shift_acts_on_the_last_two_axes_of_a_batch():
    rng = np.random.default_rng(0)
    batch = rng.integers(1, 255, size=(4, 3, 6, 5), dtype=np.uint8)
    shifted = insp.shift_images(batch, *insp.direction_offset("down", 2))
    assert shifted.shape == batch.shape and shifted.dtype == batch.dtype
    assert np.array_equal(shifted[..., 2:, :], batch[..., :-2, :])
    assert not shifted[..., :2, :].any()


@pytest.mark.parametrize("direction", list(insp.DIRECTIONS))
@pytest.mark.parametrize("pixels", [1, 3])
def test_shift_then_inverse_shift_restores_the_interior(direction, pixels):
    images = np.random.default_rng(1).integers(1, 256, size=(5, 8, 8), dtype=np.uint8)
    dy, dx = insp.direction_offset(direction, pixels)
    back = insp.shift_images(insp.shift_images(images, dy, dx), -dy, -dx)
    kept = np.zeros((8, 8), bool)  # the pixels that never left the image
    kept[max(-dy, 0):8 - max(dy, 0), max(-dx, 0):8 - max(dx, 0)] = True
    assert np.array_equal(back[:, kept], images[:, kept])
    assert not back[:, ~kept].any()
    assert kept.sum() == 8 * (8 - pixels)


def test_unknown_direction_is_named():
    with pytest.raises(ValueError, match="sideways"):
        insp.direction_offset("sideways", 1)


def one_pixel_images():
    """16x16 images with one bright pixel at row 5: its column minus 5 is the class for
    the first half of the items (correct), and the class minus 1 for the second half."""
    labels = np.tile(np.arange(8), 2)
    images = np.zeros((16, 16, 16), np.uint8)
    for k, label in enumerate(labels):
        images[k, 5, label + 5 - (k >= 8)] = 255
    return images, labels


def column_classifier(images):
    """Class = column of the brightest pixel minus 5; a blank image gets -1."""
    flat = images.reshape(len(images), -1)
    return np.where(flat.max(axis=1) > 0, flat.argmax(axis=1) % 16 - 5, -1)


def test_accuracy_per_shift_on_a_constructed_classifier():
    images, labels = one_pixel_images()
    table = insp.accuracy_per_shift(column_classifier, images, labels, max_shift=7)
    assert set(table) == set(insp.DIRECTIONS)
    # shift 0 is the unshifted accuracy, in every direction
    assert all(acc[0] == insp.accuracy(labels, column_classifier(images)) == 0.5
               for acc in table.values())
    assert table["right"] == [0.5, 0.5] + [0.0] * 6  # 1px right fixes the second half
    assert table["left"] == [0.5] + [0.0] * 7
    assert table["down"] == [0.5] * 8  # the column is unchanged and row 5+7 is inside
    assert table["up"] == [0.5] * 6 + [0.0] * 2  # past row 0 the pixel is gone


# ---- permutation -----------------------------------------------------------------------------
def test_permutation_then_inverse_is_the_identity():
    images = np.random.default_rng(2).integers(0, 256, size=(3, 2, 28, 28), dtype=np.uint8)
    perm = insp.random_permutation(28 * 28, seed=5)
    inv = insp.inverse_permutation(perm)
    permuted = insp.permute_pixels(images, perm)
    assert not np.array_equal(permuted, images)
    assert np.array_equal(insp.permute_pixels(permuted, inv), images)
    assert np.array_equal(insp.permute_pixels(insp.permute_pixels(images, inv), perm), images)
    assert np.array_equal(perm[inv], np.arange(784)) and np.array_equal(inv[perm], np.arange(784))
    # one permutation for every image and channel: pixel values are only moved around
    assert np.array_equal(np.sort(permuted.reshape(6, -1)), np.sort(images.reshape(6, -1)))
    assert permuted.flags.c_contiguous  # images stay rows of memory for batching


def test_permute_pixels_moves_pixel_perm_i_to_i():
    image = np.arange(6).reshape(2, 3)
    assert np.array_equal(insp.permute_pixels(image, [5, 0, 1, 2, 3, 4]), [[5, 0, 1], [2, 3, 4]])


def test_permutation_is_fixed_by_its_seed():
    assert np.array_equal(insp.random_permutation(784, 3), insp.random_permutation(784, 3))
    assert not np.array_equal(insp.random_permutation(784, 3), insp.random_permutation(784, 4))


def test_bad_permutations_are_refused():
    with pytest.raises(ValueError, match="not a permutation"):
        insp.inverse_permutation([0, 0, 2])
    with pytest.raises(ValueError, match="does not fit 28x28"):
        insp.permute_pixels(np.zeros((28, 28)), np.arange(10))


# ---- confusion matrix and kernel change ------------------------------------------------------
def test_confusion_matrix_counts():
    m = insp.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert np.array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_confusion_matrix_rows_are_class_counts_and_trace_is_accuracy():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 10, 500)
    pred = np.where(rng.random(500) < 0.7, true, rng.integers(0, 10, 500))
    m = insp.confusion_matrix(true, pred, 10)
    assert np.array_equal(m.sum(axis=1), np.bincount(true, minlength=10))
    assert np.array_equal(m.sum(axis=0), np.bincount(pred, minlength=10))
    assert np.trace(m) / m.sum() == insp.accuracy(true, pred)


def test_confusion_matrix_refuses_out_of_range_classes():
    with pytest.raises(ValueError, match="prediction lies outside 0..2"):
        insp.confusion_matrix([0, 1], [0, 3], 3)


def test_kernel_change_is_relative_distance_from_the_start():
    scale = np.array([1.0, 1.5, 3.0])
    weights = scale[:, None, None, None, None] * np.ones((3, 4, 2, 3, 3))
    weights[:, 1, 0] *= -2  # another kernel, the same relative change
    assert np.allclose(insp.kernel_change(weights), np.repeat([[0.0], [0.5], [2.0]], 8, axis=1))


# ---- PNG checks --------------------------------------------------------------------------------
def test_png_size_reads_the_header_and_refuses_other_files(tmp_path):
    canvas = visualize.TileCanvas(3, 7, 0.5, label=0.1, title="t")
    path = canvas.save(str(tmp_path / "grid.png"))
    assert visualize.png_size(path) == visualize.grid_png_size(3, 7, 0.5, label=0.1) == (400, 225)
    (tmp_path / "fake.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError, match="fake.png: not a PNG"):
        visualize.png_size(str(tmp_path / "fake.png"))


def test_mosaic_places_tiles_row_major_with_blank_gaps():
    tiles = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    m = visualize.mosaic(tiles, rows=2, cols=2)
    assert m.shape == (5, 5)
    assert np.array_equal(m[:2, :2], tiles[0]) and np.array_equal(m[:2, 3:], tiles[1])
    assert np.array_equal(m[3:, :2], tiles[2])
    assert np.isnan(m[2]).all() and np.isnan(m[:, 2]).all() and np.isnan(m[3:, 3:]).all()
    with pytest.raises(ValueError, match="3 tiles do not fit a 1x2 grid"):
        visualize.mosaic(tiles, 1, 2)


def test_first_layer_over_colour_images_draws_one_colour_tile_per_kernel(tmp_path):
    weight = np.random.default_rng(4).standard_normal((6, 3, 5, 5)).astype(np.float32)
    assert visualize.kernel_grid_shape(weight.shape, rgb=True) == (2, 3)
    assert visualize.kernel_grid_shape(weight.shape) == (6, 3)
    path = visualize.draw_kernels(weight, "rgb", str(tmp_path / "rgb.png"), rgb=True)
    assert_png(path, visualize.grid_png_size(2, 3, visualize.KERNEL_TILE))
    with pytest.raises(ValueError, match="3 input channels"):
        visualize.draw_kernels(weight[:, :2], "two", str(tmp_path / "two.png"), rgb=True)


def assert_png(path, size):
    """A real PNG (matplotlib decodes it) of ``size`` = (width, height) pixels."""
    import matplotlib.image

    assert visualize.png_size(path) == size
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (size[1], size[0])
    assert pixels.std() > 0  # something was drawn


# ---- the CLI on a checkpoint trained by `train` -------------------------------------------------
@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A LeNet trained for 10 steps by the training CLI, recording its first-layer
    kernels every 2 steps; its test accuracy as `train` reports it."""
    if NO_DATA:
        pytest.skip(NO_DATA_REASON)
    out = tmp_path_factory.mktemp("lenet")
    rc = train.main(["--model", "lenet", "--dataset", DATASET, "--epochs", "1", "--seed", "0",
                     "--train-subset", "1000", "--test-subset", str(TEST_SUBSET),
                     "--record-filters", "2", "--out", str(out), "--no-progress",
                     "--summary-json", str(out / "train.json")])
    assert rc == 0
    return {"out": out, "checkpoint": str(out / "checkpoint.npz"),
            "filters": str(out / "filters.npz"),
            "summary": json.loads((out / "train.json").read_text())}


def run(argv, out):
    """Run the inspect CLI; its exit status and the summary-<subcommand>.json it wrote (or None)."""
    rc = insp.main(argv + ["--out", str(out)])
    path = out / f"summary-{argv[0]}.json"
    return rc, (json.loads(path.read_text()) if rc == 0 else None)


def test_filters(trained, tmp_path):
    rc, summary = run(["filters", trained["checkpoint"]], tmp_path)
    assert rc == 0
    model, _ = load_model(trained["checkpoint"])
    weights = [model.conv1.weight.numpy(), model.conv2.weight.numpy()]
    assert [layer["shape"] for layer in summary["layers"]] == [[6, 1, 5, 5], [12, 6, 5, 5]]
    for layer, w, name in zip(summary["layers"], weights, ("conv1", "conv2")):
        assert layer["module"] == name
        assert layer["min"] == pytest.approx(float(w.min()))
        assert layer["max"] == pytest.approx(float(w.max()))
        rows, cols = visualize.kernel_grid_shape(w.shape)
        assert_png(layer["png"], visualize.grid_png_size(rows, cols, visualize.KERNEL_TILE))
    assert visualize.kernel_grid_shape(weights[0].shape) == (2, 3)  # 6 kernels, near-square
    assert visualize.kernel_grid_shape(weights[1].shape) == (12, 6)  # one row per output


def test_evolution_of_the_kernels_train_recorded(trained, tmp_path):
    rc, summary = run(["evolution", trained["filters"]], tmp_path)
    assert rc == 0
    with np.load(trained["filters"]) as f:
        steps, weights = f["steps"], f["weights"]
    assert summary["steps"] == steps.tolist() == [0, 2, 4, 6, 8, 10]  # 10 steps, every 2
    assert weights.shape == (6, 6, 1, 5, 5)
    model, _ = load_model(trained["checkpoint"])  # the last snapshot is the trained kernel
    assert np.array_equal(weights[-1], model.conv1.weight.numpy())
    final = np.linalg.norm((weights[-1] - weights[0]).reshape(6, -1), axis=1) \
        / np.linalg.norm(weights[0].reshape(6, -1), axis=1)
    assert np.allclose(summary["final_relative_change"], final, rtol=1e-5)
    assert all(c > 0 for c in summary["final_relative_change"])  # training moved every kernel
    grid, curve = summary["pngs"]
    rows, cols = visualize.evolution_layout(weights.shape)
    assert (rows, cols) == (6, 7)
    assert_png(grid, visualize.grid_png_size(rows, cols, visualize.EVOLUTION_TILE))
    assert_png(curve, (640, 400))


def test_evolution_of_a_constructed_record(tmp_path):
    record = tmp_path / "filters.npz"
    scale = np.array([1.0, 2.0, 4.0], np.float32)
    np.savez(record, steps=np.array([0, 5, 10]),
             weights=scale[:, None, None, None, None] * np.ones((3, 2, 1, 3, 3), np.float32))
    rc, summary = run(["evolution", str(record)], tmp_path)
    assert rc == 0
    assert summary["final_relative_change"] == pytest.approx([3.0, 3.0])
    assert summary["columns"] == [0, 5, 10]


def test_evolution_names_a_missing_array(tmp_path, capsys):
    record = tmp_path / "bad.npz"
    np.savez(record, steps=np.arange(3))
    rc, _ = run(["evolution", str(record)], tmp_path)
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad.npz" in err and "weights" in err


def test_features_match_a_hand_normalised_forward_pass(trained, tmp_path):
    index = 7
    rc, summary = run(["features", trained["checkpoint"], "--index", str(index),
                       "--test-subset", str(TEST_SUBSET)], tmp_path)
    assert rc == 0
    images, labels = load_dataset(DATASET, "test")
    (mean,), (std,) = NORMALIZATION[DATASET]
    x = ((images[index:index + 1, None] / 255.0 - mean) / std).astype(np.float32)
    model, _ = load_model(trained["checkpoint"])
    model.eval()
    with mt.no_grad():
        maps = [m.numpy()[0] for m in model.retrieve_features(mt.tensor(x))]
        pred = int(model(mt.tensor(x)).argmax(dim=1).item())
    names = insp.class_names(DATASET)
    assert summary["predicted"] == names[pred] and summary["true"] == names[labels[index]]
    assert [layer["shape"] for layer in summary["layers"]] == [[6, 24, 24], [12, 8, 8]]
    for layer, m in zip(summary["layers"], maps):
        assert layer["mean"] == pytest.approx(float(m.mean()), rel=1e-5)
        assert layer["min"] >= 0  # after the ReLU
        rows, cols = visualize.feature_layout(m.shape[0])
        assert_png(layer["png"], visualize.grid_png_size(rows, cols, visualize.FEATURE_TILE))


def test_features_index_out_of_range_is_an_error(trained, tmp_path, capsys):
    rc, _ = run(["features", trained["checkpoint"], "--index", "200", "--test-subset", "200"],
                tmp_path)
    assert rc == 1
    assert "--index 200" in capsys.readouterr().err


def evaluate_accuracy(checkpoint, subset):
    """`training.evaluate` on the first ``subset`` test images, as `train` loads them."""
    model, ckpt = load_model(checkpoint)
    images, labels = load_dataset(DATASET, "test")
    mean, std = NORMALIZATION[DATASET]
    loader = DataLoader(images[:subset], labels[:subset], batch_size=64, mean=mean, std=std)
    return training.evaluate(model, loader, ckpt.config["loss"])[1]


def test_predictions_gallery_and_confusion(trained, tmp_path):
    rc, summary = run(["predictions", trained["checkpoint"], "--count", "20",
                       "--test-subset", str(TEST_SUBSET)], tmp_path)
    assert rc == 0
    _, labels = load_dataset(DATASET, "test")
    with open(summary["csv"]) as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == insp.class_names(DATASET)
    matrix = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert np.array_equal(matrix, summary["confusion"])
    assert np.array_equal(matrix.sum(axis=1), np.bincount(labels[:TEST_SUBSET], minlength=10))
    assert np.trace(matrix) / matrix.sum() == pytest.approx(summary["accuracy"])
    # the same accuracy as the training CLI reported and as training.evaluate measures
    assert summary["accuracy"] == pytest.approx(trained["summary"]["test_accuracy"])
    measured = evaluate_accuracy(trained["checkpoint"], TEST_SUBSET)
    assert summary["accuracy"] == pytest.approx(measured)
    gallery, confusion_png = summary["pngs"]
    assert len(summary["gallery_indices"]) == 20
    rows, cols = visualize.grid_shape(20, 8)
    assert_png(gallery, visualize.grid_png_size(rows, cols, visualize.GALLERY_TILE,
                                                label=visualize.GALLERY_LABEL))
    assert_png(confusion_png, (750, 650))


def test_shift_zero_is_the_unshifted_accuracy(trained, tmp_path):
    rc, summary = run(["shift", trained["checkpoint"], "--max-shift", "3", "--index", "4",
                       "--test-subset", str(TEST_SUBSET)], tmp_path)
    assert rc == 0
    assert summary["shifts"] == [0, 1, 2, 3]
    assert set(summary["accuracy"]) == {"left", "right", "up", "down"}
    unshifted = trained["summary"]["test_accuracy"]
    assert summary["unshifted_accuracy"] == pytest.approx(unshifted)
    for accs in summary["accuracy"].values():
        assert len(accs) == 4 and accs[0] == pytest.approx(unshifted)
        assert all(round(a * TEST_SUBSET, 6).is_integer() for a in accs)
    example = summary["example"]["predicted"]
    assert len({row[0] for row in example.values()}) == 1  # shift 0 is one image
    curve, view = summary["pngs"]
    assert_png(curve, (640, 400))
    assert_png(view, visualize.grid_png_size(4, 4, visualize.SHIFT_TILE,
                                             label=visualize.SHIFT_LABEL))


def test_checkpoint_errors_are_reported(tmp_path, capsys):
    rc, _ = run(["filters", str(tmp_path / "missing.npz")], tmp_path)
    assert rc == 1
    assert "missing.npz" in capsys.readouterr().err


@needs_fashion
def test_permutation_trains_like_train_and_refuses_fc2_filters(tmp_path, capsys):
    """4 tiny runs; the fc2 run on original pixels must equal the training CLI's run."""
    subset = ["--train-subset", "300", "--test-subset", "100", "--epochs", "1", "--seed", "0"]
    rc, summary = run(["permutation", "--dataset", DATASET] + subset, tmp_path / "perm")
    assert rc == 0
    assert set(summary["accuracy"]) == {"fc2", "small-cnn"}
    for result in summary["accuracy"].values():
        assert result["epochs"] == 1
        for variant in ("original", "permuted"):
            assert 0 <= result[variant] <= 1 and round(result[variant] * 100, 6).is_integer()
        assert result["drop"] == pytest.approx(result["original"] - result["permuted"])
    assert_png(summary["png"], (640, 400))

    out = tmp_path / "fc2"
    assert train.main(["--model", "fc2", "--dataset", DATASET, "--out", str(out), "--no-progress",
                       "--summary-json", str(out / "train.json")] + subset) == 0
    reported = json.loads((out / "train.json").read_text())["test_accuracy"]
    assert summary["accuracy"]["fc2"]["original"] == pytest.approx(reported)

    capsys.readouterr()
    rc, _ = run(["filters", str(out / "checkpoint.npz")], tmp_path / "fc2-filters")
    assert rc == 1
    assert "no convolution layer" in capsys.readouterr().err
    rc, _ = run(["features", str(out / "checkpoint.npz")], tmp_path / "fc2-features")
    assert rc == 1
    assert "retrieve_features" in capsys.readouterr().err


def test_cupy_backend_gives_the_numpy_predictions(trained, tmp_path):
    try:
        with mt.backend("cupy"):
            pass
    except mt.BackendUnavailable as e:
        pytest.skip(f"cupy backend unavailable: {e}")
    results = {}
    for name in ("numpy", "cupy"):
        rc, summary = run(["predictions", trained["checkpoint"], "--backend", name,
                           "--test-subset", str(TEST_SUBSET)], tmp_path / name)
        assert rc == 0
        results[name] = summary
    assert mt.get_backend().name == "numpy"  # the CLI leaves the default backend alone
    differ = np.abs(np.subtract(results["numpy"]["confusion"], results["cupy"]["confusion"]))
    assert differ.sum() <= 4  # at most 2 near-tie predictions flipped by float32 rounding


@pytest.mark.parametrize("argv, flag", [
    (["shift", "c.npz", "--max-shift", "-1"], "--max-shift"),
    (["predictions", "c.npz", "--count", "0"], "--count"),
    (["permutation", "--models", "resnet"], "--models"),
])
def test_bad_arguments_are_usage_errors_naming_the_flag(argv, flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        insp.main(argv + ["--out", str(tmp_path)])
    assert stop.value.code == 2
    assert flag in capsys.readouterr().err


# ---- report: one self-contained page of a run ------------------------------------------------
class PageParser(html.parser.HTMLParser):
    """The section ids, <img> sources, link targets, text, and text of each section."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links, self.text = [], [], [], []
        self.section_text = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
            self.section_text[attrs["id"]] = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("a", "link", "script"):
            self.links.append(attrs.get("href") or attrs.get("src"))

    def handle_data(self, data):
        self.text.append(data)
        if self.sections:
            self.section_text[self.sections[-1]] += data


def parse_page(path):
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def decode_png(src):
    """The pixels of an embedded PNG (fails unless ``src`` is a PNG data URI that decodes)."""
    import matplotlib.image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data.startswith(visualize.PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_report_gathers_the_run_into_one_page_and_keeps_every_summary(trained, tmp_path):
    out = tmp_path / "inspect"
    rc, summary = run(["report", str(trained["out"]), "--test-subset", str(TEST_SUBSET)], out)
    assert rc == 0 and summary["missing"] == []
    # Every inspection the report ran into the one folder kept its own summary.
    commands = ("filters", "evolution", "features", "predictions", "shift")
    kept = {c: json.loads((out / f"summary-{c}.json").read_text()) for c in commands}
    assert all(s["command"] == c for c, s in kept.items())
    assert not (out / "summary.json").exists()

    page = parse_page(out / "report.html")
    assert page.sections == ["curves", "filters", "evolution", "features", "predictions",
                             "confusion", "shift"] == summary["sections"]
    # 2 curves, 2 filter layers, 2 evolution pictures, 2 feature maps, gallery, confusion,
    # shift curve and example: each an embedded PNG that decodes to a drawn picture.
    assert len(page.images) == 12
    for src in page.images:
        pixels = decode_png(src)
        assert pixels.ndim == 3 and pixels.std() > 0
    assert all(link.startswith("#") for link in page.links)  # nothing outside the file
    accuracy = f"{100 * trained['summary']['test_accuracy']:.2f}%"
    assert f"accuracy {accuracy} on {TEST_SUBSET} test images" in page.section_text["predictions"]
    assert accuracy in page.section_text["curves"]  # the epoch table, from metrics.csv


def test_report_reruns_only_inspections_older_than_the_checkpoint(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained["out"], run_dir)
    argv = ["report", str(run_dir), "--test-subset", "50"]
    assert insp.main(argv) == 0
    out = run_dir / "inspect"  # the default
    summaries = {p.name: p.stat().st_mtime_ns for p in out.glob("summary-*.json")}
    assert insp.main(argv) == 0  # everything is up to date: only the report is written again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("summary-*.json")
            if p.name != "summary-report.json"} == \
        {k: v for k, v in summaries.items() if k != "summary-report.json"}
    later = max(p.stat().st_mtime for p in out.iterdir()) + 10
    os.utime(run_dir / "checkpoint.npz", (later, later))  # as if trained again
    assert insp.main(argv) == 0
    rerun = {p.name for p in out.glob("summary-*.json")
             if p.stat().st_mtime_ns != summaries[p.name]}
    assert rerun == {"summary-filters.json", "summary-features.json", "summary-predictions.json",
                     "summary-shift.json", "summary-report.json"}


def test_report_names_what_is_missing(trained, tmp_path, capsys):
    run_dir = tmp_path / "curves-only"
    run_dir.mkdir()
    shutil.copy(trained["out"] / "metrics.csv", run_dir)
    rc, summary = run(["report", str(run_dir)], tmp_path / "out")
    assert rc == 0
    assert summary["sections"] == ["curves"]
    assert summary["missing"] == ["filters", "evolution", "features", "predictions", "shift"]
    page = parse_page(tmp_path / "out" / "report.html")
    assert page.images == []  # no loss.png / error.png copied, and no inspections
    assert "no checkpoint.npz in" in " ".join(page.text)

    missing = tmp_path / "no-such-run"
    rc, _ = run(["report", str(missing)], missing / "inspect")
    assert rc == 1 and not missing.exists()  # refused before any folder is made
    assert "no-such-run does not exist" in capsys.readouterr().err


def test_page_refuses_an_image_that_is_not_a_png(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="fake.png: not a PNG"):
        html_page.png_data_uri(fake)
