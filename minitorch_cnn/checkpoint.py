"""Training checkpoints: one backend-neutral ``.npz`` that is enough to resume a run exactly.

Layout of the archive (every entry a NumPy array, read back with ``allow_pickle=False``):

- ``model/<state_dict key>``: the model's ``state_dict()`` (parameters and buffers);
- ``optim/state/<param index>/<name>``: the optimizer's per-parameter arrays
  (momentum buffers, Adam moments);
- ``meta``: one JSON document stored as a uint8 array (UTF-8 bytes) holding the format
  version, the run's config, the position (``epoch`` = epochs completed, ``batch`` =
  next batch index within that epoch, ``step`` = optimizer steps taken), the
  optimizer's ``param_groups`` and scalar state (Adam's ``step``), the metrics history,
  the unfinished epoch's running totals, the run's best epoch so far (``best``: its
  ``epoch``, validation accuracy ``val_acc`` and the ``path`` of its checkpoint), and
  how the random numbers are derived.

There is no random-generator state to store: training reseeds the generators before
every step from ``(seed, epoch, batch)`` (see ``training.step_seed``), so the seed and
the position determine every later draw.

Files are written atomically (``files.atomic_write``): a temporary file in the same
folder, flushed and fsynced, then ``os.replace``-d over the target, so a crash mid-save
leaves the previous file whole.
"""
import json
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from . import backends, models
# The atomic writers lived here before files.py; inspect.py, visualize.py and reference/
# still import them from this module.
from .files import atomic_savez

FORMAT_VERSION = 1
MODEL_PREFIX = "model/"
OPTIM_PREFIX = "optim/state/"
META_KEY = "meta"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt or incomplete; the message names the file."""


@dataclass
class Checkpoint:
    """What a checkpoint holds, as NumPy arrays and plain Python values."""
    path: str
    model_state: "OrderedDict[str, np.ndarray]"
    optimizer_state: dict
    config: dict
    epoch: int
    batch: int
    step: int
    history: list = field(default_factory=list)
    partial: dict = None  # running totals of the unfinished epoch (batch > 0)
    best: dict = None  # {"epoch", "val_acc", "path"} of the best epoch so far, if any
    version: int = FORMAT_VERSION


# ---- writing ------------------------------------------------------------------------------
def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot store a {type(value).__name__} in checkpoint metadata")


def encode_json(obj):
    """A JSON document as a uint8 array (an npz entry that needs no pickle)."""
    return np.frombuffer(json.dumps(obj, default=_json_default).encode("utf-8"), dtype=np.uint8)


def decode_json(array):
    return json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8"))


def save_checkpoint(path, model, optimizer, *, config, epoch, batch, step, history=None,
                    partial=None, best=None):
    """Write ``model`` and ``optimizer`` with the run's ``config`` and position to ``path``.

    ``epoch`` counts the completed epochs and ``batch`` is the next batch index within
    the epoch in progress (0 at an epoch boundary); ``step`` counts optimizer steps.
    ``history`` is the list of per-epoch metric records so far; ``partial`` the running
    totals of the unfinished epoch; ``best`` the run's best epoch so far. Returns ``path``."""
    arrays = {MODEL_PREFIX + key: value for key, value in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    scalars = {}
    for index, entry in optim_state["state"].items():
        for name, value in entry.items():
            if np.ndim(value) == 0:
                scalars.setdefault(str(index), {})[name] = value
            else:
                arrays[f"{OPTIM_PREFIX}{index}/{name}"] = np.asarray(value)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": dict(config),
        "epoch": int(epoch),
        "batch": int(batch),
        "step": int(step),
        "history": list(history or []),
        "partial": partial,
        "best": best,
        "optimizer": {"param_groups": optim_state["param_groups"], "scalars": scalars,
                      "arrays": sorted(k[len(OPTIM_PREFIX):] for k in arrays if k.startswith(OPTIM_PREFIX))},
        "rng": {"scheme": "generators reseeded before every step from "
                          "SeedSequence([seed, epoch, batch])", "seed": config.get("seed")},
    }
    arrays[META_KEY] = encode_json(meta)
    return atomic_savez(path, arrays)


