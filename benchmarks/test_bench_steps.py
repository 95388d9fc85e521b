"""Whole-model benchmarks: one training step of every zoo model at its tutorial batch
size, and inference throughput at batch 1000."""
import pytest

from minitorch_cnn.models import MODELS

from .frameworks import inference, train_step

INFERENCE_BATCH = 1000


@pytest.mark.parametrize("model", list(MODELS))
def test_train_step(model, framework, measure, batch_of, bench_settings):
    spec = MODELS[model]
    batch = batch_of(spec.dataset, bench_settings.batch(spec.batch_size))
    step = train_step(framework, spec, batch.x, batch.y)
    measure(framework, f"train-step:{model}{batch.group_note}", step,
            model=model, batch_size=len(batch.x), data=batch.description,
            optimizer=spec.optimizer, loss=spec.loss)


@pytest.mark.parametrize("model", list(MODELS))
def test_inference(model, framework, measure, batch_of, bench_settings):
    spec = MODELS[model]
    batch = batch_of(spec.dataset, bench_settings.batch(INFERENCE_BATCH))
    infer = inference(framework, spec, batch.x)
    # images/s = batch_size / time: the report and the JSON reader can derive throughput.
    measure(framework, f"inference:{model}{batch.group_note}", infer,
            model=model, batch_size=len(batch.x), data=batch.description)
