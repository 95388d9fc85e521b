"""Speed of minitorch_cnn beside PyTorch, measured with pytest-benchmark.

``pytest benchmarks --benchmark-only`` times every benchmark, each one parametrized
over the frameworks of :mod:`benchmarks.frameworks` inside one benchmark group, so
pytest-benchmark's table puts ours and PyTorch's side by side:

- ``test_bench_steps``: a full training step of every zoo model, and inference at batch 1000;
- ``test_bench_layers``: each conv2d layer of the zoo, max_pool2d, linear and
  log_softmax+NLL at the zoo's shapes, forward and forward+backward;
- ``test_bench_scaling``: the step time of one model across batch sizes 16 to 1024.

Plain ``pytest benchmarks`` times nothing: it runs every benchmark body once on a tiny
batch, as a smoke test. ``python -m benchmarks.report JSON --out DIR`` turns the
``--benchmark-json`` file into a ratio table (ours / PyTorch) and a bar chart.
"""
