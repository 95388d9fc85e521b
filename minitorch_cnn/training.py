"""The training loop as a library: optimizers and losses by name, one epoch of training,
evaluation, and the rules that make a resumed run repeat an uninterrupted one exactly.

Reproducibility. Before every step the backends' generators (dropout masks) are
reseeded from ``(seed, epoch, batch)`` (:func:`step_seed`) and the data order of epoch
``e`` is ``DataLoader.batches(e, start)``'s, so a run stopped after ANY batch and resumed
from a checkpoint of that moment draws exactly what the uninterrupted run draws.

No host sync per step. The running loss and correct counts stay on the device as
0-d arrays; they are brought to the host together every ``log_every`` steps, at the
end of the epoch and at an interruption. That is also where a non-finite loss is
detected, naming the first step that produced one.

Data-parallel training. Given a ``nn.parallel.DistributedDataParallel`` model and a
sharded loader, :func:`train_epoch` sends the step's loss sum, correct count, batch size
and stop requests in the gradients' all-reduce (no other message per step), so every
process logs the global batch's numbers and stops after the same step; :func:`evaluate`
splits the batches among the processes and sums their counts.
"""
import contextlib
import itertools
import signal
import time

import numpy as np

from . import backends, distributed, optim
from .autograd import no_grad
from .nn import functional as F
from .nn.parallel import DistributedDataParallel
from .tensor import Tensor

LOSSES = {"nll": F.nll_loss, "cross_entropy": F.cross_entropy}
OPTIMIZERS = ("sgd", "adam")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite: ``what`` ("training" by default, or the evaluated
    split) at global ``step``, the first such step, in ``epoch`` (0-based) and ``batch``."""

    def __init__(self, epoch, batch, step, value, what="training"):
        self.epoch, self.batch, self.step, self.value, self.what = epoch, batch, step, value, what
        where = f"batch {batch + 1} of epoch {epoch + 1}" if what == "training" else f"end of epoch {epoch + 1}"
        super().__init__(f"the {what} loss became {value} at step {step} ({where})")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, ``signum``) stopped training at a batch boundary: the model
    and optimizer hold the state after ``next_batch`` batches of epoch ``epoch``;
    ``totals`` are that partial epoch's running totals (pass them back to
    :func:`train_epoch` when resuming)."""

    def __init__(self, epoch, next_batch, step, totals, signum=signal.SIGINT):
        self.epoch, self.next_batch, self.step, self.totals = epoch, next_batch, step, totals
        self.signum = signum
        super().__init__(f"interrupted after batch {next_batch} of epoch {epoch + 1}")


def make_optimizer(name, params, lr, momentum=0.0):
    """``optim.SGD(params, lr, momentum)`` or ``optim.Adam(params, lr)`` by name."""
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        if momentum:
            raise ValueError("momentum applies to sgd only; adam uses its betas")
        return optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def loss_function(kind, reduction="mean"):
    """A callable ``(output Tensor, target) -> loss Tensor``: ``"nll"`` expects
    log-probabilities (a model ending in LogSoftmax), ``"cross_entropy"`` raw logits."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose one of {sorted(LOSSES)}")
    fn = LOSSES[kind]
    return lambda output, target: fn(output, target, reduction=reduction)


def step_seed(seed, epoch, batch):
    """The generator seed for step ``batch`` of ``epoch``: independent streams per step."""
    return int(np.random.SeedSequence([seed, epoch, batch]).generate_state(1)[0])


def _correct(output, target):
    """Number of right predictions, as a 0-d device array (no sync)."""
    return (output.data.argmax(axis=1) == target).sum()


def _to_host(backend, device_scalars, dtype):
    """One transfer for a list of 0-d device arrays."""
    xp = backend.xp
    return np.asarray(backend.to_numpy(xp.stack([xp.asarray(v) for v in device_scalars])), dtype=dtype)


def evaluate(model, loader, loss_kind):
    """Mean loss and accuracy of ``model`` over ``loader``, in eval mode without a graph.
    Sums stay on the device until one sync at the end; the model's mode is restored.
    A DistributedDataParallel ``model`` with an unsharded ``loader`` evaluates every
    ``world_size``-th batch from its rank's on, and the processes' sums are added: each
    gets the whole loader's numbers."""
    was_training = model.training
    loss_sum = loss_function(loss_kind, reduction="sum")
    backend = backends.backend_of(loader.images)
    batches = loader.batches(0)
    parallel = isinstance(model, DistributedDataParallel)
    if parallel:
        batches = itertools.islice(batches, distributed.get_rank(), None, distributed.get_world_size())
    losses, correct, seen = [], [], 0
    model.eval()
    try:
        with no_grad():
            for x, y in batches:
                output = model(Tensor(x))
                losses.append(loss_sum(output, y).data)
                correct.append(_correct(output, y))
                seen += len(y)
    finally:
        model.train(was_training)
    totals = [float(_to_host(backend, losses, np.float64).sum()) if losses else 0.0,
              int(_to_host(backend, correct, np.int64).sum()) if correct else 0, seen]
    if parallel:
        summed = Tensor(backend.xp.asarray(totals, dtype=np.float64))
        distributed.all_reduce(summed)
        totals = backend.to_numpy(summed.data).tolist()
    total_loss, total_correct, seen = totals[0], int(totals[1]), int(totals[2])
    if not seen:
        raise ValueError("evaluate() got an empty data loader")
    return total_loss / seen, total_correct / seen


