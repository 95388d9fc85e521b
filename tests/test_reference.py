"""Every zoo model against its PyTorch twin (``reference/``), and the weight converters.

For each model, from the same weights (ours -> torch via state_dict) and the same data:
the same logits, loss, feature maps and parameter gradients; the same BatchNorm
statistics; and 20 optimizer steps (SGD or Adam per the model's spec) that end at the
same parameters. Dropout is set to p=0 in both models (their masks come from different
generators) while the models stay in train mode, so BatchNorm uses batch statistics.

Inputs imitate images: values in [0, 1) with 60% exact zeros, so that convolutions see
all-zero patches, their outputs tie exactly and max pooling must break ties as PyTorch
does (first maximum).

Engine backend: the equivalence tests run on the backends ``MT_TEST_BACKEND`` names
(see ``optest.py``; a cupy case skips when CuPy or a GPU is missing).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from threadpoolctl import threadpool_limits

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
from optest import BACKENDS, backend_for_test  # noqa: E402

import minitorch_cnn as mt  # noqa: E402
import minitorch_cnn.nn.functional as F  # noqa: E402
import minitorch_cnn.optim as optim  # noqa: E402
from minitorch_cnn.models import MODELS, get_model, get_spec  # noqa: E402
from reference import convert  # noqa: E402
from reference.models import TORCH_MODELS, get_torch_model  # noqa: E402

NAMES = list(MODELS)
LOSS_FUNCTIONS = {"nll": "nll_loss", "cross_entropy": "cross_entropy"}  # same name in both
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are small: threads only add synchronisation, and on a busy 2-core
    machine OpenMP's spin-waiting made this module 8x slower (98 s against 13 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


@pytest.fixture(params=BACKENDS)
def engine_backend(request):
    yield from backend_for_test(request.param)


# ---- helpers ---------------------------------------------------------------------------
def twins(name, seed=0):
    """Our model (seeded, PyTorch-default init) and its torch twin holding the same weights."""
    mt.manual_seed(seed)
    ours = get_model(name)
    theirs = convert.copy_weights(ours, get_torch_model(name))
    return ours, theirs


def disable_dropout(model):
    """p=0 in every Dropout/Dropout2d (class names are the same in both frameworks)."""
    for module in model.modules():
        if type(module).__name__ in ("Dropout", "Dropout2d"):
            module.p = 0.0
    return model


def image_like(rng, n, shape):
    x = rng.random((n,) + tuple(shape), dtype=np.float32)
    x[rng.random(x.shape) < 0.6] = 0.0
    return x


def ours_tensor(array, requires_grad=False):
    return mt.tensor(array, requires_grad=requires_grad).to(mt.get_backend().name)


def loss_of(framework_functional, spec, output, target):
    return getattr(framework_functional, LOSS_FUNCTIONS[spec.loss])(output, target)


def numpy_of(value):
    """A NumPy copy of an engine tensor, a torch tensor or a number."""
    return convert.from_torch({"v": value})["v"]


def assert_same(ours_value, torch_value, what, atol=1e-4, rtol=1e-4):
    np.testing.assert_allclose(numpy_of(ours_value), numpy_of(torch_value), atol=atol, rtol=rtol,
                               err_msg=what)


def assert_states_close(ours, theirs, *, rtol, atol, skip=(), what=""):
    a, b = convert.from_torch(ours), convert.from_torch(theirs)
    assert a.keys() == b.keys()
    for key in a:
        if key in skip:
            continue
        assert a[key].dtype == b[key].dtype, f"{what}{key}: dtype {a[key].dtype} vs {b[key].dtype}"
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=f"{what}{key}")


def conv_biases_before_batchnorm(model):
    """Keys of conv biases that feed a BatchNorm directly, with that BatchNorm's
    running_mean. Found in Sequential containers, whose child order is the order of
    execution (the zoo's BatchNorm models use Sequential)."""
    keys = []
    for prefix, module in model.named_modules():
        children = list(module.named_children())
        for (n1, a), (n2, b) in zip(children, children[1:]):
            if type(a).__name__ == "Conv2d" and type(b).__name__ == "BatchNorm2d":
                base = f"{prefix}." if prefix else ""
                keys += [f"{base}{n1}.bias", f"{base}{n2}.running_mean"]
    return keys


# ---- the twins are the same network ----------------------------------------------------
def test_torch_zoo_matches_ours_in_names_and_order():
    assert list(TORCH_MODELS) == NAMES
    with pytest.raises(ValueError) as info:
        get_torch_model("nope")
    assert "'nope'" in str(info.value) and all(n in str(info.value) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_same_state_dict_keys_shapes_and_parameter_count(name):
    ours, theirs = get_model(name), get_torch_model(name)
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    torch_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(ours_shapes) == list(torch_shapes)  # same keys, same order
    assert ours_shapes == torch_shapes
    assert (sum(p.numel() for p in ours.parameters())
            == sum(p.numel() for p in theirs.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_same_logits_gradients_and_statistics(name, engine_backend):
    spec = get_spec(name)
    ours, theirs = twins(name)
    disable_dropout(ours), disable_dropout(theirs)
    n = 2 if name == "vgg-bn" else 8  # vgg-bn: 9M parameters; a batch of 2 keeps it quick
    rng = np.random.default_rng(1)
    x, y = image_like(rng, n, spec.input_shape), rng.integers(0, 10, n)

    out = ours(ours_tensor(x))
    loss = loss_of(F, spec, out, ours_tensor(y))
    loss.backward()
    t_out = theirs(torch.from_numpy(x))
    t_loss = loss_of(TF, spec, t_out, torch.from_numpy(y))
    t_loss.backward()

    assert_same(out, t_out, "logits")
    assert_same(loss, t_loss, "loss", atol=1e-5, rtol=1e-5)
    t_params = dict(theirs.named_parameters())
    for key, p in ours.named_parameters():
        assert p.grad is not None, f"{key}: no gradient"
        assert_same(p.grad, t_params[key].grad, f"gradient of {key}")
    # BatchNorm running statistics after one train-mode batch, then eval mode with them.
    assert_states_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.eval(), theirs.eval()
    with mt.no_grad(), torch.no_grad():
        assert_same(ours(ours_tensor(x)), theirs(torch.from_numpy(x)), "eval-mode logits")
        if hasattr(theirs, "retrieve_features"):
            maps = ours.retrieve_features(ours_tensor(x))
            t_maps = theirs.retrieve_features(torch.from_numpy(x))
            assert len(maps) == len(t_maps)
            for i, (m, t) in enumerate(zip(maps, t_maps)):
                assert_same(m, t, f"feature map {i}", atol=1e-5)


def make_optimizers(spec, ours, theirs):
    if spec.optimizer == "sgd":
        return (optim.SGD(ours.parameters(), lr=spec.lr, momentum=spec.momentum),
                torch.optim.SGD(theirs.parameters(), lr=spec.lr, momentum=spec.momentum))
    return (optim.Adam(ours.parameters(), lr=spec.lr),
            torch.optim.Adam(theirs.parameters(), lr=spec.lr))


# Trained in float64 by the trajectory test: in float32, at lr 0.01 with momentum 0.9,
# a rounding-level difference grows past 1e-4 within 3 to 20 steps, in either framework
# (PyTorch's float32 against its float64 too), as a BatchNorm output within rounding of
# zero passes a ReLU in one framework only (the vgg-bn case below). From the same weights
# the engine's float32 gradients are closer to float64's than PyTorch's; in float64 the
# 20 steps agree to 1e-15.
FLOAT64_TRAJECTORIES = ("mobile-cnn", "mobile-cnn-cifar")


def to_float64(ours, theirs):
    for t in list(ours.parameters()) + list(ours.buffers()):
        if t.dtype == np.float32:
            t.data = t.data.astype(np.float64)
    theirs.double()


@pytest.mark.parametrize("name", NAMES)
def test_same_parameters_after_training_steps(name, engine_backend):
    spec = get_spec(name)
    ours, theirs = twins(name)
    disable_dropout(ours), disable_dropout(theirs)
    dtype = np.float64 if name in FLOAT64_TRAJECTORIES else np.float32
    if dtype == np.float64:
        to_float64(ours, theirs)
    opt, t_opt = make_optimizers(spec, ours, theirs)
    # vgg-bn: 2 steps of batch 4. Its 9M parameters make each step slow, and at lr 0.05
    # on random labels its loss explodes (2 -> 17 in 2 steps), a chaotic regime where
    # PyTorch against itself, with weights perturbed by 1e-7, is 7e-4 apart after 5
    # steps. In the third step one BatchNorm output within rounding of zero (2.7e-7 here,
    # <= 0 in PyTorch) passes the ReLU in one framework only, so the max-pool window after
    # it sends its gradient to another element: 1e-3 apart in that channel's weight
    # gradient, from a rounding-level difference (the engine's sums in double precision).
    # Adam (bn-cnn): 8 steps. Its updates are normalised, so rounding-sized differences
    # make full-sized steps once a gradient component is near zero: PyTorch against
    # itself, weights perturbed by 1e-7, drifted past 1e-4 within 20 steps for 5 of 12
    # perturbations (two to 1e-3, by sudden jumps); within 8 steps all stayed under 8e-5.
    # The engine with rounding-level changes of its own (the summation order of one
    # product) jumped the same way, from 2e-5 to 7e-3 at step 11; within 8, 2e-5 at most.
    steps, n = (2, 4) if name == "vgg-bn" else (8, 8) if spec.optimizer == "adam" else (20, 8)
    rng = np.random.default_rng(2)
    for step in range(steps):
        x, y = image_like(rng, n, spec.input_shape).astype(dtype), rng.integers(0, 10, n)
        opt.zero_grad()
        out = ours(mt.tensor(x, dtype=dtype).to(mt.get_backend().name))
        loss = loss_of(F, spec, out, ours_tensor(y))
        loss.backward()
        opt.step()
        t_opt.zero_grad()
        t_out = theirs(torch.from_numpy(x))
        t_loss = loss_of(TF, spec, t_out, torch.from_numpy(y))
        t_loss.backward()
        t_opt.step()
        assert_same(out, t_out, f"logits at step {step}")
        assert_same(loss, t_loss, f"loss at step {step}", atol=0)

    skip, atol = (), 1e-5
    if spec.optimizer == "adam":
        # A conv bias feeding a BatchNorm has a true gradient of exactly zero (the batch
        # mean cancels it), so both frameworks compute float noise (~1e-9) for it; Adam
        # divides by sqrt(v), turning that noise into full lr-sized steps of random sign.
        # Those biases therefore drift apart legitimately, as do the running_means that
        # track them; in train mode they have no effect on the output, which the logits
        # and losses above confirm. Everything else is compared.
        skip = conv_biases_before_batchnorm(ours)
        assert skip, "expected conv biases feeding BatchNorm in an Adam model"
        # The same normalisation makes every small gradient component sensitive to
        # rounding (see `steps` above): after these 8 steps the engine's parameters are
        # within 9e-7 of PyTorch's; 1e-5 leaves room for other BLAS builds.
        atol = 1e-5
    assert_states_close(ours, theirs, rtol=1e-4, atol=atol, skip=skip, what="after training: ")


@pytest.mark.parametrize("name", ["mnist-example", "bn-cnn"])
def test_copy_weights_from_torch_into_ours(name, engine_backend):
    torch.manual_seed(7)
    theirs = get_torch_model(name).eval()
    mt.manual_seed(0)
    ours = convert.copy_weights(theirs, get_model(name)).eval()
    x = image_like(np.random.default_rng(3), 4, get_spec(name).input_shape)
    with mt.no_grad(), torch.no_grad():
        assert_same(ours(ours_tensor(x)), theirs(torch.from_numpy(x)), "eval-mode logits")
    assert_states_close(ours, theirs, rtol=0, atol=0)


# ---- weight files ------------------------------------------------------------------------
def assert_states_equal(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_ours_pth_torch_npz_ours_is_identity(name, tmp_path):
    mt.manual_seed(0)
    ours = get_model(name)
    if any(True for _ in ours.buffers()):  # make BatchNorm's buffers non-default
        ours(ours_tensor(image_like(np.random.default_rng(0), 4, get_spec(name).input_shape)))
    original = ours.state_dict()
    convert.save_pth(tmp_path / "w.pth", ours)
    theirs = get_torch_model(name)
    theirs.load_state_dict(convert.load_pth(tmp_path / "w.pth"))
    convert.save_npz(tmp_path / "w.npz", theirs)
    mt.manual_seed(1)
    back = get_model(name)
    back.load_state_dict(convert.load_npz(tmp_path / "w.npz"))
    assert_states_equal(back.state_dict(), original)


def test_load_npz_takes_the_model_entries_of_a_training_checkpoint(tmp_path):
    mt.manual_seed(0)
    state = get_model("lenet").state_dict()
    entries = {f"model/{k}": v for k, v in state.items()}
    entries.update({"optimizer/state/0/momentum_buffer": np.ones(3, np.float32),
                    "meta/epoch": np.array(2), "meta/model": np.array("lenet")})
    np.savez(tmp_path / "ckpt.npz", **entries)
    assert_states_equal(convert.load_npz(tmp_path / "ckpt.npz"), state)
    # and a plain state-dict file is taken whole
    np.savez(tmp_path / "plain.npz", **state)
    assert_states_equal(convert.load_npz(tmp_path / "plain.npz"), state)


def test_a_minitorch_training_checkpoint_converts_to_the_torch_twin(tmp_path):
    checkpoint = pytest.importorskip("minitorch_cnn.checkpoint")
    mt.manual_seed(0)
    model = get_model("bn-cnn")
    opt = optim.Adam(model.parameters(), lr=0.01)
    x = image_like(np.random.default_rng(0), 4, (1, 28, 28))
    F.cross_entropy(model(ours_tensor(x)), ours_tensor(np.arange(4))).backward()
    opt.step()  # optimizer arrays and BatchNorm statistics in the file too
    checkpoint.save_checkpoint(tmp_path / "run.npz", model, opt, config={"model": "bn-cnn", "seed": 0},
                               epoch=0, batch=1, step=1)
    assert_states_equal(convert.load_npz(tmp_path / "run.npz"), model.state_dict())
    assert convert.main([str(tmp_path / "run.npz"), str(tmp_path / "run.pth")]) == 0
    theirs = get_torch_model("bn-cnn")
    theirs.load_state_dict(convert.load_pth(tmp_path / "run.pth"))
    assert_states_close(model, theirs, rtol=0, atol=0)


def test_load_npz_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        convert.load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "pickled.npz", obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        convert.load_npz(tmp_path / "pickled.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single.npy.*single array"):
        convert.load_npz(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz"):
        convert.load_npz(tmp_path / "text.npz")
    convert.save_npz(tmp_path / "whole.npz", {"a": np.zeros(1000, np.float32)})
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        convert.load_npz(tmp_path / "cut.npz")


def test_save_npz_is_atomic_and_refuses_objects(tmp_path):
    path = tmp_path / "w.npz"
    convert.save_npz(path, {"a": np.arange(3, dtype=np.float32)})
    convert.save_npz(path, {"a": np.arange(4, dtype=np.float32)})  # overwrites in place
    assert convert.load_npz(path)["a"].shape == (4,)
    with pytest.raises(TypeError, match="'bad'"):
        convert.save_npz(path, {"a": np.zeros(2), "bad": np.array([None], dtype=object)})
    assert convert.load_npz(path)["a"].shape == (4,)  # the failed write left it untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]  # no temporary files left


def test_load_pth_unwraps_training_checkpoints_and_rejects_other_objects(tmp_path):
    mt.manual_seed(0)
    state = convert.to_torch(get_model("fc2"))
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pth")
    loaded = convert.load_pth(tmp_path / "ckpt.pth")
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth"):
        convert.load_pth(tmp_path / "list.pth")
    torch.save({"opt": np.zeros(2)}, tmp_path / "unsafe.pth")  # needs full unpickling
    with pytest.raises(ValueError, match="unsafe.pth"):
        convert.load_pth(tmp_path / "unsafe.pth")
    with pytest.raises(FileNotFoundError, match="none.pth"):
        convert.load_pth(tmp_path / "none.pth")


def test_cli_converts_both_ways_and_checks_the_model(tmp_path, capsys):
    mt.manual_seed(0)
    state = get_model("bn-cnn").state_dict()
    np.savez(tmp_path / "ckpt.npz", **{f"model/{k}": v for k, v in state.items()},
             **{"meta/epoch": np.array(1)})
    assert convert.main([str(tmp_path / "ckpt.npz"), str(tmp_path / "w.pth"), "--model", "bn-cnn"]) == 0
    assert convert.main([str(tmp_path / "w.pth"), str(tmp_path / "w.npz")]) == 0
    assert_states_equal(convert.load_npz(tmp_path / "w.npz"), state)
    assert "w.npz" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["w.npz", "out.txt"], "out.txt: unknown extension '.txt'"),
    (["w.h5", "out.pth"], "w.h5: unknown extension '.h5'"),
    (["absent.npz", "out.pth"], "absent.npz: no such file"),
    (["w.npz", "out.pth", "--model", "lenet"], "missing key"),
    (["w.npz", "out.pth", "--model", "nope"], "unknown model 'nope'"),
])
def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    mt.manual_seed(0)
    convert.save_npz("w.npz", get_model("fc2"))
    with pytest.raises(SystemExit) as info:
        convert.main(args)
    assert info.value.code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_cli_runs_as_a_module(tmp_path):
    mt.manual_seed(0)
    convert.save_npz(tmp_path / "w.npz", get_model("fc2"))
    result = subprocess.run([sys.executable, "-m", "reference.convert", str(tmp_path / "w.npz"),
                             str(tmp_path / "w.pth")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # in particular no runpy warning about a double import
    written = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(written) == set(get_model("fc2").state_dict())


# ---- a PyTorch-trained checkpoint keeps its accuracy here -----------------------------------
def fashion_mnist():
    """(train images, train labels, test images, test labels, mean, std), or a skip."""
    try:
        from minitorch_cnn.data import NORMALIZATION, DataLoader, load_dataset
    except ImportError as e:
        pytest.skip(f"minitorch_cnn.data is not available: {e}")
    if not os.path.isdir(FASHION_DIR):
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
    train = load_dataset("fashion-mnist", "train", root=FASHION_DIR, download=False)
    test = load_dataset("fashion-mnist", "test", root=FASHION_DIR, download=False)
    return train, test, NORMALIZATION["fashion-mnist"], DataLoader


def test_pytorch_trained_checkpoint_gives_the_same_accuracy(tmp_path, engine_backend):
    (train_x, train_y), (test_x, test_y), (mean, std), DataLoader = fashion_mnist()
    spec = get_spec("lenet")
    torch.manual_seed(0)
    theirs = get_torch_model("lenet")
    opt = torch.optim.SGD(theirs.parameters(), lr=spec.lr, momentum=spec.momentum)
    train = DataLoader(train_x[:2000], train_y[:2000], batch_size=20, shuffle=True, seed=0,
                       mean=mean, std=std)
    for x, y in train.batches(epoch=0):  # 100 steps
        opt.zero_grad()
        TF.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    convert.save_pth(tmp_path / "lenet.pth", theirs)
    assert convert.main([str(tmp_path / "lenet.pth"), str(tmp_path / "lenet.npz"), "--model", "lenet"]) == 0

    ours = get_model("lenet")
    ours.load_state_dict(convert.load_npz(tmp_path / "lenet.npz"))
    ours.eval(), theirs.eval()
    test = DataLoader(test_x[:1000], test_y[:1000], batch_size=500, mean=mean, std=std)
    ours_pred, torch_pred, labels = [], [], []
    with mt.no_grad(), torch.no_grad():
        for x, y in test:
            ours_pred.append(ours(ours_tensor(x)).argmax(1).numpy())
            torch_pred.append(theirs(torch.from_numpy(x)).argmax(1).numpy())
            labels.append(y)
    ours_pred, torch_pred, labels = map(np.concatenate, (ours_pred, torch_pred, labels))
    torch_acc, ours_acc = (torch_pred == labels).mean(), (ours_pred == labels).mean()
    # chance is 0.1; 100 plain-SGD steps reach about 0.5
    assert torch_acc > 0.4, f"the PyTorch model did not learn (accuracy {torch_acc:.3f})"
    # Identical predictions, up to near-ties between two logits (none expected in 1,000).
    assert (ours_pred == torch_pred).mean() >= 0.999
    assert abs(ours_acc - torch_acc) <= 0.001
