"""``python -m minitorch_cnn.train``: train a zoo model on a real dataset, with progress
bars, metrics (CSV and PNG plots), atomic checkpoints, exact resumption and a JSON summary.

Exit status: 0 done; 1 a run-time failure (data not found, out of memory); 2 bad flags
(an unreadable --resume checkpoint included) or an unavailable backend; 3 a NaN/inf loss
stopped training; 130 interrupted by Ctrl-C (a checkpoint of the last finished batch is written).
"""
import argparse
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from . import backends, data, models, nn
from .checkpoint import (CheckpointError, atomic_replace_text, atomic_savez, load_checkpoint,
                         save_checkpoint)
from .metrics import MetricsLog, plot_metrics
from .training import (NonFiniteLossError, TrainingInterrupted, evaluate,
                       interrupts_at_batch_boundaries, make_optimizer, train_epoch)

# The default: bn-cnn (BatchNorm + Adam) learns fast: measured 85% test accuracy after one
# epoch and 88.9-90.3% after its five (seeds 0-2), in 60-85 s on two CPU cores with NumPy.
# lenet is six times faster per epoch but ends near 87%.
DEFAULT_MODEL = "bn-cnn"
DATASET_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
VALIDATION_SIZE = 5000
DEFAULT_LOG_EVERY = 50
# Settings a resumed run takes from its checkpoint; a flag that contradicts one is an
# error, since the continuation would not be the run that was started.
RESUME_FIXED = ("model", "dataset", "batch_size", "lr", "momentum", "optimizer", "seed",
                "train_subset", "test_subset")
EXIT_FAILURE, EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED = 1, 2, 3, 130


