"""One rank of the data-parallel tests, and the one-process run they compare with.

``tests/test_distributed.py`` launches it as
``mpiexec -n N python -m mpi4py tests/distributed_ranks.py SCENARIO OUT_DIR [RESUME]``;
each rank writes its final ``state_dict`` to ``OUT_DIR/rank<r>.npz``, and rank 0 a
checkpoint after ``checkpoint_step`` steps where the scenario has one. The same
``train`` with ``world=None`` is the one-process reference on the global batch.
"""
import os
import sys

import numpy as np

import minitorch_cnn as mt
import minitorch_cnn.distributed as dist
import minitorch_cnn.nn as nn
from minitorch_cnn import models, optim
from minitorch_cnn.training import loss_function, step_seed

# A 677-image set in batches of 64: every third epoch step ends in a 37-row batch, so
# shares are uneven (22/21/21 of 64, 13/12/12 of 37 on three ranks).
SCENARIOS = {
    "lenet": dict(model="lenet", steps=30, lr=0.1, momentum=0.9, sync_bn=False),
    "bn": dict(model="bn-cnn", steps=5, lr=0.002, momentum=0.9, sync_bn=True),
    "bn-local": dict(model="bn-cnn", steps=1, lr=0.01, momentum=0.9, sync_bn=False),
    "dropout": dict(model="mnist-example", steps=12, lr=0.05, momentum=0.5, sync_bn=False),
    "resume": dict(model="lenet", steps=30, lr=0.1, momentum=0.9, sync_bn=False, checkpoint_step=14),
    "fail": dict(model="lenet", steps=30, lr=0.1, momentum=0.9, sync_bn=False, fail_rank=1, fail_step=3),
}
DATASET_SIZE, BATCH, SEED = 677, 64, 0


def dataset():
    rng = np.random.default_rng(SEED)
    return (rng.integers(0, 256, (DATASET_SIZE, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, DATASET_SIZE))


def train(name, world=None, rank=None, resume=None, out=None):
    """Train scenario ``name``; with ``world``, as one of that many DDP ranks (from the
    checkpoint ``resume`` where given). Returns the model's state_dict."""
    cfg = SCENARIOS[name]
    spec = models.get_spec(cfg["model"])
    mt.manual_seed(SEED)
    model = spec.build()
    if world is not None and cfg["sync_bn"]:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    step = 0
    if resume is not None:
        with np.load(resume, allow_pickle=False) as saved:
            model.load_state_dict({k[6:]: saved[k] for k in saved.files if k.startswith("model.")})
            momenta = {int(k[9:]): {"momentum_buffer": saved[k]} for k in saved.files if k.startswith("momentum.")}
            opt.load_state_dict({"state": momenta, "param_groups": opt.state_dict()["param_groups"]})
            step = int(saved["step"])
    net = nn.parallel.DistributedDataParallel(model) if world is not None else model
    images, labels = dataset()
    loader = mt.data.DataLoader(images, labels, batch_size=BATCH, shuffle=True, seed=SEED,
                                mean=(0.5,), std=(0.25,), num_replicas=world, rank=rank)
    compute_loss = loss_function(spec.loss)
    while step < cfg["steps"]:
        epoch, batch = divmod(step, len(loader))
        for x, y in loader.batches(epoch, batch):
            if step == cfg.get("fail_step") and rank == cfg.get("fail_rank"):
                raise RuntimeError(f"rank {rank} fails on purpose at step {step}")
            mt.manual_seed(step_seed(SEED, epoch, batch))
            opt.zero_grad()
            loss = compute_loss(net(mt.tensor(x)), mt.tensor(y))
            loss.backward()
            if world is not None:
                net.reduce_gradients()
            opt.step()
            step, batch = step + 1, batch + 1
            if step == cfg.get("checkpoint_step") and rank == 0 and out is not None:
                save(os.path.join(out, "checkpoint.npz"), model, opt, step)
            if step == cfg["steps"]:
                break
    return model.state_dict()


def save(path, model, opt, step):
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, entry in opt.state_dict()["state"].items():
        arrays[f"momentum.{i}"] = entry["momentum_buffer"]
    np.savez(path, step=np.int64(step), **arrays)


def main(argv):
    name, out = argv[0], argv[1]
    resume = argv[2] if len(argv) > 2 else None
    mt.set_num_threads(1)
    dist.init_process_group()
    state = train(name, dist.get_world_size(), dist.get_rank(), resume, out)
    np.savez(os.path.join(out, f"rank{dist.get_rank()}.npz"), **state)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
