"""Data-parallel step times and all-reduce costs on this machine::

    python -m benchmarks.distributed --out runs/bench-distributed

It measures, on synthetic Fashion-MNIST-shaped data (a step's cost does not depend on
the pixels), with SGD and the models' own losses:

- one process's step time at local batches 4..256 on one thread, and at 256 on two
  threads (``local``);
- 2 ranks x 1 thread at global batch 256 under ``mpiexec`` (``ranks``): the step, and
  the part of it spent in ``reduce_gradients`` (the all-reduce, plus waiting for the
  slower rank);
- ``MPI_Allreduce`` of 4 B to 16 MB of float32 at 2 ranks, fitted to ``alpha + n * beta``
  (sizes up to 1 MB), from which :func:`projection` projects 8-64 ranks
  (``docs/distributed.md``).

Medians of ``--steps`` timed steps after warm-up steps. On a shared machine every
number moves with the other load: the load average at the start is printed with them.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MODELS = ("lenet", "bn-cnn")
GLOBAL_BATCH = 256
LOCAL_BATCHES = (4, 8, 16, 32, 64, 128, 256)  # a global 256 over 64..1 ranks
ALLREDUCE_BYTES = (4, 1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22, 1 << 24)
WARMUP = 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step_timer(model_name, batch, threads, rank=None, world=None):
    """(step(), model) for one training step on ``batch`` synthetic images; under MPI,
    a DistributedDataParallel step on this rank's share of a global ``batch``."""
    import minitorch_cnn as mt
    import minitorch_cnn.nn as nn
    from minitorch_cnn import models, optim
    from minitorch_cnn.training import loss_function

    mt.set_num_threads(threads)
    mt.manual_seed(0)
    spec = models.get_spec(model_name)
    model = spec.build()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8), rng.integers(0, 10, batch)
    loader = mt.data.DataLoader(images, labels, batch_size=batch, mean=(0.5,), std=(0.25,),
                                num_replicas=world, rank=rank)
    if world is not None:
        model = nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(model))
    opt = optim.SGD(model.parameters(), lr=0.01)
    compute_loss = loss_function(spec.loss)
    times = {"reduce": []}

    def step():
        for x, y in loader:  # one batch; under MPI this rank's share of it
            opt.zero_grad()
            compute_loss(model(mt.tensor(x)), mt.tensor(y)).backward()
            if world is not None:
                started = time.perf_counter()
                model.reduce_gradients()
                times["reduce"].append(time.perf_counter() - started)
            opt.step()
    return step, model, times


def _median_time(step, steps):
    """Median wall and CPU seconds of ``step``: on one thread the CPU time is what the
    step costs when it has a core to itself, whatever else the machine runs."""
    for _ in range(WARMUP):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        started, started_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return float(np.median(wall)), float(np.median(cpu))


def local(steps):
    """One process: step time against local batch on one thread, and at 256 on two."""
    from threadpoolctl import threadpool_limits
    out = {}
    for name in MODELS:
        # One thread means BLAS too: set_num_threads(1) leaves BLAS its own threads.
        with threadpool_limits(limits=1, user_api="blas"):
            one = {str(b): _median_time(_step_timer(name, b, 1)[0], steps) for b in LOCAL_BATCHES}
        two = _median_time(_step_timer(name, GLOBAL_BATCH, 2)[0], steps)[0]
        out[name] = {"one_thread_by_batch": {b: wall for b, (wall, _) in one.items()},
                     "one_thread_cpu_by_batch": {b: cpu for b, (_, cpu) in one.items()},
                     "two_threads_at_256": two}
    return out