# ---- command line ---------------------------------------------------------------------------
def _number(kind, minimum, strict=False, maximum=None):
    """An argparse type: ``kind`` within [minimum, maximum) (or (minimum, ...) if strict)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value < minimum or (strict and value == minimum) or not np.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, got {text}")
        if maximum is not None and value >= maximum:
            raise argparse.ArgumentTypeError(f"must be < {maximum}, got {text}")
        return value
    return parse


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minitorch_cnn.train",
        description="Train a model of the zoo (minitorch_cnn.models) on MNIST, Fashion-MNIST or "
                    "CIFAR-10. Without flags: %s on Fashion-MNIST with NumPy, with the model's "
                    "own defaults. Unset hyper-parameters come from the model's ModelSpec; a "
                    "resumed run takes them from its checkpoint." % DEFAULT_MODEL,
        epilog="Outputs in --out: metrics.csv (a row per logging step and per epoch), loss.png, "
               "error.png, checkpoint.npz (after every epoch and on Ctrl-C). Exit status: 0 done, "
               "1 failure, 2 bad flags or backend unavailable, 3 NaN/inf loss, 130 interrupted.")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy",
                   help="array backend: numpy (CPU) or cupy (NVIDIA GPU) (default: numpy)")
    p.add_argument("--threads", type=_number(int, 1), default=None, metavar="N",
                   help="CPU threads for the numpy backend (default: every core this process "
                        "may use; see README, Speed)")
    p.add_argument("--model", choices=list(models.MODELS), default=None,
                   help=f"zoo model (default: {DEFAULT_MODEL}: BatchNorm and Adam make it learn "
                        "fast: about 85%% test accuracy after one epoch and about 90%% after its "
                        "5 (88.9-90.3%% on seeds 0-2), in 60-85 s on two CPU cores; lenet "
                        "is 6x faster but ends near 87%%)")
    p.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help="dataset (default: the model's, fashion-mnist or cifar10); its image shape "
                        "must be the model's input shape")
    p.add_argument("--epochs", type=_number(int, 0), default=None,
                   help="TOTAL number of epochs; a resumed run continues up to it "
                        "(default: the model's)")
    p.add_argument("--batch-size", type=_number(int, 1), default=None,
                   help="training batch size, also used for evaluation (default: the model's)")
    p.add_argument("--lr", type=_number(float, 0, strict=True), default=None,
                   help="learning rate (default: the model's)")
    p.add_argument("--momentum", type=_number(float, 0, maximum=1), default=None,
                   help="SGD momentum in [0, 1) (default: the model's; sgd only)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="optimizer (default: the model's)")
    p.add_argument("--seed", type=_number(int, 0), default=None,
                   help="seed of the initial weights, the data order and dropout; the same seed "
                        "gives the same run (default: 0)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the dataset files (default: searched for, see "
                        "minitorch_cnn.data.load_dataset, and downloaded if missing)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/<model>-<dataset>-<seed>, or a resumed "
                        "run's own)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint path to write (default: <out>/checkpoint.npz, or the "
                        "--resume checkpoint)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue the run saved in this checkpoint, up to --epochs in total; "
                        "ends with the parameters an uninterrupted run would have")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the --resume checkpoint on the validation and test sets; no training")
    p.add_argument("--summary-json", default=None, metavar="PATH",
                   help="write the run's final summary as one JSON object to PATH")
    p.add_argument("--train-subset", type=_number(int, 1), default=None, metavar="N",
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--test-subset", type=_number(int, 2), default=None, metavar="N",
                   help="evaluate on the first N test images only; the validation set is the "
                        f"first half of the test images, at most {VALIDATION_SIZE}")
    p.add_argument("--log-every", type=_number(int, 1), default=None, metavar="N",
                   help=f"steps between progress updates and metrics.csv step rows (default: "
                        f"{DEFAULT_LOG_EVERY}, or a resumed run's own)")
    p.add_argument("--record-filters", type=_number(int, 1), default=None, metavar="N",
                   help="every N steps record the first convolution's weights into "
                        "<out>/filters.npz (for `python -m minitorch_cnn.inspect evolution`); "
                        "a resumed run keeps recording at its own N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def resolve_config(args, parser, ckpt=None):
    """The run's settings: flags, else the checkpoint's (resuming), else the ModelSpec's."""
    given = {key: getattr(args, key) for key in RESUME_FIXED if getattr(args, key) is not None}
    if ckpt is not None:
        saved = ckpt.config
        if "model" in given and given["model"] != saved.get("model"):
            parser.error(f"--model {given['model']} differs from the model of checkpoint "
                         f"{ckpt.path} ({saved.get('model')!r})")
        for key, value in given.items():
            if not args.eval_only and key in saved and value != saved[key]:
                parser.error(f"--{key.replace('_', '-')} {value} differs from checkpoint {ckpt.path}'s "
                             f"{saved[key]!r}; a resumed run keeps its checkpoint's settings")
        config = {**saved, **given}
        config["epochs"] = args.epochs if args.epochs is not None else saved.get("epochs", ckpt.epoch)
        if not args.eval_only and config["epochs"] < ckpt.epoch:
            parser.error(f"--epochs {config['epochs']} is fewer than the {ckpt.epoch} epoch(s) "
                         f"checkpoint {ckpt.path} has already trained")
    else:
        spec = models.get_spec(given.get("model", DEFAULT_MODEL))
        optimizer = given.get("optimizer", spec.optimizer)
        momentum = given.get("momentum", spec.momentum if optimizer == spec.optimizer else 0.0)
        if optimizer == "adam" and momentum:
            parser.error("--momentum applies to --optimizer sgd only")
        config = {"model": spec.name, "dataset": given.get("dataset", spec.dataset),
                  "loss": spec.loss, "optimizer": optimizer, "lr": given.get("lr", spec.lr),
                  "momentum": momentum, "batch_size": given.get("batch_size", spec.batch_size),
                  "epochs": args.epochs if args.epochs is not None else spec.epochs,
                  "seed": given.get("seed", 0), "train_subset": args.train_subset,
                  "test_subset": args.test_subset}
    spec = models.get_spec(config["model"])
    if DATASET_SHAPES[config["dataset"]] != tuple(spec.input_shape):
        parser.error(f"--dataset {config['dataset']} has images of shape "
                     f"{DATASET_SHAPES[config['dataset']]} but model {spec.name} takes "
                     f"{tuple(spec.input_shape)}")
    config["backend"] = args.backend
    # How the run is recorded: a resumed run keeps its own unless a flag says otherwise.
    for key, default in (("log_every", DEFAULT_LOG_EVERY), ("record_filters", None)):
        given_value = getattr(args, key)
        config[key] = given_value if given_value is not None else config.get(key, default)
    config["out"] = args.out or (config.get("out") if ckpt is not None else None) or os.path.join(
        "runs", f"{config['model']}-{config['dataset']}-{config['seed']}")
    # A resumed run goes on writing the checkpoint it resumed from.
    config["checkpoint"] = args.checkpoint or args.resume or os.path.join(config["out"], "checkpoint.npz")
    return config