# ---- reading ------------------------------------------------------------------------------
def _read_arrays(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a .npz file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        # Neither a zip nor a .npy: NumPy takes it for a pickle and talks of unpickling it.
        reason = e if zipfile.is_zipfile(path) else "it is not a zip of .npy arrays"
        raise CheckpointError(f"checkpoint {path} is not a readable .npz archive ({reason})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy array
        raise CheckpointError(f"checkpoint {path} is a .npy array, not a .npz archive")
    with archive:
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                raise CheckpointError(f"checkpoint {path}: entry {key!r} is corrupt ({e})") from e
    return arrays


def _require(meta, key, path):
    if key not in meta:
        raise CheckpointError(f"checkpoint {path}: metadata lacks the key {key!r}")
    return meta[key]


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`; arrays stay NumPy arrays.
    Raises FileNotFoundError for a missing file and :class:`CheckpointError` naming the
    file (and the key) for anything unreadable, corrupt or missing."""
    path = os.fspath(path)
    arrays = _read_arrays(path)
    if META_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path} has no {META_KEY!r} entry; "
                              "it was not written by minitorch_cnn.checkpoint")
    try:
        meta = decode_json(arrays[META_KEY])
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: the {META_KEY!r} entry is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: the {META_KEY!r} entry is not a JSON object")
    version = _require(meta, "format_version", path)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; "
                              f"this code reads version {FORMAT_VERSION}")
    model_state = OrderedDict((k[len(MODEL_PREFIX):], v) for k, v in arrays.items()
                              if k.startswith(MODEL_PREFIX))
    if not model_state:
        raise CheckpointError(f"checkpoint {path} holds no model weights ({MODEL_PREFIX}* entries)")
    optim_meta = _require(meta, "optimizer", path)
    state = {}
    for name in _require(optim_meta, "arrays", path):
        key = OPTIM_PREFIX + name
        if key not in arrays:
            raise CheckpointError(f"checkpoint {path} lacks the optimizer entry {key!r}")
        index, _, field_name = name.partition("/")
        state.setdefault(int(index), {})[field_name] = arrays[key]
    for index, entry in _require(optim_meta, "scalars", path).items():
        state.setdefault(int(index), {}).update(entry)
    return Checkpoint(
        path=path, model_state=model_state,
        optimizer_state={"state": state, "param_groups": _require(optim_meta, "param_groups", path)},
        config=_require(meta, "config", path), epoch=int(_require(meta, "epoch", path)),
        batch=int(_require(meta, "batch", path)), step=int(_require(meta, "step", path)),
        history=meta.get("history") or [], partial=meta.get("partial"), best=meta.get("best"),
        version=version)


def load_weights(ckpt, model, optimizer=None):
    """Load ``ckpt``'s model weights into ``model`` (and its optimizer state into
    ``optimizer`` if given); :class:`CheckpointError` naming the file when they do not fit."""
    try:
        model.load_state_dict(ckpt.model_state)
        if optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        reason = e.args[0] if e.args else type(e).__name__
        raise CheckpointError(f"checkpoint {ckpt.path}: its weights do not fit model "
                              f"{ckpt.config.get('model')!r}: {reason}") from None


def load_model(path, backend=None):
    """Build the checkpoint's model (``models.get_model(config["model"])``) on ``backend``
    (default: the active one) and load its weights. Returns ``(model, checkpoint)``."""
    ckpt = load_checkpoint(path)
    name = ckpt.config.get("model")
    if name is None:
        raise CheckpointError(f"checkpoint {path}: config lacks the key 'model'")
    target = backend or backends.get_backend().name
    with backends.backend(target):
        model = models.get_model(name)
    load_weights(ckpt, model)
    return model, ckpt


__all__ = ["Checkpoint", "CheckpointError", "FORMAT_VERSION", "save_checkpoint",
           "load_checkpoint", "load_weights", "load_model", "encode_json", "decode_json"]