def ranks(steps):
    """Run under mpiexec: DDP steps at global batch 256, then bare all-reduces."""
    import minitorch_cnn.distributed as dist
    dist.init_process_group()
    comm = dist.get_communicator()
    out = {"world_size": comm.size, "models": {}, "allreduce": {}}
    for name in MODELS:
        step, model, times = _step_timer(name, GLOBAL_BATCH, 1, comm.rank, comm.size)
        comm.barrier()
        total, cpu = _median_time(step, steps)
        reduce = float(np.median(times["reduce"][WARMUP:]))
        out["models"][name] = {"step": total, "step_cpu": cpu, "reduce": reduce,
                               "gradient_floats": sum(p.numel() for p in model.parameters())}
    for size in ALLREDUCE_BYTES:
        buffer = np.ones(size // 4, dtype=np.float32)
        comm.barrier()
        repeats = max(5, min(200, (1 << 22) // size))
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            comm.all_reduce(buffer, "sum")
            samples.append(time.perf_counter() - started)
        out["allreduce"][str(size)] = float(np.median(samples))
    if comm.rank == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


def drive(args):
    load = os.getloadavg()[0]
    results = {"load_average_at_start": load, "global_batch": GLOBAL_BATCH, "local": local(args.steps)}
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",  # 1 thread a rank
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    run = subprocess.run([mpiexec if os.access(mpiexec, os.X_OK) else "mpiexec", "-n", "2", sys.executable,
                          "-m", "mpi4py", "-m", "benchmarks.distributed", "--ranks", "--steps", str(args.steps)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        sys.exit(f"the 2-rank run failed:\n{run.stderr[-3000:]}")
    results["ranks"] = json.loads(run.stdout.strip().splitlines()[-1])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "distributed.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(report(results))
    print("\nProjected (speed-up over one thread at 256; communication's share):\n")
    print(projection(results))


def report(r):
    ms = lambda s: f"{s * 1e3:.1f}"
    lines = [f"load average at start: {r['load_average_at_start']:.2f}", "",
             "| model | 1 proc x 2 threads, ms | 2 ranks x 1 thread: wall (rank 0's CPU), ms | "
             "reduce_gradients (waits included) | "
             "1 thread at local batch " + ", ".join(map(str, LOCAL_BATCHES)) + ": wall (CPU), ms |",
             "| --- | --- | --- | --- | --- |"]
    for name in MODELS:
        one, dp = r["local"][name], r["ranks"]["models"][name]
        lines.append(f"| {name} | {ms(one['two_threads_at_256'])} | {ms(dp['step'])} ({ms(dp['step_cpu'])}) | "
                     f"{ms(dp['reduce'])} ms ({dp['reduce'] / dp['step']:.0%}) of {dp['gradient_floats']} floats | "
                     + ", ".join(f"{ms(one['one_thread_by_batch'][str(b)])} ({ms(one['one_thread_cpu_by_batch'][str(b)])})"
                                 for b in LOCAL_BATCHES) + " |")
    lines += ["", "| all-reduce, 2 ranks | " + " | ".join(f"{int(b)} B" for b in r["ranks"]["allreduce"]) + " |",
              "| --- |" + " --- |" * len(r["ranks"]["allreduce"]),
              "| median, us | " + " | ".join(f"{t * 1e6:.0f}" for t in r["ranks"]["allreduce"].values()) + " |"]
    return "\n".join(lines)


# Interconnects for the projection, as (latency s, seconds per byte): ASSUMED typical
# figures, not measured here; "this machine" is the fit of the measured all-reduces.
NETWORKS = {"10 GbE (assumed 25 us, 1.25 GB/s)": (25e-6, 1 / 1.25e9),
            "InfiniBand HDR (assumed 2 us, 25 GB/s)": (2e-6, 1 / 25e9)}
SYNC_BN_LAYERS = {"lenet": 0, "bn-cnn": 3}
VGG_BN_FLOATS = 9231114


def alpha_beta(allreduce):
    """Least-squares ``t = alpha + bytes * beta`` over the measured sizes up to 1 MB."""
    sizes = np.array([int(b) for b in allreduce if int(b) <= 1 << 20], dtype=np.float64)
    times = np.array([allreduce[str(int(b))] for b in sizes])
    beta, alpha = np.polyfit(sizes, times, 1)
    return max(alpha, 0.0), beta


def ring_allreduce(p, nbytes, alpha, beta):
    """A ring all-reduce of ``nbytes`` over ``p`` ranks: 2(p-1) steps, each one latency
    and a 1/p share of the data."""
    return 2 * (p - 1) * (alpha + nbytes / p * beta)


def projection(r):
    """Step times at global batch 256 over p ranks: the measured one-thread CPU time of
    a local batch of 256/p, plus one gradient all-reduce, plus SyncBatchNorm's two small
    all-reduces per layer (latency-bound); and vgg-bn's gradient all-reduce alone."""
    measured = ("this machine (fit: %.1f us, %.2f GB/s)", alpha_beta(r["ranks"]["allreduce"]))
    networks = [(measured[0] % (measured[1][0] * 1e6, 1e-9 / measured[1][1]), measured[1])] + list(NETWORKS.items())
    lines = ["| model | network | " + " | ".join(f"{p} ranks" for p in (1, 8, 16, 32, 64)) + " |",
             "| --- | --- |" + " --- |" * 5]
    for name in MODELS:
        cpu = r["local"][name]["one_thread_cpu_by_batch"]
        floats = r["ranks"]["models"][name]["gradient_floats"]
        for label, (alpha, beta) in networks:
            cells = []
            for p in (1, 8, 16, 32, 64):
                comm = 0.0 if p == 1 else (ring_allreduce(p, 4 * floats, alpha, beta)
                                           + 2 * SYNC_BN_LAYERS[name] * ring_allreduce(p, 8 * 64, alpha, beta))
                step = cpu[str(GLOBAL_BATCH // p)] + comm
                cells.append(f"{step * 1e3:.1f} ms ({cpu[str(GLOBAL_BATCH)] / step:.1f}x, comm {comm / step:.0%})")
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    for label, (alpha, beta) in networks:
        lines.append(f"| vgg-bn gradients alone | {label} | " + " | ".join(
            "-" if p == 1 else f"{ring_allreduce(p, 4 * VGG_BN_FLOATS, alpha, beta) * 1e3:.1f} ms"
            for p in (1, 8, 16, 32, 64)) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="runs/bench-distributed")
    p.add_argument("--ranks", action="store_true", help=argparse.SUPPRESS)  # the mpiexec side
    args = p.parse_args(argv)
    if args.ranks:
        ranks(args.steps)
    else:
        drive(args)


if __name__ == "__main__":
    main()
