"""``python -m reference.train_torch``: train a zoo model's PyTorch twin exactly as
``python -m minitorch_cnn.train`` trains ours, to set the two side by side.

Same run, flag for flag: the settings come from ``minitorch_cnn.train.resolve_config``
(the ModelSpec's defaults), the data from its ``load_loaders`` (the same normalisation,
validation split and ``minitorch_cnn.data.DataLoader``, so the same seed gives the same
batch order), and the initial weights are OUR model's, built after seeding as
``minitorch_cnn.train`` does and copied into the twin (``reference.convert.copy_weights``).
The loss and the optimizer's hyper-parameters are the config's. Only dropout masks
differ: they come from ``torch.manual_seed(seed)``.

Prints per epoch the training loss and accuracy, validation and test accuracy and the
epoch's training seconds (evaluation excluded, as in ours); ``--summary-json`` writes
the summary with the keys ``minitorch_cnn.train`` writes, backend ``"torch-cpu"``.

Exit status as ours: 0 done, 1 failed (data not found, a NaN/inf training loss), 2 unusable
input (bad flags, a bad data file or --data-dir).
"""
import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as TF

from minitorch_cnn import backends, data, models
from minitorch_cnn import train as ours
from reference.convert import copy_weights
from reference.models import get_torch_model

__all__ = ["BACKEND", "DEFAULT_THREADS", "build_parser", "resolve_config", "build_twin",
           "make_torch_optimizer", "evaluate", "train_epoch", "train", "main"]