class _Window:
    """Per-step losses and correct counts since the last sync, kept on the device."""

    def __init__(self, backend):
        self.backend = backend
        self.reset()

    def reset(self):
        self.losses, self.correct, self.sizes, self.batches = [], [], [], []
        self.started = time.perf_counter()

    def add(self, batch, loss, correct, size):
        self.batches.append(batch)
        self.losses.append(loss)
        self.correct.append(correct)
        self.sizes.append(size)

    def flush(self, epoch, steps_per_epoch):
        """Sync once; raise NonFiniteLossError naming the first bad step; return
        (loss_sum, correct, images, seconds) of the window."""
        if not self.losses:
            return 0.0, 0, 0, 0.0
        losses = _to_host(self.backend, self.losses, np.float64)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            b = self.batches[bad[0]]
            raise NonFiniteLossError(epoch, b, epoch * steps_per_epoch + b + 1, losses[bad[0]])
        sizes = np.asarray(self.sizes, dtype=np.float64)
        result = (float(losses @ sizes), int(_to_host(self.backend, self.correct, np.int64).sum()),
                  int(sizes.sum()), time.perf_counter() - self.started)
        self.reset()
        return result


def _empty_totals():
    return {"loss_sum": 0.0, "correct": 0, "images": 0, "seconds": 0.0}


def _epoch_result(totals):
    n = totals["images"]
    return {**totals,
            "loss": totals["loss_sum"] / n if n else float("nan"),
            "accuracy": totals["correct"] / n if n else float("nan"),
            "images_per_second": n / totals["seconds"] if totals["seconds"] else 0.0}