# ---- data ------------------------------------------------------------------------------------
def load_loaders(config, data_dir, xp, splits=("train", "test")):
    """``{"train": ..., "val": ..., "test": ...}`` DataLoaders, the data moved to ``xp`` once."""
    name, bs = config["dataset"], config["batch_size"]
    mean, std = data.NORMALIZATION[name]
    loaders = {}
    if "train" in splits:
        images, labels = data.load_dataset(name, "train", root=data_dir)
        n = config.get("train_subset") or len(images)
        loaders["train"] = data.DataLoader(images[:n], labels[:n], batch_size=bs, shuffle=True,
                                           seed=config["seed"], mean=mean, std=std, xp=xp)
    images, labels = data.load_dataset(name, "test", root=data_dir)
    n = config.get("test_subset") or len(images)
    images, labels = images[:n], labels[:n]
    (val_x, val_y), _ = data.validation_split(images, labels, size=min(VALIDATION_SIZE, n // 2))
    loaders["val"] = data.DataLoader(val_x, val_y, batch_size=bs, mean=mean, std=std, xp=xp)
    loaders["test"] = data.DataLoader(images, labels, batch_size=bs, mean=mean, std=std, xp=xp)
    return loaders


# ---- filter recording -------------------------------------------------------------------------
class FilterRecorder:
    """Snapshots of the first convolution's weights every ``every`` steps, kept in
    ``<out>/filters.npz`` as ``steps`` (K,) and ``weights`` (K, Cout, Cin, kh, kw)."""

    def __init__(self, path, conv, every, start_step):
        self.path, self.conv, self.every = path, conv, every
        self.steps, self.weights = [], []
        if os.path.exists(path) and start_step > 0:  # a resumed run keeps what came before it
            with np.load(path, allow_pickle=False) as f:
                keep = f["steps"] <= start_step
                self.steps, self.weights = list(f["steps"][keep]), list(f["weights"][keep])
        if start_step % every == 0 and start_step not in self.steps:
            self.add(start_step)

    def add(self, step):
        self.steps.append(step)
        self.weights.append(np.array(self.conv.weight.numpy(), copy=True))

    def maybe_add(self, step):
        if step % self.every == 0:
            self.add(step)

    def save(self):
        atomic_savez(self.path, {"steps": np.asarray(self.steps, dtype=np.int64),
                                 "weights": np.stack(self.weights).astype(np.float32)})


def first_conv(model):
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


# ---- the run -----------------------------------------------------------------------------------
def _pct(x):
    return f"{100 * x:.2f}%"


class Run:
    """One training session: the model, its optimizer and data, and everything it writes."""

    def __init__(self, config, loaders, ckpt, args):
        self.config, self.loaders, self.args = config, loaders, args
        self.out, self.checkpoint_path = config["out"], config["checkpoint"]
        backends.seed_all(config["seed"])  # the initial weights
        self.model = models.get_model(config["model"])
        self.optimizer = make_optimizer(config["optimizer"], list(self.model.parameters()),
                                        config["lr"], config["momentum"])
        self.epoch, self.batch, self.step, self.partial = 0, 0, 0, None
        self.history = []
        if ckpt is not None:
            self.model.load_state_dict(ckpt.model_state)
            self.optimizer.load_state_dict(ckpt.optimizer_state)
            self.epoch, self.batch, self.step = ckpt.epoch, ckpt.batch, ckpt.step
            self.partial, self.history = ckpt.partial, list(ckpt.history)
        # (path, epoch, batch) of the newest checkpoint of this run, kept if training fails
        self.last_good = None if ckpt is None else (ckpt.path, ckpt.epoch, ckpt.batch)
        self.metrics = MetricsLog(self.out)
        self.metrics.truncate_after(self.step)
        self.filters = None
        if config["record_filters"]:
            self.filters = FilterRecorder(os.path.join(self.out, "filters.npz"),
                                          first_conv(self.model), config["record_filters"], self.step)

    def save(self, epoch, batch, step, partial=None):
        save_checkpoint(self.checkpoint_path, self.model, self.optimizer, config=self.config,
                        epoch=epoch, batch=batch, step=step, history=self.history, partial=partial)
        self.last_good = (self.checkpoint_path, epoch, batch)

    def train(self):
        """Train up to ``config["epochs"]``; exceptions of training propagate."""
        steps_per_epoch = len(self.loaders["train"])
        total = self.config["epochs"]
        while self.epoch < total:
            e = self.epoch
            bar = tqdm(total=steps_per_epoch, initial=self.batch, desc=f"epoch {e + 1}/{total}",
                       unit="batch", disable=self.args.no_progress, dynamic_ncols=True)

            def on_step(event):
                bar.update(1)
                log = event["log"]
                if log is not None:
                    bar.set_postfix(loss=f"{log['epoch_loss']:.4f}", acc=_pct(log["epoch_accuracy"]),
                                    img_s=f"{log['images_per_second']:.0f}", refresh=False)
                    self.metrics.append("step", epoch=e + 1, step=event["step"], train_loss=log["loss"],
                                        train_acc=log["accuracy"], seconds=log["seconds"],
                                        images_per_second=log["images_per_second"])
                if self.filters is not None:
                    self.filters.maybe_add(event["step"])

            try:
                stats = train_epoch(self.model, self.optimizer, self.loaders["train"],
                                    self.config["loss"], epoch=e, seed=self.config["seed"],
                                    start_batch=self.batch, totals=self.partial, on_step=on_step,
                                    log_every=self.config["log_every"])
            finally:
                bar.close()
            self.step = (e + 1) * steps_per_epoch
            self.end_epoch(e, stats)
            self.epoch, self.batch, self.partial = e + 1, 0, None
            self.save(self.epoch, 0, self.step)
            self.write_side_files()

    def end_epoch(self, e, stats):
        record = {"epoch": e + 1, "step": self.step, "train_loss": stats["loss"],
                  "train_acc": stats["accuracy"], "images": stats["images"],
                  "seconds": stats["seconds"], "images_per_second": stats["images_per_second"]}
        for split in ("val", "test"):
            loss, acc = evaluate(self.model, self.loaders[split], self.config["loss"])
            if not np.isfinite(loss):
                raise NonFiniteLossError(e, len(self.loaders["train"]) - 1, self.step, loss,
                                         what={"val": "validation", "test": "test"}[split])
            record[f"{split}_loss"], record[f"{split}_acc"] = loss, acc
        self.history.append(record)
        self.metrics.append("epoch", **{k: v for k, v in record.items() if k != "images"})
        print(f"epoch {e + 1}/{self.config['epochs']}: train loss {record['train_loss']:.4f} "
              f"acc {_pct(record['train_acc'])} | val acc {_pct(record['val_acc'])} | "
              f"test loss {record['test_loss']:.4f} acc {_pct(record['test_acc'])} | "
              f"{record['seconds']:.1f} s, {record['images_per_second']:.0f} images/s", flush=True)

    def write_side_files(self):
        if self.filters is not None and self.filters.steps:
            self.filters.save()
        if os.path.exists(self.metrics.path):
            plot_metrics(self.metrics.path, self.out,
                         title=f"{self.config['model']} on {self.config['dataset']}")

    def summary(self):
        """The final summary: the last epoch's numbers, training time over the whole run."""
        if self.history:
            last = self.history[-1]
            val, test = (last["val_loss"], last["val_acc"]), (last["test_loss"], last["test_acc"])
        else:  # nothing trained (--epochs 0): measure the model as it is
            val = evaluate(self.model, self.loaders["val"], self.config["loss"])
            test = evaluate(self.model, self.loaders["test"], self.config["loss"])
        path = self.checkpoint_path if os.path.exists(self.checkpoint_path) else None
        return make_summary(self.config, self.epoch, self.step, self.history, val, test, path)


def make_summary(config, epochs, steps, history, val, test, checkpoint):
    """The run's summary as one JSON-ready dict; ``val`` and ``test`` are (loss, accuracy)."""
    seconds = sum(r["seconds"] for r in history)
    images = sum(r["images"] for r in history)
    return {"model": config["model"], "backend": config["backend"], "dataset": config["dataset"],
            "epochs": epochs, "steps": steps, "seed": config["seed"],
            "batch_size": config["batch_size"], "optimizer": config["optimizer"],
            "lr": config["lr"], "momentum": config["momentum"],
            "test_accuracy": test[1], "test_loss": test[0], "val_accuracy": val[1], "val_loss": val[0],
            "train_seconds": seconds, "images_per_second": images / seconds if seconds else 0.0,
            "checkpoint": checkpoint, "out": config["out"]}


def print_summary(summary):
    print(f"done: {summary['model']} on {summary['dataset']} ({summary['backend']}), "
          f"{summary['epochs']} epoch(s), {summary['steps']} steps: test accuracy "
          f"{_pct(summary['test_accuracy'])}, test loss {summary['test_loss']:.4f}, "
          f"validation accuracy {_pct(summary['val_accuracy'])}; trained "
          f"{summary['train_seconds']:.1f} s at {summary['images_per_second']:.0f} images/s; "
          f"checkpoint {summary['checkpoint']}; outputs in {summary['out']}", flush=True)


def write_summary_json(path, summary):
    atomic_replace_text(path, json.dumps(summary, indent=2) + "\n")


def error(message):
    print(f"error: {message}", file=sys.stderr, flush=True)


# ---- entry points ------------------------------------------------------------------------------
def evaluate_only(config, args, ckpt, xp):
    model = models.get_model(config["model"])
    model.load_state_dict(ckpt.model_state)
    loaders = load_loaders(config, args.data_dir, xp, splits=("test",))
    val = evaluate(model, loaders["val"], config["loss"])
    test = evaluate(model, loaders["test"], config["loss"])
    summary = make_summary(config, ckpt.epoch, ckpt.step, ckpt.history, val, test, ckpt.path)
    summary["test_images"] = loaders["test"].dataset_size
    print(f"{ckpt.path}: {config['model']} after {ckpt.epoch} epoch(s) ({ckpt.step} steps) on "
          f"{config['dataset']}: validation loss {val[0]:.4f} accuracy {_pct(val[1])}; "
          f"test loss {test[0]:.4f} accuracy {_pct(test[1])} "
          f"({loaders['test'].dataset_size} images)", flush=True)
    if args.summary_json:
        write_summary_json(args.summary_json, summary)
    return 0


def train(config, args, ckpt, xp):
    loaders = load_loaders(config, args.data_dir, xp)
    run = Run(config, loaders, ckpt, args)
    n_train = loaders["train"].dataset_size
    plan = (f"epochs {run.epoch + 1}..{config['epochs']}" if run.epoch < config["epochs"]
            else f"no epoch left to train ({run.epoch} done)")
    print(f"training {config['model']} on {config['dataset']} with {config['backend']}: "
          f"{n_train} training, {loaders['val'].dataset_size} validation, "
          f"{loaders['test'].dataset_size} test images; {plan}, {len(loaders['train'])} "
          f"batches of {config['batch_size']} per epoch; {config['optimizer']} "
          f"lr {config['lr']} momentum {config['momentum']}; seed {config['seed']}; out {run.out}",
          flush=True)
    try:
        # Overflow warnings would bury the NaN/inf message that training gives itself.
        with interrupts_at_batch_boundaries(), np.errstate(over="ignore", invalid="ignore"):
            run.train()
    except TrainingInterrupted as stop:
        run.save(stop.epoch, stop.next_batch, stop.step, stop.totals if stop.next_batch else None)
        run.write_side_files()
        where = (f"after batch {stop.next_batch} of epoch {stop.epoch + 1}" if stop.next_batch
                 else f"before epoch {stop.epoch + 1}")
        print(f"\ninterrupted {where}: saved {run.checkpoint_path}\nresume with: python -m minitorch_cnn.train --resume "
              f"{run.checkpoint_path} --epochs {config['epochs']}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except NonFiniteLossError as e:
        run.write_side_files()
        kept = ("this run wrote no checkpoint" if run.last_good is None else
                "the last good checkpoint {} (epoch {}, batch {}) is kept".format(*run.last_good))
        error(f"{e}; training stopped and {kept}. Try a smaller --lr.")
        return EXIT_NONFINITE
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, mid-step, without saving
        error("interrupted twice: stopped without saving; the last checkpoint is kept")
        return EXIT_INTERRUPTED
    summary = run.summary()
    print_summary(summary)
    if args.summary_json:
        write_summary_json(args.summary_json, summary)
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eval_only and not args.resume:
        parser.error("--eval-only needs --resume PATH (the checkpoint to evaluate)")
    ckpt = None
    if args.resume:
        try:
            ckpt = load_checkpoint(args.resume)
        except (FileNotFoundError, CheckpointError) as e:
            parser.error(f"--resume: {e}")
    config = resolve_config(args, parser, ckpt)
    if config["record_filters"] and first_conv(models.get_model(config["model"])) is None:
        parser.error(f"--record-filters: model {config['model']} has no Conv2d layer")
    if args.threads:
        backends.set_num_threads(args.threads)
    try:
        backend = backends.use_backend(config["backend"])
    except backends.BackendUnavailable as e:
        error(f"backend {config['backend']!r} is unavailable: {e}")
        return EXIT_USAGE
    try:
        if args.eval_only:
            return evaluate_only(config, args, ckpt, backend.xp)
        return train(config, args, ckpt, backend.xp)
    except data.DatasetNotFoundError as e:
        error(str(e))
        return EXIT_FAILURE
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading data, say)
        error("interrupted")
        return EXIT_INTERRUPTED
    except MemoryError as e:
        error(f"out of memory ({type(e).__name__}: {e}) with --batch-size {config['batch_size']}; "
              "try a smaller --batch-size")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