BACKEND = "torch-cpu"
DEFAULT_THREADS = 2
TORCH_LOSSES = {"nll": TF.nll_loss, "cross_entropy": TF.cross_entropy}


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m reference.train_torch",
        description="Train the PyTorch twin of a zoo model with the settings "
                    "`python -m minitorch_cnn.train` uses for the same flags: same defaults, "
                    "data, batch order, initial weights, loss and optimizer.")
    # The flags, their checks and their defaults are minitorch_cnn.train's own.
    number = ours._number
    p.add_argument("--model", choices=list(models.MODELS), default=None,
                   help=f"zoo model (default: {ours.DEFAULT_MODEL})")
    p.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help="dataset (default: the model's)")
    p.add_argument("--epochs", type=number(int, 0), default=None, help="epochs (default: the model's)")
    p.add_argument("--batch-size", type=number(int, 1), default=None,
                   help="batch size, also for evaluation (default: the model's)")
    p.add_argument("--lr", type=number(float, 0, strict=True), default=None,
                   help="learning rate (default: the model's)")
    p.add_argument("--momentum", type=number(float, 0, maximum=1), default=None,
                   help="SGD momentum (default: the model's; sgd only)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="optimizer (default: the model's)")
    p.add_argument("--seed", type=number(int, 0), default=None,
                   help="seed of the initial weights (ours, copied), the data order and "
                        "torch's dropout (default: 0)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--train-subset", type=number(int, 1), default=None, metavar="N",
                   help="train on the first N training images only")
    p.add_argument("--test-subset", type=number(int, 2), default=None, metavar="N",
                   help="evaluate on the first N test images only")
    p.add_argument("--threads", type=number(int, 1), default=DEFAULT_THREADS,
                   help=f"torch.set_num_threads (default: {DEFAULT_THREADS})")
    p.add_argument("--summary-json", default=None, metavar="PATH",
                   help="write the run's summary as one JSON object to PATH")
    # What minitorch_cnn.train.resolve_config reads but this command has no use for:
    # no resuming, no outputs beside the summary.
    p.set_defaults(backend=BACKEND, resume=None, eval_only=False, out=None, checkpoint=None,
                   log_every=None, record_filters=None)
    return p


def resolve_config(args, parser):
    """The run's settings, by ``minitorch_cnn.train.resolve_config`` itself; this
    command writes no output folder and no checkpoint."""
    config = ours.resolve_config(args, parser)
    config["out"] = config["checkpoint"] = None
    return config


def build_twin(name, seed):
    """The PyTorch twin of ``name`` holding the initial weights ``minitorch_cnn.train``
    gives ours for ``seed``."""
    backends.seed_all(seed)  # as minitorch_cnn.train.Run does before building the model
    return copy_weights(models.get_model(name), get_torch_model(name))


def make_torch_optimizer(name, params, lr, momentum=0.0):
    """torch's SGD or Adam with the hyper-parameters ``minitorch_cnn.training.make_optimizer``
    gives ours (the rest at both frameworks' shared defaults)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        if momentum:
            raise ValueError("momentum applies to sgd only; adam uses its betas")
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")


def _loss_function(kind):
    if kind not in TORCH_LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose one of {sorted(TORCH_LOSSES)}")
    return TORCH_LOSSES[kind]


def _batches(loader, epoch):
    for x, y in loader.batches(epoch):
        yield torch.from_numpy(x), torch.from_numpy(y)  # no copies: the loader's arrays


def evaluate(model, loader, loss_kind):
    """(mean loss, accuracy) of ``model`` over ``loader``, in eval mode without a graph."""
    loss_fn = _loss_function(loss_kind)
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        with torch.no_grad():
            for x, y in _batches(loader, 0):
                output = model(x)
                loss_sum += float(loss_fn(output, y, reduction="sum"))
                correct += int((output.argmax(dim=1) == y).sum())
                seen += len(y)
    finally:
        model.train(was_training)
    if not seen:
        raise ValueError("evaluate() got an empty data loader")
    return loss_sum / seen, correct / seen


def train_epoch(model, optimizer, loader, loss_kind, epoch):
    """One epoch in ``loader``'s order for ``epoch``; returns ``loss`` and ``accuracy``
    (means over the epoch's images), ``images``, ``seconds``, ``images_per_second``."""
    loss_fn = _loss_function(loss_kind)
    model.train()
    loss_sum, correct, images = 0.0, 0, 0
    started = time.perf_counter()
    for x, y in _batches(loader, epoch):
        optimizer.zero_grad()
        output = model(x)
        loss = loss_fn(output, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += int((output.argmax(dim=1) == y).sum())
        images += len(y)
    seconds = time.perf_counter() - started
    return {"loss": loss_sum / images, "accuracy": correct / images, "images": images,
            "seconds": seconds, "images_per_second": images / seconds if seconds else 0.0}


def _print_epoch(record, epochs):
    print(f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} "
          f"acc {100 * record['train_acc']:.2f}% | val acc {100 * record['val_acc']:.2f}% | "
          f"test loss {record['test_loss']:.4f} acc {100 * record['test_acc']:.2f}% | "
          f"{record['seconds']:.1f} s, {record['images_per_second']:.0f} images/s", flush=True)


def train(config, data_dir=None, on_epoch=None):
    """Train the twin under ``config`` (a :func:`resolve_config` dict); returns
    ``(summary, history)``: the summary with ``minitorch_cnn.train``'s keys, and one
    record per epoch (``epoch``, ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc``, ``test_loss``, ``test_acc``, ``images``, ``seconds``,
    ``images_per_second``). ``on_epoch(record)`` is called after each epoch.
    Raises FloatingPointError on a non-finite training loss."""
    loaders = ours.load_loaders(config, data_dir, np)
    model = build_twin(config["model"], config["seed"])
    torch.manual_seed(config["seed"])  # dropout masks: torch's own generator
    optimizer = make_torch_optimizer(config["optimizer"], model.parameters(), config["lr"],
                                     config["momentum"])
    steps_per_epoch = len(loaders["train"])
    history = []
    for e in range(config["epochs"]):
        stats = train_epoch(model, optimizer, loaders["train"], config["loss"], e)
        if not np.isfinite(stats["loss"]):
            raise FloatingPointError(f"the training loss became {stats['loss']} in epoch {e + 1}")
        record = {"epoch": e + 1, "step": (e + 1) * steps_per_epoch, "train_loss": stats["loss"],
                  "train_acc": stats["accuracy"], "images": stats["images"],
                  "seconds": stats["seconds"], "images_per_second": stats["images_per_second"]}
        for split in ("val", "test"):
            record[f"{split}_loss"], record[f"{split}_acc"] = evaluate(model, loaders[split], config["loss"])
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    if history:
        last = history[-1]
        val, test = (last["val_loss"], last["val_acc"]), (last["test_loss"], last["test_acc"])
    else:  # --epochs 0: the initial weights
        val = evaluate(model, loaders["val"], config["loss"])
        test = evaluate(model, loaders["test"], config["loss"])
    summary = ours.make_summary(config, len(history), len(history) * steps_per_epoch, history,
                                val, test, checkpoint=None)
    return summary, history


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    config = resolve_config(args, parser)
    torch.set_num_threads(args.threads)
    print(f"training the torch twin of {config['model']} on {config['dataset']} "
          f"({torch.get_num_threads()} threads): {config['epochs']} epoch(s) of batches of "
          f"{config['batch_size']}; {config['optimizer']} lr {config['lr']} momentum "
          f"{config['momentum']}; seed {config['seed']}", flush=True)
    try:
        summary, _ = train(config, args.data_dir,
                           on_epoch=lambda record: _print_epoch(record, config["epochs"]))
    except ours.UnusableInput as e:  # a data file or --data-dir, named in one line
        ours.error(str(e))
        return ours.EXIT_USAGE
    except data.DatasetNotFoundError as e:
        ours.error(str(e))
        return ours.EXIT_FAILURE
    except FloatingPointError as e:
        ours.error(f"{e}; training stopped. Try a smaller --lr.")
        return ours.EXIT_FAILURE
    print(f"done: torch twin of {summary['model']} on {summary['dataset']}, {summary['epochs']} "
          f"epoch(s): test accuracy {100 * summary['test_accuracy']:.2f}%, test loss "
          f"{summary['test_loss']:.4f}; trained {summary['train_seconds']:.1f} s at "
          f"{summary['images_per_second']:.0f} images/s", flush=True)
    if args.summary_json:
        ours.write_summary_json(args.summary_json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
