"""Data-parallel training of a zoo model on Fashion-MNIST over MPI: a whole training
loop written on the library's API (``minitorch_cnn.distributed``, DistributedDataParallel,
SyncBatchNorm, a sharded DataLoader)::

    mpiexec -n 4 python -m mpi4py examples/train_distributed.py --model bn-cnn --epochs 5 --out runs/dp
    mpiexec -n 2 python -m mpi4py examples/train_distributed.py --resume runs/dp/checkpoint.npz --epochs 6

``--batch-size`` is the global batch: each rank takes its share of every batch, so
the same command gives the same model at any number of ranks, to float rounding
(BatchNorm layers become SyncBatchNorm; dropout masks and the shuffle are drawn for
the global batch). Each step sends one message: the gradients, with the loss sum, the
correct count and the stop flag riding along. Rank 0 prints, and writes
``metrics.csv`` and ``checkpoint.npz`` (``minitorch_cnn.checkpoint``'s format) at every
epoch end and when stopped; ``--resume`` continues from it at any number of ranks.
SIGINT, SIGTERM or SIGUSR1 to any rank stops every rank after the same step (Open MPI's
``mpiexec`` forwards only SIGUSR1 and SIGUSR2 to the ranks: ``kill -USR1 <mpiexec pid>``).
Exit status: 0 done, 3 a non-finite loss, 130 stopped (checkpoint written).
"""
import argparse
import os
import signal
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import minitorch_cnn as mt
import minitorch_cnn.distributed as dist
from minitorch_cnn import backends, data, models, nn
from minitorch_cnn.checkpoint import load_checkpoint, save_checkpoint
from minitorch_cnn.training import loss_function, make_optimizer, step_seed

