"""``python -m minitorch_cnn.train``: train a zoo model on a real dataset, with progress
bars, metrics (CSV and PNG plots), atomic checkpoints (the last and the best), exact
resumption and a JSON summary.

Exit status: 0 done; 1 the run failed (a NaN/inf loss, a full disk, out of memory, data
found nowhere); 2 unusable input, said in one line before any training: bad flags, a data
file or --data-dir, a checkpoint, an output that cannot be written, an unavailable
backend; 130 interrupted by Ctrl-C, 143 by SIGTERM (both save a checkpoint of the last
finished batch first).

With --distributed, under an MPI launcher (``mpiexec -n N python -m mpi4py -m
minitorch_cnn.train --distributed ...``), N processes train one model on shares of each
global batch (docs/distributed.md); SIGUSR1, which Open MPI's mpiexec forwards, stops it
as SIGTERM does, with status 138.
"""
import argparse
import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import sys

import numpy as np
from tqdm import tqdm

from . import __version__, backends, data, distributed, models, nn
from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .files import atomic_replace_text, atomic_savez, atomic_write, check_writable
from .metrics import CSV_NAME, ERROR_PNG, LOSS_PNG, MetricsLog, plot_metrics
from .training import (PARALLEL_STOP_SIGNALS, STOP_SIGNALS, NonFiniteLossError, TrainingInterrupted,
                       evaluate, interrupts_at_batch_boundaries, make_optimizer, train_epoch)

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
# What a checkpoint's config must hold for a run to continue or be evaluated.
CHECKPOINT_CONFIG = ("model", "dataset", "loss", "optimizer", "lr", "momentum", "batch_size", "seed")
CHECKPOINT_NAME, BEST_NAME, FILTERS_NAME = "checkpoint.npz", "best.npz", "filters.npz"
# The files that make a folder hold a run (a fresh run refuses to write over them), and
# every file a run writes there (what --overwrite replaces).
RUN_FILES = (CHECKPOINT_NAME, BEST_NAME, CSV_NAME)
OUTPUT_FILES = RUN_FILES + (FILTERS_NAME, LOSS_PNG, ERROR_PNG)
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USR1 = 1, 2, 130, 143, 138
EXIT_FOR_SIGNAL = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED,
                   signal.SIGUSR1: EXIT_USR1}
SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGUSR1: "SIGUSR1"}  # else Ctrl-C


class UnusableInput(Exception):
    """Input the run cannot use (a data file, a checkpoint, an output path): the message
    is one line naming it, and the command exits with status 2 before training."""


class OutputFailed(Exception):
    """Writing an output failed during the run (a full disk, say): one line naming it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop, handled as Ctrl-C is."""


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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message, and where to read more."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    p = _Parser(
        prog="python -m minitorch_cnn.train",
        description="Train a model of the zoo (minitorch_cnn.models) on MNIST, Fashion-MNIST or "
                    "CIFAR-10. Without flags: %s on Fashion-MNIST with NumPy, with the model's "
                    "own defaults. Unset hyper-parameters come from the model's ModelSpec; a "
                    "resumed run takes them from its checkpoint." % DEFAULT_MODEL,
        epilog="Outputs in --out: metrics.csv (a row per logging step and per epoch), loss.png, "
               "error.png, checkpoint.npz (after every epoch, on Ctrl-C and on SIGTERM) and "
               "best.npz (the epoch of best validation accuracy). A fresh run never writes over "
               "a folder that holds a run unless --overwrite. Exit status: 0 done, 1 the run "
               "failed (NaN/inf loss, full disk, out of memory), 2 unusable input (flags, data, "
               "checkpoint, outputs, backend; said before training), 130 interrupted by Ctrl-C, "
               "143 by SIGTERM.")
    p.add_argument("--version", action="version", version=f"minitorch_cnn {__version__}")
    p.add_argument("--list-models", action="store_true",
                   help="list the zoo: name, parameters, dataset, optimizer and learning rate, "
                        "the tutorial it comes from; then exit")
    p.add_argument("--backend", choices=("numpy", "numpy-reference", "cupy", "auto"), default="numpy",
                   help="array backend: numpy (CPU), numpy-reference (CPU, the plain reference "
                        "bodies alone: slower, the same accuracy), cupy (NVIDIA GPU) or auto (cupy "
                        "where usable, else numpy, saying which) (default: numpy)")
    p.add_argument("--threads", type=_number(int, 1), default=None, metavar="N",
                   help="CPU threads for the numpy backend (default: every core this process "
                        "may use, or a resumed run's own count, which keeps it bit-identical to "
                        "an uninterrupted run; see README, Speed)")
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
                   help="folder holding the dataset files, the only place they are read from "
                        "(default: a resumed run's own, else searched for, see "
                        "minitorch_cnn.data.load_dataset, and downloaded if missing)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/<model>-<dataset>-<seed>, with -1, -2, ... "
                        "appended while that holds a run; a resumed run writes beside its "
                        "checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="let a fresh run replace the run in --out (by default it refuses)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint path to write (default: <out>/checkpoint.npz, or the "
                        "--resume checkpoint)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue the run saved in this checkpoint, up to --epochs in total; "
                        "ends with the parameters an uninterrupted run would have")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="start a new run from this checkpoint's weights, with hyper-parameters "
                        "from the flags (else the model's defaults): fine-tuning, or the way "
                        "on after a NaN stop with a smaller --lr")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the --resume checkpoint (checkpoint.npz or best.npz) on the "
                        "validation and test sets; no training")
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
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training in every process that an MPI launcher started: "
                        "mpiexec -n N python -m mpi4py -m minitorch_cnn.train --distributed ... "
                        "(or srun --mpi=pmix). --batch-size stays the global batch, so the run "
                        "gives the same model at any N; rank 0 alone prints and writes. Stop it "
                        "with kill -USR1 <mpiexec's pid> (exit 138). See docs/distributed.md")
    return p


