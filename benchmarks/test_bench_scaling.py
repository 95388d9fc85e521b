"""How a training step's cost grows with the batch: one model, batch 16 to 1024
(part of the full sweep: ``--bench-full``).

LeNet (the deeplizard tutorial's network, on real Fashion-MNIST) is the subject: small
enough that batch 1024 stays quick on a CPU, deep enough (two convolutions, three
linear layers) that per-op overhead and matrix work both show. Each batch size is its
own group, so the table compares the frameworks at every size; the report's ratios
show where the gap opens or closes.
"""
import pytest

from minitorch_cnn.models import MODELS

from .workloads import TrainStep, batch_info

pytestmark = pytest.mark.bench_full

SCALING_MODEL = "lenet"
BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024)


@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=[f"batch{n}" for n in BATCH_SIZES])
def test_step_scaling(batch_size, framework, measure, bench_settings):
    n = bench_settings.batch(batch_size)
    info = batch_info(MODELS[SCALING_MODEL].dataset, n)
    # Zero-padded so that the groups sort by batch size.
    measure(framework, f"scaling:{SCALING_MODEL}:batch-{batch_size:04d}{info.group_note}",
            TrainStep(SCALING_MODEL, n), model=SCALING_MODEL, batch_size=n, data=info.description)
