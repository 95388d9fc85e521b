"""Whole-model benchmarks, the quick set that ``pytest --benchmark-only`` times by
default: one training step of every zoo model at its tutorial batch size, inference at
batch 1000, and the matrix-product peak that their GFLOP/s are set beside."""
import pytest

from minitorch_cnn.models import MODELS

from .workloads import Inference, MatMul, TrainStep, batch_info

INFERENCE_BATCH = 1000
#: Large enough that a product runs at its BLAS's full speed on a CPU, small enough to
#: take well under a second (17 GFLOP).
PEAK_MATMUL_SIZE = 2048


@pytest.mark.parametrize("model", list(MODELS))
def test_train_step(model, framework, measure, bench_settings):
    spec = MODELS[model]
    n = bench_settings.batch(spec.batch_size)
    info = batch_info(spec.dataset, n)
    measure(framework, f"train-step:{model}{info.group_note}", TrainStep(model, n),
            model=model, batch_size=n, data=info.description,
            optimizer=spec.optimizer, loss=spec.loss)


@pytest.mark.parametrize("model", list(MODELS))
def test_inference(model, framework, measure, bench_settings):
    spec = MODELS[model]
    n = bench_settings.batch(INFERENCE_BATCH)
    info = batch_info(spec.dataset, n)
    # images/s = batch_size / time: the report and the JSON reader can derive throughput.
    measure(framework, f"inference:{model}{info.group_note}", Inference(model, n),
            model=model, batch_size=n, data=info.description)


def test_matmul_peak(framework, measure, bench_settings):
    size = PEAK_MATMUL_SIZE if bench_settings.timing else 8
    measure(framework, f"peak:matmul-{size}", MatMul(size), size=size,
            data=f"random normal float32 {size}x{size} matrices")