def resolve_config(args, parser, ckpt=None, init=None):
    """The run's settings: flags, else the checkpoint's (resuming), else the ModelSpec's.
    ``init`` (--init-from) gives the model and dataset of a fresh run, nothing else."""
    given = {key: getattr(args, key) for key in RESUME_FIXED if getattr(args, key) is not None}
    if init is not None:
        if given.get("model", init.config["model"]) != init.config["model"]:
            parser.error(f"--model {given['model']} differs from the model of --init-from "
                         f"checkpoint {init.path} ({init.config['model']!r})")
        given.setdefault("model", init.config["model"])
        given.setdefault("dataset", init.config["dataset"])
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
    config["init_from"] = os.path.abspath(init.path) if init is not None else config.get("init_from")
    # The data folder a run was given stays its data folder when it is resumed.
    config["data_dir"] = os.path.abspath(args.data_dir) if args.data_dir else config.get("data_dir")
    # How the run is recorded: a resumed run keeps its own unless a flag says otherwise.
    for key, default in (("log_every", DEFAULT_LOG_EVERY), ("record_filters", None)):
        given_value = getattr(args, key)
        config[key] = given_value if given_value is not None else config.get(key, default)
    # A resumed run writes beside the checkpoint it was given (or to --out), never to the
    # folder recorded inside it: that may be another copy of the run, or relative to
    # another directory.
    if ckpt is not None:
        config["out"] = args.out or os.path.dirname(os.path.abspath(ckpt.path))
        config["checkpoint"] = args.checkpoint or (
            os.path.join(args.out, CHECKPOINT_NAME) if args.out else ckpt.path)
    else:
        config["out"] = args.out or os.path.join(
            "runs", f"{config['model']}-{config['dataset']}-{config['seed']}")
        config["checkpoint"] = args.checkpoint or os.path.join(config["out"], CHECKPOINT_NAME)
    return config


# ---- where the outputs go ------------------------------------------------------------------------
def holds_run(folder, checkpoint=None):
    """Whether ``folder`` (or the ``checkpoint`` path) holds the outputs of a run."""
    return (checkpoint is not None and os.path.isfile(checkpoint)) or any(
        os.path.isfile(os.path.join(folder, name)) for name in RUN_FILES)