def train_epoch(model, optimizer, loader, loss_kind, *, epoch, seed, start_batch=0, totals=None,
                on_step=None, log_every=50):
    """Train ``model`` for one epoch (batches ``start_batch`` on) of ``loader``.

    ``on_step(event)`` is called after every optimizer step with a dict: ``epoch``,
    ``batch`` (index just done), ``step`` (global step, ``epoch * len(loader) + batch + 1``),
    ``images`` and ``log``, which is None except every ``log_every`` batches (counted
    from the start of the epoch, so resumed runs log at the same batches), where it
    holds the window's ``loss``, ``accuracy``, ``images_per_second``, ``seconds`` and the
    epoch's running ``epoch_loss`` and ``epoch_accuracy``.

    Returns a dict: ``loss``, ``accuracy``, ``images``, ``seconds``, ``images_per_second``
    (and the raw ``loss_sum``, ``correct``) over the whole epoch, ``totals`` of an
    interrupted run included. A KeyboardInterrupt raised by ``on_step`` or requested through
    :func:`interrupts_at_batch_boundaries` becomes :class:`TrainingInterrupted`; a NaN or
    infinite loss raises :class:`NonFiniteLossError`.

    With a DistributedDataParallel ``model`` (and ``loader`` sharded for this process),
    each step's all-reduce also sums the loss, correct count and batch size (``log``,
    ``images`` and the result are the global batch's) and the stop requests, so every
    process stops after the same step; a KeyboardInterrupt from ``on_step`` then
    propagates as it is, since only this process saw it."""
    if log_every < 1:
        raise ValueError(f"log_every must be at least 1, got {log_every}")
    compute_loss = loss_function(loss_kind)
    backend = backends.backend_of(loader.images)
    steps_per_epoch = len(loader)
    totals = dict(totals or _empty_totals())
    window = _Window(backend)

    def absorb():
        loss_sum, correct, images, seconds = window.flush(epoch, steps_per_epoch)
        totals["loss_sum"] += loss_sum
        totals["correct"] += correct
        totals["images"] += images
        totals["seconds"] += seconds
        return loss_sum, correct, images, seconds

    def interrupted(next_batch, signum=None):
        signum, _interrupt_requested[0] = signum or _interrupt_requested[0] or signal.SIGINT, None
        absorb()  # a checkpoint follows: never write one after a non-finite loss
        return TrainingInterrupted(epoch, next_batch, epoch * steps_per_epoch + next_batch, totals,
                                   signum)

    parallel = isinstance(model, DistributedDataParallel)
    model.train()
    for b, (x, y) in enumerate(loader.batches(epoch, start_batch), start=start_batch):
        # A signal came during the previous step or between epochs (data-parallel: the
        # request travels with the next all-reduce instead).
        if _interrupt_requested[0] and not parallel:
            raise interrupted(b)
        backends.seed_all(step_seed(seed, epoch, b))
        optimizer.zero_grad()
        output = model(Tensor(x))
        loss = compute_loss(output, y)
        loss.backward()
        if parallel:
            loss_value, correct, size, stop = _all_reduce_step(model, loss, output, y)
        else:
            loss_value, correct, size, stop = loss.data, _correct(output, y), len(y), None
        optimizer.step()
        window.add(b, loss_value, correct, size)
        step = epoch * steps_per_epoch + b + 1
        log = None
        if (b + 1) % log_every == 0:
            loss_sum, correct, images, seconds = absorb()
            log = {"loss": loss_sum / images, "accuracy": correct / images,
                   "images_per_second": images / seconds if seconds else 0.0, "seconds": seconds,
                   "epoch_loss": totals["loss_sum"] / totals["images"],
                   "epoch_accuracy": totals["correct"] / totals["images"]}
        if on_step is not None:
            try:
                on_step({"epoch": epoch, "batch": b, "step": step, "images": size, "log": log})
            except KeyboardInterrupt as e:
                if parallel:
                    raise
                raise interrupted(b + 1) from e
        if stop is not None:
            raise interrupted(b + 1, stop)
    absorb()
    return _epoch_result(totals)


def _all_reduce_step(ddp, loss, output, y):
    """``ddp``'s gradient all-reduce, carrying this process's loss sum, correct count,
    batch size and stop request: returns the global batch's mean loss, correct count and
    size, and the signal that stops training after this step (or None), the same in
    every process. The first stop signal in PARALLEL_STOP_SIGNALS's order that any
    process received wins."""
    requested = _interrupt_requested[0]
    summed = ddp.reduce_gradients(loss.data * len(y), _correct(output, y), len(y),
                                  *(float(requested == s) for s in PARALLEL_STOP_SIGNALS))
    stop = next((s for s, n in zip(PARALLEL_STOP_SIGNALS, summed[3:].tolist()) if n), None)
    return summed[0] / summed[2], summed[1], summed[2], stop


# ---- Ctrl-C and SIGTERM at batch boundaries -----------------------------------------------------
_interrupt_requested = [None]  # the number of the signal that asked training to stop
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Open MPI's mpiexec kills its processes on SIGINT and SIGTERM, and forwards SIGUSR1.
PARALLEL_STOP_SIGNALS = STOP_SIGNALS + (signal.SIGUSR1,)


@contextlib.contextmanager
def interrupts_at_batch_boundaries(signals=STOP_SIGNALS):
    """Inside the block, a first Ctrl-C (SIGINT) or SIGTERM (``kill``, ``timeout``, a
    scheduler, ``docker stop``), or any other of ``signals``, lets the current step
    finish and then stops :func:`train_epoch` with :class:`TrainingInterrupted`, so the
    state can be saved whole; a second signal raises KeyboardInterrupt at once. Outside
    the main thread, where signal handlers cannot be set, the block changes nothing."""
    def request(signum, frame):
        if _interrupt_requested[0]:
            raise KeyboardInterrupt
        _interrupt_requested[0] = signum

    try:
        previous = {s: signal.signal(s, request) for s in signals}
    except ValueError:  # not the main thread
        yield
        return
    _interrupt_requested[0] = None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _interrupt_requested[0] = None


__all__ = ["make_optimizer", "loss_function", "evaluate", "train_epoch", "step_seed",
           "interrupts_at_batch_boundaries", "STOP_SIGNALS", "PARALLEL_STOP_SIGNALS",
           "NonFiniteLossError", "TrainingInterrupted", "LOSSES", "OPTIMIZERS"]
