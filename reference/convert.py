"""Move weights between minitorch_cnn and PyTorch: state dicts, files, live models.

Both frameworks name a model's tensors with the same dotted keys (``conv1.weight``,
``features.1.running_mean``, ...), so converting is a change of array type only:

- ``to_torch`` / ``from_torch``: a state dict as torch tensors / NumPy arrays;
- ``save_npz`` / ``load_npz``: the engine's format (``.npz``, read without pickle);
  ``load_npz`` also reads a ``minitorch_cnn.train`` checkpoint, whose weights are the
  entries under ``model/``;
- ``save_pth`` / ``load_pth``: PyTorch's format (read with ``weights_only=True``);
- ``copy_weights(src, dst)``: from one live model into another, in either direction.

Command line: ``python -m reference.convert IN OUT [--model NAME]`` converts between
``.npz`` and ``.pth``/``.pt`` by the files' extensions; ``--model`` also checks that
the weights load into that zoo model.
"""
import argparse
import os
import sys
import zipfile

import numpy as np
import torch

from minitorch_cnn.checkpoint import MODEL_PREFIX
from minitorch_cnn.files import atomic_write

__all__ = ["CHECKPOINT_PREFIX", "to_torch", "from_torch", "save_npz", "load_npz", "save_pth",
           "load_pth", "copy_weights", "load_state", "save_state", "main"]

#: Prefix of the model's entries in a ``minitorch_cnn.train`` checkpoint.
CHECKPOINT_PREFIX = MODEL_PREFIX
NPZ_EXTENSIONS = (".npz",)
# What np.load raises for a file that is not a (complete, pickle-free) .npz archive.
_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile)
PTH_EXTENSIONS = (".pth", ".pt")


def _is_torch_module(obj):
    return isinstance(obj, torch.nn.Module)


def _state_of(model_or_state):
    """A ``{key: value}`` mapping from a model of either framework or a state dict."""
    if isinstance(model_or_state, dict):
        return model_or_state
    if hasattr(model_or_state, "state_dict"):
        return model_or_state.state_dict()
    raise TypeError(f"expected a model or a state dict, got {type(model_or_state).__name__}")


def _numpy_copy(value):
    """A NumPy copy of a torch tensor, an engine tensor (``.numpy()``) or an array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if hasattr(value, "numpy"):
        return np.array(value.numpy(), copy=True)
    return np.array(value, copy=True)


def to_torch(model_or_state):
    """``{key: torch.Tensor}`` (CPU copies) from a model or state dict of either framework."""
    return {key: torch.from_numpy(_numpy_copy(value))
            for key, value in _state_of(model_or_state).items()}


def from_torch(torch_state):
    """``{key: np.ndarray}`` (copies) from a model or state dict of either framework."""
    return {key: _numpy_copy(value) for key, value in _state_of(torch_state).items()}


def save_npz(path, state):
    """Write a state dict (or a model's) to ``path`` as an uncompressed ``.npz``, atomically."""
    arrays = {}
    for key, value in from_torch(_state_of(state)).items():
        if value.dtype == object:
            raise TypeError(f"{path}: state entry {key!r} is not a numeric array")
        arrays[key] = value
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz(path):
    """The state dict in ``path``: a plain state-dict ``.npz``, or a ``minitorch_cnn.train``
    checkpoint, from which the ``model/`` entries are taken with the prefix stripped."""
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except _UNREADABLE as e:  # neither .npz nor .npy, truncated, or a pickled object
        raise ValueError(f"{path}: not a readable .npz state dict ({e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array, not a .npz state dict")
    with archive:
        try:
            state = {key: archive[key] for key in archive.files}
        except _UNREADABLE as e:  # a corrupt entry, or one that would need pickle
            raise ValueError(f"{path}: not a readable .npz state dict ({e})") from e
    model = {key[len(CHECKPOINT_PREFIX):]: value for key, value in state.items()
             if key.startswith(CHECKPOINT_PREFIX)}
    return model if model else state


def save_pth(path, torch_state):
    """Write a state dict (torch tensors, NumPy arrays, or a model's) with ``torch.save``,
    atomically."""
    tensors = to_torch(torch_state)
    atomic_write(path, lambda f: torch.save(tensors, f))


def load_pth(path):
    """The state dict in a ``.pth`` file, read with ``torch.load(weights_only=True)`` (no
    code runs). A checkpoint dict holding the weights under ``state_dict`` or
    ``model_state_dict``, as PyTorch training scripts save them, is unwrapped."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or unsafe file
        raise ValueError(f"{path}: not a loadable PyTorch weights file ({e})") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def copy_weights(src_model, dst_model):
    """Load ``src_model``'s parameters and buffers into ``dst_model`` (ours -> torch,
    torch -> ours, or within one framework); keys and shapes must match exactly.
    Returns ``dst_model``."""
    state = from_torch(src_model)
    if _is_torch_module(dst_model):
        dst_model.load_state_dict(to_torch(state), strict=True)
    else:
        dst_model.load_state_dict(state, strict=True)
    return dst_model


# ---- files by extension ------------------------------------------------------------
def _format_of(path):
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in NPZ_EXTENSIONS:
        return "npz"
    if ext in PTH_EXTENSIONS:
        return "pth"
    raise ValueError(f"{path}: unknown extension {ext or '(none)'!r}; "
                     f"use one of {', '.join(NPZ_EXTENSIONS + PTH_EXTENSIONS)}")


def load_state(path):
    """A state dict as NumPy arrays from a ``.npz`` or ``.pth``/``.pt`` file."""
    return load_npz(path) if _format_of(path) == "npz" else from_torch(load_pth(path))


def save_state(path, state):
    """Write a state dict to a ``.npz`` or ``.pth``/``.pt`` file, chosen by extension."""
    (save_npz if _format_of(path) == "npz" else save_pth)(path, state)


def _check_against_model(state, name):
    from minitorch_cnn.models import get_model
    get_model(name).load_state_dict(state, strict=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m reference.convert",
        description="Convert model weights between .npz (minitorch_cnn; a training "
                    "checkpoint's model/ entries are taken) and .pth/.pt (PyTorch).")
    parser.add_argument("input", help="a .npz, .pth or .pt file")
    parser.add_argument("output", help="the file to write: .npz, .pth or .pt")
    parser.add_argument("--model", help="zoo model name: check that the weights load into it")
    args = parser.parse_args(argv)
    try:
        _format_of(args.output)  # reject a bad output name before reading anything
        state = load_state(args.input)
        if args.model is not None:
            _check_against_model(state, args.model)
        save_state(args.output, state)
    except (OSError, ValueError, KeyError, TypeError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    print(f"wrote {args.output}: {len(state)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