def place_outputs(config, args, ckpt):
    """Make ``config``'s out and checkpoint absolute, never over another run: a fresh run
    into a folder holding one refuses (UnusableInput) unless --overwrite, which removes
    that run's files; a default --out holding one moves on to <out>-1, -2, ... A resumed
    run may write into its own checkpoint's folder, unless it resumes that folder's best
    checkpoint, which would go on over both. Then check every output writable."""
    out, checkpoint = os.path.abspath(config["out"]), os.path.abspath(config["checkpoint"])
    continuing = ckpt is not None and out == os.path.dirname(os.path.abspath(ckpt.path))
    if continuing and os.path.basename(ckpt.path) == BEST_NAME:
        raise UnusableInput(f"--resume {ckpt.path}: training on from a run's best checkpoint "
                            "would write over that run's checkpoints; give --out NEW_FOLDER, or "
                            "--init-from it to start a new run from its weights")
    if not continuing and holds_run(out, checkpoint):
        if args.overwrite:
            for name in OUTPUT_FILES:
                if os.path.isfile(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
            if os.path.isfile(checkpoint):
                os.remove(checkpoint)
        elif args.out is None and args.checkpoint is None:
            taken, suffix = out, 1
            while holds_run(f"{taken}-{suffix}"):
                suffix += 1
            out = f"{taken}-{suffix}"
            checkpoint = os.path.join(out, CHECKPOINT_NAME)
            print(f"{taken} holds a run already: this one goes to {out}", flush=True)
        else:
            raise UnusableInput(f"{out if holds_run(out) else checkpoint} holds a run already; "
                                "pass --overwrite to replace it, --resume its checkpoint to "
                                "continue it, or another --out")
    config["out"], config["checkpoint"] = out, checkpoint
    check_outputs({"checkpoint": checkpoint, "best checkpoint": os.path.join(out, BEST_NAME),
                   "metrics": os.path.join(out, CSV_NAME), "--summary-json": args.summary_json})


def check_outputs(outputs):
    """UnusableInput naming the first of ``outputs`` (what -> path or None) that cannot be
    written: found before training, not after it."""
    for what, path in outputs.items():
        if path is not None:
            try:
                check_writable(path)
            except OSError as e:
                raise UnusableInput(f"cannot write the {what} {os.path.abspath(path)}: {e}") from None


# ---- data ------------------------------------------------------------------------------------
def _one_line(error):
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror or error}"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def read_split(dataset, split, data_dir, files):
    """A split's (images, labels), read from the files it names; each file read is added
    to ``files`` (absolute path -> SHA-256, hashed once). Unusable data raises UnusableInput."""
    try:
        paths = data.dataset_files(dataset, split, root=data_dir, download=data_dir is None)
        for path in paths:
            path = os.path.abspath(path)
            if path not in files:
                files[path] = data.sha256_file(path)
        images, labels = data.read_dataset_files(dataset, split, paths)
    except data.DataFolderError as e:
        raise UnusableInput(f"--data-dir: {e}") from None
    except (ValueError, OSError) as e:  # a malformed or unreadable data file, named
        raise UnusableInput(_one_line(e)) from None
    minimum = 2 if split == "test" else 1  # the test split also gives the validation set
    if len(images) < minimum:
        raise UnusableInput(f"{os.path.abspath(paths[0])} holds {len(images)} image(s); the "
                            f"{split} split needs at least {minimum}")
    return images, labels


