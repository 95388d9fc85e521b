"""How a training step's cost grows with the batch: one model, batch 16 to 1024.

LeNet (the deeplizard tutorial's network, on real Fashion-MNIST) is the subject: small
enough that batch 1024 stays quick on a CPU, deep enough (two convolutions, three
linear layers) that per-op overhead and matrix work both show. Each batch size is its
own group, so the table compares the frameworks at every size; the report's ratios
show where the gap opens or closes.
"""
import pytest

from minitorch_cnn.models import MODELS

from .frameworks import train_step

SCALING_MODEL = "lenet"
BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024)


@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=[f"batch{n}" for n in BATCH_SIZES])
def test_step_scaling(batch_size, framework, measure, batch_of, bench_settings):
    spec = MODELS[SCALING_MODEL]
    batch = batch_of(spec.dataset, bench_settings.batch(batch_size))
    step = train_step(framework, spec, batch.x, batch.y)
    # Zero-padded so that the groups sort by batch size.
    measure(framework, f"scaling:{SCALING_MODEL}:batch-{batch_size:04d}{batch.group_note}", step,
            model=SCALING_MODEL, batch_size=len(batch.x), data=batch.description)
