"""Speed of minitorch_cnn beside PyTorch, measured with pytest-benchmark.

``pytest --benchmark-only`` from the repository root times the quick set; each
benchmark is parametrized over the frameworks of :mod:`benchmarks.frameworks` inside
one benchmark group, so pytest-benchmark's table puts ours and PyTorch's side by side,
and a closing table gives, per zoo model, both times, their ratio and the GFLOP/s
achieved:

- ``test_bench_steps``: a full training step of every zoo model, inference at batch
  1000, and the float32 matrix-product peak (the quick set);
- ``test_bench_layers``: each conv2d layer of the zoo, max_pool2d, linear and
  log_softmax+NLL at the zoo's shapes, forward and forward+backward (``--bench-full``);
- ``test_bench_scaling``: the step time of one model across batch sizes 16 to 1024
  (``--bench-full``).

Each framework runs in a worker process of its own (:mod:`benchmarks.workers`), which
builds the benchmark's workload (:mod:`benchmarks.workloads`) and times it. Plain
``pytest benchmarks`` times nothing: it runs every benchmark body once on a tiny
batch, in one process, as a smoke test. ``python -m benchmarks.report JSON --out DIR``
turns the ``--benchmark-json`` file into a ratio table (ours / PyTorch) and a picture.
"""