def load_loaders(config, data_dir, xp, splits=("train", "test"), files=None, group=None):
    """``{"train": ..., "val": ..., "test": ...}`` DataLoaders, the data moved to ``xp``
    once; the files read are added to ``files`` (absolute path -> SHA-256) if given. With
    the ProcessGroup ``group`` of a --distributed run, the training loader gives this
    process its share of every global batch."""
    name, bs = config["dataset"], config["batch_size"]
    mean, std = data.NORMALIZATION[name]
    loaders, files = {}, {} if files is None else files
    if "train" in splits:
        images, labels = read_split(name, "train", data_dir, files)
        n = config.get("train_subset") or len(images)
        shard = {} if group is None else {"num_replicas": group.size, "rank": group.rank}
        try:
            loaders["train"] = data.DataLoader(images[:n], labels[:n], batch_size=bs, shuffle=True,
                                               seed=config["seed"], mean=mean, std=std, xp=xp, **shard)
        except ValueError:  # a global batch too small to give every process a row
            raise UnusableInput(f"--batch-size {bs} splits the {min(n, len(images))} training images "
                                f"into batches the last of which has {min(n, len(images)) % bs or bs}: "
                                f"fewer than the {group.size} processes; choose another "
                                "--batch-size or --train-subset") from None
    images, labels = read_split(name, "test", data_dir, files)
    n = config.get("test_subset") or len(images)
    images, labels = images[:n], labels[:n]
    (val_x, val_y), _ = data.validation_split(images, labels, size=min(VALIDATION_SIZE, n // 2))
    loaders["val"] = data.DataLoader(val_x, val_y, batch_size=bs, mean=mean, std=std, xp=xp)
    loaders["test"] = data.DataLoader(images, labels, batch_size=bs, mean=mean, std=std, xp=xp)
    return loaders


def load_run_data(config, xp, splits=("train", "test"), group=None):
    """:func:`load_loaders` from the run's data folder; prints and records in ``config``
    (``data_files``: ``path`` and ``sha256`` of each) the files read."""
    files = {}
    loaders = load_loaders(config, config["data_dir"], xp, splits, files, group)
    for path, digest in files.items():
        print(f"data: {path} sha256 {digest}", flush=True)
    config["data_files"] = [{"path": path, "sha256": digest} for path, digest in files.items()]
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


def build_model(config, parallel=False):
    """The run's model, fresh from the zoo, each BatchNorm2d -> ReLU (-> MaxPool2d) fused
    into one nn.BatchNormReLU2d (the same numbers, faster): the one place a run builds it.
    In a data-parallel run each BatchNorm2d becomes an nn.SyncBatchNorm instead, which
    normalises with the global batch's statistics, so the model does not depend on the
    number of processes (the state_dict keys are the same either way)."""
    model = models.get_model(config["model"])
    if parallel:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.fuse_modules(model, inplace=True)


def fusion_note(model):
    """What ``build_model`` fused, for the run's first line."""
    fused = sum(isinstance(m, nn.BatchNormReLU2d) for m in model.modules())
    return f"; {fused} BatchNorm2d+ReLU(+MaxPool2d) fused as nn.BatchNormReLU2d" if fused else ""


@contextlib.contextmanager
def _writing(what):
    """Turn an OSError of writing ``what`` (a path, or words naming the files) into
    OutputFailed naming it: a full disk, say, is one line, not a traceback."""
    try:
        yield
    except OSError as e:
        raise OutputFailed(f"cannot write {what}: {e.strerror or e}") from None


class Run:
    """One training session: the model, its optimizer and data, and everything it writes.
    ``ckpt`` is the checkpoint a resumed run continues; ``init`` the one whose weights
    start a fresh run (--init-from). In a --distributed run (``group``), every process
    trains and only rank 0 writes; :meth:`distribute` wraps the model for training."""

    def __init__(self, config, loaders, args, ckpt=None, init=None, group=None):
        self.config, self.loaders, self.args = config, loaders, args
        self.out, self.checkpoint_path = config["out"], config["checkpoint"]
        self.best_path = os.path.join(self.out, BEST_NAME)
        self.writes = group is None or group.rank == 0
        backends.seed_all(config["seed"])  # the initial weights
        self.model = build_model(config, parallel=group is not None)
        self.net = self.model  # what trains and evaluates: the model, or its DistributedDataParallel
        self.optimizer = make_optimizer(config["optimizer"], list(self.model.parameters()),
                                        config["lr"], config["momentum"])
        self.epoch, self.batch, self.step, self.partial = 0, 0, 0, None
        self.history, self.best = [], None
        if init is not None:
            load_weights(init, self.model)
        if ckpt is not None:
            load_weights(ckpt, self.model, self.optimizer)
            self.epoch, self.batch, self.step = ckpt.epoch, ckpt.batch, ckpt.step
            self.partial, self.history, self.best = ckpt.partial, list(ckpt.history), ckpt.best
        # (path, epoch, batch) of the newest checkpoint of this run, kept if training fails
        self.last_good = None if ckpt is None else (os.path.abspath(ckpt.path), ckpt.epoch, ckpt.batch)
        if ckpt is not None:
            if self.writes:
                self.carry_records(os.path.dirname(os.path.abspath(ckpt.path)))
            if self.best is not None:  # the run's best checkpoint is the one in its folder
                self.best = {**self.best, "path": self.best_path if os.path.isfile(self.best_path)
                             else None}
        self.metrics = None
        if self.writes:
            with _writing(os.path.join(self.out, CSV_NAME)):
                self.metrics = MetricsLog(self.out)
                self.metrics.truncate_after(self.step)
        self.filters = None
        if config["record_filters"] and self.writes:
            self.filters = FilterRecorder(os.path.join(self.out, FILTERS_NAME),
                                          first_conv(self.model), config["record_filters"], self.step)

    def carry_records(self, source):
        """A run resumed into another folder starts there with its metrics, filter records
        and best checkpoint so far (metrics rows after its checkpoint are dropped below), so
        the new folder holds the whole run."""
        for name in (CSV_NAME, FILTERS_NAME, BEST_NAME):
            origin, copy = os.path.join(source, name), os.path.join(self.out, name)
            if source != self.out and os.path.isfile(origin) and not os.path.exists(copy):
                with open(origin, "rb") as f, _writing(copy):
                    atomic_write(copy, lambda out: shutil.copyfileobj(f, out))

    def distribute(self):
        """Train from here on as one of the processes of a --distributed run."""
        self.net = nn.parallel.DistributedDataParallel(self.model)

    def save(self, epoch, batch, step, partial=None, path=None):
        if not self.writes:
            return
        path = path or self.checkpoint_path
        with _writing(path):
            save_checkpoint(path, self.model, self.optimizer, config=self.config, epoch=epoch,
                            batch=batch, step=step, history=self.history, partial=partial,
                            best=self.best)
        if path == self.checkpoint_path:
            self.last_good = (path, epoch, batch)

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
                if log is not None and self.writes:
                    bar.set_postfix(loss=f"{log['epoch_loss']:.4f}", acc=_pct(log["epoch_accuracy"]),
                                    img_s=f"{log['images_per_second']:.0f}", refresh=False)
                    with _writing(self.metrics.path):
                        self.metrics.append("step", epoch=e + 1, step=event["step"],
                                            train_loss=log["loss"], train_acc=log["accuracy"],
                                            seconds=log["seconds"],
                                            images_per_second=log["images_per_second"])
                if self.filters is not None:
                    self.filters.maybe_add(event["step"])

            try:
                stats = train_epoch(self.net, self.optimizer, self.loaders["train"],
                                    self.config["loss"], epoch=e, seed=self.config["seed"],
                                    start_batch=self.batch, totals=self.partial, on_step=on_step,
                                    log_every=self.config["log_every"])
            finally:
                bar.close()
            self.step = (e + 1) * steps_per_epoch
            self.end_epoch(e, stats)
            self.epoch, self.batch, self.partial = e + 1, 0, None
            record = self.history[-1]
            if self.best is None or record["val_acc"] > self.best["val_acc"]:
                self.best = {"epoch": self.epoch, "val_acc": record["val_acc"],
                             "path": self.best_path}
                self.save(self.epoch, 0, self.step, path=self.best_path)
            self.save(self.epoch, 0, self.step)
            self.write_side_files()

    def end_epoch(self, e, stats):
        record = {"epoch": e + 1, "step": self.step, "train_loss": stats["loss"],
                  "train_acc": stats["accuracy"], "images": stats["images"],
                  "seconds": stats["seconds"], "images_per_second": stats["images_per_second"]}
        for split in ("val", "test"):
            loss, acc = evaluate(self.net, self.loaders[split], self.config["loss"])
            if not np.isfinite(loss):
                raise NonFiniteLossError(e, len(self.loaders["train"]) - 1, self.step, loss,
                                         what={"val": "validation", "test": "test"}[split])
            record[f"{split}_loss"], record[f"{split}_acc"] = loss, acc
        self.history.append(record)
        if self.writes:
            with _writing(self.metrics.path):
                self.metrics.append("epoch", **{k: v for k, v in record.items() if k != "images"})
        print(f"epoch {e + 1}/{self.config['epochs']}: train loss {record['train_loss']:.4f} "
              f"acc {_pct(record['train_acc'])} | val acc {_pct(record['val_acc'])} | "
              f"test loss {record['test_loss']:.4f} acc {_pct(record['test_acc'])} | "
              f"{record['seconds']:.1f} s, {record['images_per_second']:.0f} images/s", flush=True)

    def write_side_files(self):
        if not self.writes:
            return
        if self.filters is not None and self.filters.steps:
            with _writing(self.filters.path):
                self.filters.save()
        if os.path.exists(self.metrics.path):
            with _writing(f"the plots {LOSS_PNG} and {ERROR_PNG} in {self.out}"):
                plot_metrics(self.metrics.path, self.out,
                             title=f"{self.config['model']} on {self.config['dataset']}")

    def summary(self):
        """The final summary: the last epoch's numbers, training time over the whole run."""
        if self.history:
            last = self.history[-1]
            val, test = (last["val_loss"], last["val_acc"]), (last["test_loss"], last["test_acc"])
        else:  # nothing trained (--epochs 0): measure the model as it is
            val = evaluate(self.net, self.loaders["val"], self.config["loss"])
            test = evaluate(self.net, self.loaders["test"], self.config["loss"])
        path = self.checkpoint_path if os.path.exists(self.checkpoint_path) else None
        return make_summary(self.config, self.epoch, self.step, self.history, val, test, path,
                            self.best)


def make_summary(config, epochs, steps, history, val, test, checkpoint, best=None):
    """The run's summary as one JSON-ready dict; ``val`` and ``test`` are (loss, accuracy);
    paths are absolute."""
    seconds = sum(r["seconds"] for r in history)
    images = sum(r["images"] for r in history)
    best = best or {}
    return {"model": config["model"], "backend": config["backend"], "dataset": config["dataset"],
            "epochs": epochs, "steps": steps, "seed": config["seed"],
            "batch_size": config["batch_size"], "optimizer": config["optimizer"],
            "lr": config["lr"], "momentum": config["momentum"], "threads": config.get("threads"),
            "test_accuracy": test[1], "test_loss": test[0], "val_accuracy": val[1], "val_loss": val[0],
            "train_seconds": seconds, "images_per_second": images / seconds if seconds else 0.0,
            "checkpoint": checkpoint and os.path.abspath(checkpoint),
            "best_checkpoint": best.get("path"), "best_epoch": best.get("epoch"),
            "best_val_accuracy": best.get("val_acc"), "init_from": config.get("init_from"),
            "out": config["out"] and os.path.abspath(config["out"]),
            "data_files": config.get("data_files", [])}


def print_summary(summary):
    best = ("" if summary["best_checkpoint"] is None else
            f"; best checkpoint {summary['best_checkpoint']} (epoch {summary['best_epoch']}, "
            f"validation accuracy {_pct(summary['best_val_accuracy'])})")
    print(f"done: {summary['model']} on {summary['dataset']} ({summary['backend']}), "
          f"{summary['epochs']} epoch(s), {summary['steps']} steps: test accuracy "
          f"{_pct(summary['test_accuracy'])}, test loss {summary['test_loss']:.4f}, "
          f"validation accuracy {_pct(summary['val_accuracy'])}; trained "
          f"{summary['train_seconds']:.1f} s at {summary['images_per_second']:.0f} images/s; "
          f"last checkpoint {summary['checkpoint']}{best}; outputs in {summary['out']}", flush=True)


def write_summary_json(path, summary):
    with _writing(os.path.abspath(path)):
        atomic_replace_text(path, json.dumps(summary, indent=2) + "\n")


def error(message):
    print(f"error: {message}", file=sys.stderr, flush=True)


# ---- entry points ------------------------------------------------------------------------------
def list_models():
    width = max(len("model"), *map(len, models.MODELS)) + 2
    print(f"{'model':<{width}}{'parameters':>11}  {'dataset':<14}{'optimizer, lr':<16}tutorial")
    for name, spec in models.MODELS.items():
        count = sum(int(np.prod(p.shape)) for p in models.get_model(name).parameters())
        print(f"{name:<{width}}{count:>11,}  {spec.dataset:<14}{f'{spec.optimizer} {spec.lr:g}':<16}"
              f"{spec.tutorial}")
    return 0


def choose_backend(name):
    """The backend called ``name``; "auto" is CuPy where it is usable, else NumPy (saying
    which). BackendUnavailable propagates for a named backend."""
    if name != "auto":
        return backends.use_backend(name)
    try:
        backend = backends.use_backend("cupy")
        print("backend auto: cupy (GPU)", flush=True)
    except backends.BackendUnavailable as e:
        backend = backends.use_backend("numpy")
        print(f"backend auto: numpy (CPU); cupy is unusable here: {e}", flush=True)
    return backend


def set_threads(config, args, ckpt):
    """The NumPy backend's thread count: --threads, else a resumed run's own (a count
    changes the rounding of the products, so keeping it keeps a resumed run bit-identical
    to an uninterrupted one), else the default; a resumed run told to use another count
    says so."""
    saved = (ckpt.config.get("threads") if ckpt is not None and config["backend"] == "numpy"
             and ckpt.config.get("backend") == "numpy" else None)
    threads = args.threads or saved
    if threads:
        backends.set_num_threads(threads)
    config["threads"] = backends.get_num_threads() if config["backend"] == "numpy" else None
    if saved and config["threads"] != saved and not args.eval_only:
        print(f"note: checkpoint {ckpt.path} was trained with {saved} thread(s) and goes on "
              f"with {config['threads']}: the products round differently, so the result will not "
              "be bit-identical to an uninterrupted run", flush=True)


def evaluate_only(config, args, ckpt, xp):
    model = build_model(config)
    load_weights(ckpt, model)
    loaders = load_run_data(config, xp, splits=("test",))
    val = evaluate(model, loaders["val"], config["loss"])
    test = evaluate(model, loaders["test"], config["loss"])
    summary = make_summary(config, ckpt.epoch, ckpt.step, ckpt.history, val, test, ckpt.path,
                           ckpt.best)
    summary["test_images"] = loaders["test"].dataset_size
    print(f"{ckpt.path}: {config['model']} after {ckpt.epoch} epoch(s) ({ckpt.step} steps) on "
          f"{config['dataset']}: validation loss {val[0]:.4f} accuracy {_pct(val[1])}; "
          f"test loss {test[0]:.4f} accuracy {_pct(test[1])} "
          f"({loaders['test'].dataset_size} images)", flush=True)
    if args.summary_json:
        write_summary_json(args.summary_json, summary)
    return 0


def _kept(run):
    return ("this run wrote no checkpoint" if run.last_good is None else
            "the last good checkpoint {} (epoch {}, batch {}) is kept".format(*run.last_good))


def announce(config, loaders, run, init, group):
    """The run's first line: what trains on what, where, and how."""
    n_train = loaders["train"].dataset_size
    plan = (f"epochs {run.epoch + 1}..{config['epochs']}" if run.epoch < config["epochs"]
            else f"no epoch left to train ({run.epoch} done)")
    threads = f"{config['threads']} thread(s)" if config["threads"] else ""
    if group is not None:
        threads = f"{group.size} process{'es' * (group.size > 1)}" + (f" x {threads}" if threads else "")
    threads = f", {threads}" if threads else ""
    start = f"; weights from {config['init_from']}" if init is not None else ""
    print(f"training {config['model']} on {config['dataset']} with {config['backend']}{threads}: "
          f"{n_train} training, {loaders['val'].dataset_size} validation, "
          f"{loaders['test'].dataset_size} test images; {plan}, {len(loaders['train'])} "
          f"batches of {config['batch_size']} per epoch; {config['optimizer']} "
          f"lr {config['lr']} momentum {config['momentum']}; seed {config['seed']}{start}"
          f"{fusion_note(run.model)}; out {run.out}", flush=True)


def train(config, args, ckpt, init, xp, group=None):
    loaders = load_run_data(config, xp, group=group)
    if ckpt is not None and ckpt.config.get("data_files") not in (None, config["data_files"]):
        print(f"note: the data files differ from those checkpoint {ckpt.path} was trained on "
              "(paths or SHA-256 above)", flush=True)
    run = Run(config, loaders, args, ckpt=ckpt, init=init, group=group)
    signals = STOP_SIGNALS if group is None else PARALLEL_STOP_SIGNALS
    try:
        try:
            # Overflow warnings would bury the NaN/inf message that training gives itself.
            with interrupts_at_batch_boundaries(signals), np.errstate(over="ignore", invalid="ignore"):
                if group is not None:  # (a stop signal from here on waits for a step's end)
                    group.ready()  # every process is, or none trains
                    run.distribute()
                announce(config, loaders, run, init, group)
                run.train()
        except TrainingInterrupted as stop:
            run.save(stop.epoch, stop.next_batch, stop.step, stop.totals if stop.next_batch else None)
            run.write_side_files()
            where = (f"after batch {stop.next_batch} of epoch {stop.epoch + 1}" if stop.next_batch
                     else f"before epoch {stop.epoch + 1}")
            by = SIGNAL_NAMES.get(stop.signum, "Ctrl-C")
            command = ("python -m minitorch_cnn.train" if group is None else
                       f"mpiexec -n {group.size} python -m mpi4py -m minitorch_cnn.train --distributed")
            print(f"\ninterrupted by {by} {where}: saved {run.checkpoint_path}\nresume with: "
                  f"{command} --resume {run.checkpoint_path} --epochs {config['epochs']}",
                  file=sys.stderr, flush=True)
            return _together(group, EXIT_FOR_SIGNAL.get(stop.signum, EXIT_INTERRUPTED))
    except NonFiniteLossError as e:
        run.write_side_files()
        if run.last_good is None:
            advice = f"start again with a smaller learning rate, e.g. --lr {config['lr'] / 10:g}"
        else:
            advice = (f"to go on from it with a smaller learning rate: python -m minitorch_cnn.train "
                      f"--init-from {run.last_good[0]} --lr {config['lr'] / 10:g}")
        error(f"{e}; training stopped and {_kept(run)}; {advice}")
        return _together(group, EXIT_FAILURE)
    except OutputFailed as e:
        error(f"{e}; training stopped and {_kept(run)}")
        return EXIT_FAILURE
    except KeyboardInterrupt:  # a second signal: stop now, mid-step, without saving
        error("interrupted twice: stopped without saving; the last checkpoint is kept")
        return EXIT_INTERRUPTED
    summary = run.summary()
    print_summary(summary)
    if args.summary_json and run.writes:
        write_summary_json(args.summary_json, summary)
    return _together(group, 0)


def _read_checkpoint(flag, path, parser):
    try:
        ckpt = load_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as e:
        parser.error(f"{flag}: {e}")
    missing = [key for key in CHECKPOINT_CONFIG if key not in ckpt.config]
    if missing:
        parser.error(f"{flag}: checkpoint {path}: its config lacks {', '.join(map(repr, missing))}")
    if ckpt.config["model"] not in models.MODELS:
        parser.error(f"{flag}: checkpoint {path} holds an unknown model {ckpt.config['model']!r}")
    if ckpt.config["dataset"] not in data.DATASETS:
        parser.error(f"{flag}: checkpoint {path} names an unknown dataset {ckpt.config['dataset']!r}")
    return ckpt


def _terminate(signum, frame):
    raise Terminated


# ---- data-parallel runs (--distributed) ------------------------------------------------------
class PeerFailed(Exception):
    """Another process of a --distributed run could not start training (and said why)."""

    def __init__(self, code):
        super().__init__(f"another process exited with status {code}")
        self.code = code


class ProcessGroup:
    """The processes of a --distributed run, as the command uses them.

    Each process prepares on its own (flags, data, model; only rank 0 places and writes
    outputs) and may fail alone: :meth:`ready` then holds every process until all are
    ready, or ends them all with the first failing rank's status and message. Once
    training runs, every stop is decided from numbers summed over the processes (the
    end, a stop signal, a NaN loss), so all end after the same step; a failure of one
    process alone (a full disk at rank 0's checkpoint, a second Ctrl-C) aborts the job
    through MPI, never leaving the others waiting. Ranks other than 0 stay quiet: their
    output is dropped, and their errors are shown only when they end the run."""

    def __init__(self, backend):
        distributed.init_process_group("nccl" if backend == "cupy" else "mpi")
        comm = distributed.get_communicator()
        self.mpi = getattr(comm, "world", comm)  # the MPI communicator, also under NCCL's
        self.rank, self.size = comm.rank, comm.size
        self.agreed = self.together = False
        self.stderr = sys.stderr
        if self.rank:
            sys.stdout, sys.stderr = open(os.devnull, "w"), io.StringIO()

    def ready(self):
        """Return once every process is ready to train; PeerFailed if one is not."""
        code = self._agree(0)
        if code:
            raise PeerFailed(code)

    def _agree(self, code):
        """Every process's status (0: ready) in one all-reduce; the first failing rank's
        status, that rank showing its held errors."""
        codes = np.zeros(self.size, dtype=np.int64)
        codes[self.rank] = code
        self.mpi.all_reduce(codes, "max")
        self.agreed = True
        failed = np.flatnonzero(codes)
        if failed.size and failed[0] == self.rank:
            self.show_errors()
        return int(codes[failed[0]]) if failed.size else 0

    def show_errors(self):
        """Let this process's held error output through, and what follows it."""
        if sys.stderr is not self.stderr:
            held, sys.stderr = sys.stderr.getvalue(), self.stderr
            sys.stderr.write(held)
            sys.stderr.flush()

    def finish(self, code):
        """This process's exit status ``code`` once the command is done with it: before
        training, tell the others (all end with the first failure's status); after an
        ending all processes reached together, wait until rank 0 has written everything;
        otherwise end the whole job now."""
        if not self.agreed:
            return self._agree(code)
        if self.together:
            self.mpi.barrier()
            return code
        self.show_errors()
        sys.stdout.flush()
        self.mpi.comm.Abort(code or EXIT_FAILURE)


def _together(group, code):
    """``code`` ends a run at the same step in every process (``group``: None outside
    --distributed)."""
    if group is not None:
        group.together = True
    return code


class _Unreadable(Exception):
    pass


class _FirstParser(argparse.ArgumentParser):
    def error(self, message):
        raise _Unreadable(message)


def _asks_for_group(argv):
    """--distributed and --backend, read before the other flags so that the processes
    join first: a usage error is then said once, by rank 0, and ends every process.
    A command line this cannot read is left to the full parser's error."""
    first = _FirstParser(add_help=False)
    first.add_argument("--distributed", action="store_true")
    first.add_argument("--backend")
    try:
        return first.parse_known_args(argv)[0]
    except _Unreadable:
        return argparse.Namespace(distributed=False, backend=None)


def main(argv=None):
    parser = build_parser()
    first = _asks_for_group(argv)
    if not first.distributed:
        args = parser.parse_args(argv)
        if args.list_models:
            return list_models()
        return _main(args, parser)
    if importlib.util.find_spec("mpi4py") is None:
        parser.error("--distributed needs mpi4py and an MPI: pip install -e '.[mpi]' on a machine "
                     "with one, or '.[mpi-local]' for Open MPI from PyPI")
    group = ProcessGroup(first.backend)
    try:
        args = parser.parse_args(argv)
        if args.eval_only:
            parser.error("--eval-only evaluates in one process: leave out --distributed")
        if args.backend == "auto":
            parser.error("--distributed needs --backend numpy or cupy (every process must use the same)")
        if group.rank:
            args.no_progress = True
        code = list_models() if args.list_models else _main(args, parser, group)
    except SystemExit as e:  # a usage error (argparse's exit), found in every process alike
        code = int(e.code or 0)
    except PeerFailed as e:
        return e.code
    except BaseException:  # its traceback, then MPI's abort (init_process_group's hook)
        group.show_errors()
        raise
    return group.finish(code)


def _main(args, parser, group=None):
    if args.eval_only and not args.resume:
        parser.error("--eval-only needs --resume PATH (the checkpoint to evaluate)")
    if args.init_from and args.resume:
        parser.error("--init-from starts a new run and --resume continues one: give one of them")
    ckpt = _read_checkpoint("--resume", args.resume, parser) if args.resume else None
    init = _read_checkpoint("--init-from", args.init_from, parser) if args.init_from else None
    config = resolve_config(args, parser, ckpt, init)
    if config["record_filters"] and first_conv(build_model(config)) is None:
        parser.error(f"--record-filters: model {config['model']} has no Conv2d layer")
    try:
        previous_sigterm = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        previous_sigterm = None
    try:
        return _run(config, args, ckpt, init, group)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _run(config, args, ckpt, init, group=None):
    try:
        try:
            backend = choose_backend(config["backend"])
        except backends.BackendUnavailable as e:
            error(f"backend {config['backend']!r} is unavailable: {e}")
            return EXIT_USAGE
        config["backend"] = backend.name
        if args.eval_only:
            check_outputs({"--summary-json": args.summary_json})
        elif group is None or group.rank == 0:  # the one process that writes
            place_outputs(config, args, ckpt)
        set_threads(config, args, ckpt)
        backend.prepare()  # build the kernels now, not inside the first step
        if args.eval_only:
            return evaluate_only(config, args, ckpt, backend.xp)
        return train(config, args, ckpt, init, backend.xp, group)
    except (UnusableInput, CheckpointError) as e:
        error(str(e))
        return EXIT_USAGE
    except (OutputFailed, data.DatasetNotFoundError) as e:
        error(str(e))
        return EXIT_FAILURE
    except OSError as e:  # anything else the system refused (removing an --overwrite-n run, say)
        error(_one_line(e))
        return EXIT_FAILURE
    except KeyboardInterrupt as e:  # a signal outside the training loop (loading data, say)
        error("interrupted by SIGTERM" if isinstance(e, Terminated) else "interrupted")
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except MemoryError as e:
        error(f"out of memory ({type(e).__name__}: {e}) with --batch-size {config['batch_size']}; "
              "try a smaller --batch-size")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