VALIDATION_SIZE = 5000
EXIT_NONFINITE, EXIT_STOPPED = 3, 130
_stop_requested = [False]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet", choices=sorted(models.MODELS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, help="the global batch (default: the model's)")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, help="train on the first N images only")
    p.add_argument("--threads", type=int, default=1, help="threads per rank (default 1)")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/distributed")
    p.add_argument("--resume", help="a checkpoint.npz to continue from (its settings win)")
    return p.parse_args(argv)


def config_of(args, resumed):
    if resumed is not None:
        return dict(resumed.config)
    spec = models.get_spec(args.model)
    return {"model": spec.name, "dataset": spec.dataset, "optimizer": spec.optimizer,
            "batch_size": args.batch_size or spec.batch_size, "lr": args.lr or spec.lr,
            "momentum": spec.momentum, "seed": args.seed, "train_subset": args.train_subset}


def sharded_loaders(config, data_dir):
    """This rank's share of every global batch of the training and validation sets."""
    name, bs, world, rank = config["dataset"], config["batch_size"], dist.get_world_size(), dist.get_rank()
    mean, std = data.NORMALIZATION[name]
    images, labels = data.load_dataset(name, "train", root=data_dir)
    n = config.get("train_subset") or len(images)
    train = data.DataLoader(images[:n], labels[:n], batch_size=bs, shuffle=True, seed=config["seed"],
                            mean=mean, std=std, num_replicas=world, rank=rank)
    (val_x, val_y), _ = data.validation_split(*data.load_dataset(name, "test", root=data_dir),
                                              size=VALIDATION_SIZE)
    val = data.DataLoader(val_x, val_y, batch_size=bs, mean=mean, std=std, num_replicas=world, rank=rank)
    return train, val


def evaluate(model, loader, compute_loss):
    """Loss and accuracy over the whole loader: each rank its shares, one all-reduce."""
    totals = np.zeros(3)
    model.eval()
    with mt.no_grad():
        for x, y in loader:
            output = model(mt.tensor(x))
            totals += [compute_loss(output, mt.tensor(y)).item() * len(y),
                       int((output.numpy().argmax(1) == y).sum()), len(y)]
    model.train()
    summed = mt.tensor(totals)
    dist.all_reduce(summed)
    loss_sum, correct, seen = summed.numpy()
    return loss_sum / seen, correct / seen


def main(argv=None):
    args = parse_args(argv)
    dist.init_process_group()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda *_: _stop_requested.__setitem__(0, True))
    mt.set_num_threads(args.threads)
    # BLAS too: with one engine thread, its products would otherwise take every core.
    threadpool_limits(limits=args.threads, user_api="blas")
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    resumed = load_checkpoint(args.resume) if args.resume else None
    config = config_of(args, resumed)
    out = os.path.dirname(os.path.abspath(args.resume)) if args.resume else args.out
    os.makedirs(out, exist_ok=True)
    train_loader, val_loader = sharded_loaders(config, args.data_dir)

    mt.manual_seed(config["seed"])
    model = nn.SyncBatchNorm.convert_sync_batchnorm(models.get_model(config["model"]))
    optimizer = make_optimizer(config["optimizer"], model.parameters(), config["lr"], config["momentum"])
    epoch, batch, step = 0, 0, 0
    if resumed is not None:
        model.load_state_dict(resumed.model_state)
        optimizer.load_state_dict(resumed.optimizer_state)
        epoch, batch, step = resumed.epoch, resumed.batch, resumed.step
    ddp = nn.parallel.DistributedDataParallel(model)
    compute_loss = loss_function(models.get_spec(config["model"]).loss)

    def save(next_epoch, next_batch):
        if rank == 0:
            save_checkpoint(os.path.join(out, "checkpoint.npz"), model, optimizer, config=config,
                            epoch=next_epoch, batch=next_batch, step=step)

    say(f"training {config['model']} on {world} rank(s), global batch {config['batch_size']}", flush=True)
    while epoch < args.epochs:
        started, seen = time.perf_counter(), np.zeros(3)
        for x, y in train_loader.batches(epoch, batch):
            backends.seed_all(step_seed(config["seed"], epoch, batch))
            optimizer.zero_grad()
            output = ddp(mt.tensor(x))
            loss = compute_loss(output, mt.tensor(y))
            loss.backward()
            correct = int((output.numpy().argmax(1) == y).sum())
            loss_sum, correct, images, stops = ddp.reduce_gradients(
                loss.item() * len(y), correct, len(y), float(_stop_requested[0]))
            if not np.isfinite(loss_sum):
                say(f"error: the loss is {loss_sum} at epoch {epoch} batch {batch}; stopped", file=sys.stderr)
                return EXIT_NONFINITE
            optimizer.step()
            seen += [loss_sum, correct, images]
            batch, step = batch + 1, step + 1
            if stops:  # the same decision on every rank: the flags were summed
                save(epoch, batch)
                say(f"stopped after step {step}; checkpoint in {out}", flush=True)
                return EXIT_STOPPED
        epoch, batch = epoch + 1, 0
        val_loss, val_accuracy = evaluate(ddp, val_loader, compute_loss)
        seconds = time.perf_counter() - started
        save(epoch, 0)
        if rank == 0:
            write_metrics(os.path.join(out, "metrics.csv"), epoch, step, seen, val_loss, val_accuracy, seconds)
        say(f"epoch {epoch}: loss {seen[0] / seen[2]:.4f}, train accuracy {seen[1] / seen[2]:.2%}, "
            f"validation accuracy {val_accuracy:.2%} ({seconds:.1f} s)", flush=True)
    dist.destroy_process_group()
    return 0


def write_metrics(path, epoch, step, seen, val_loss, val_accuracy, seconds):
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("epoch,step,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n")
        f.write(f"{epoch},{step},{seen[0] / seen[2]:.6f},{seen[1] / seen[2]:.6f},"
                f"{val_loss:.6f},{val_accuracy:.6f},{seconds:.3f}\n")


if __name__ == "__main__":
    sys.exit(main())
