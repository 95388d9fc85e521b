"""``reference.train_torch`` trains the PyTorch twin as ``minitorch_cnn.train`` trains ours,
and ``reference.compare`` tabulates both.

lenet has no dropout, so from the same seed (same initial weights, same batch order) the
two frameworks follow the same trajectory up to float32 rounding: after one epoch on a
small subset of real Fashion-MNIST their training loss and test accuracy must agree.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[reference]')")

from minitorch_cnn import data  # noqa: E402
from minitorch_cnn import train as ours  # noqa: E402
from minitorch_cnn.metrics import read_metrics  # noqa: E402
from reference import compare, train_torch  # noqa: E402

TRAIN_N, TEST_N = 512, 256
SUBSET = ["--train-subset", str(TRAIN_N), "--test-subset", str(TEST_N)]


@pytest.fixture(scope="module")
def fashion():
    if not (data.find_dataset("fashion-mnist", "train") and data.find_dataset("fashion-mnist", "test")):
        pytest.skip("Fashion-MNIST files not found (apt-get install dataset-fashion-mnist, "
                    "or set $MINITORCH_DATA)")


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threads only add contention on a shared machine
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lenet_runs(fashion, one_thread, tmp_path_factory):
    """One epoch of lenet on the subset, by ours and by the twin, each through its CLI."""
    out = tmp_path_factory.mktemp("lenet")
    common = ["--model", "lenet", "--epochs", "1", "--seed", "3", *SUBSET]
    assert ours.main([*common, "--no-progress", "--out", str(out / "ours"),
                      "--summary-json", str(out / "ours.json")]) == 0
    assert train_torch.main([*common, "--threads", "1", "--summary-json", str(out / "torch.json")]) == 0
    with open(out / "ours.json") as f, open(out / "torch.json") as g:
        summaries = {"ours": json.load(f), "torch": json.load(g)}
    epoch_rows = [r for r in read_metrics(out / "ours" / "metrics.csv") if r["kind"] == "epoch"]
    return summaries, epoch_rows


def test_twin_matches_ours_without_dropout(lenet_runs):
    summaries, ours_epochs = lenet_runs
    parser = train_torch.build_parser()
    args = parser.parse_args(["--model", "lenet", "--epochs", "1", "--seed", "3", *SUBSET])
    _, history = train_torch.train(train_torch.resolve_config(args, parser))
    assert history[0]["train_loss"] == pytest.approx(ours_epochs[0]["train_loss"], abs=1e-3)
    assert abs(summaries["torch"]["test_accuracy"] - summaries["ours"]["test_accuracy"]) <= 0.01
    # The twin run through main() is the same deterministic run.
    assert summaries["torch"]["test_accuracy"] == history[0]["test_acc"]
    # Training has moved the weights: a real epoch, not the initial model twice.
    assert history[0]["train_loss"] < 2.35 and history[0]["test_acc"] > 0.1


def test_summary_has_our_keys_and_settings(lenet_runs):
    summaries, _ = lenet_runs
    torch_summary, our_summary = summaries["torch"], summaries["ours"]
    assert set(torch_summary) == set(our_summary)
    assert torch_summary["backend"] == "torch-cpu"
    for key in ("model", "dataset", "epochs", "steps", "seed", "batch_size", "optimizer", "lr", "momentum"):
        assert torch_summary[key] == our_summary[key], key
    assert torch_summary["train_seconds"] > 0 and torch_summary["images_per_second"] > 0


def test_twin_starts_from_our_initial_weights():
    import minitorch_cnn as mt
    from minitorch_cnn import models

    mt.manual_seed(5)
    reference_state = models.get_model("bn-cnn").state_dict()
    twin_state = train_torch.build_twin("bn-cnn", 5).state_dict()
    assert list(twin_state) == list(reference_state)
    for key, value in reference_state.items():
        assert torch.equal(twin_state[key], torch.from_numpy(np.asarray(value))), key


def test_optimizer_settings_follow_the_config():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = train_torch.make_torch_optimizer("sgd", params, 0.1, 0.5)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5
    assert isinstance(train_torch.make_torch_optimizer("adam", params, 0.01), torch.optim.Adam)
    with pytest.raises(ValueError, match="momentum"):
        train_torch.make_torch_optimizer("adam", params, 0.01, 0.9)


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        train_torch.main(["--model", "lenet", "--optimizer", "adam", "--momentum", "0.9"])
    assert stop.value.code == 2 and "--momentum" in capsys.readouterr().err


def test_compare_parses_models_and_pins_threads():
    assert compare.parse_models("mnist-example:3, bn-cnn:5") == [("mnist-example", 3), ("bn-cnn", 5)]
    for bad in ("nope:3", "lenet", "lenet:0", ""):
        with pytest.raises(ValueError, match="--models"):
            compare.parse_models(bad)
    env = compare.child_environment(2, base={"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512",
                                             "PATH": "/bin"})
    assert env == {"PATH": "/bin", "OPENBLAS_NUM_THREADS": "2"}


def test_compare_table():
    def summary(acc, seconds, epochs):
        return {"test_accuracy": acc, "train_seconds": seconds, "epochs": epochs,
                "images_per_second": 60000 * epochs / seconds}
    table = compare.format_table([("bn-cnn", 5, {"ours": summary(0.9012, 100.0, 5),
                                                 "torch": summary(0.905, 50.0, 5)})])
    header, rule, row = table.splitlines()
    assert header.count("|") == rule.count("|") == row.count("|") == 9
    assert row == "| bn-cnn | 5 | 90.12% | 90.50% | 20.0 | 10.0 | 3000 | 6000 |"
