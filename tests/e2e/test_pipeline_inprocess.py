"""All three real workers in one process on random queues: snapshot, train, infer.

The activities are the workers' own (taken from each worker's ``build_spec``), against the
session's real Temporal dev server; only the model is tiny so the run takes seconds.

The predictions are checked against what training must have taught: the tiny model, trained
for 120 steps at a learning rate of 5e-3 on the toy reviews, labels clear reviews (made of the
same sentiment words) right, where an untrained head labels every text alike (half right).
Measured with the plain Trainer on this data: it learns suddenly, somewhere between 30 and 100
steps depending on the seed; at 5e-3 all 32 clear reviews were right for each of 5 seeds at
100 steps (4 of 5 at 60), and none above half at 12 or 24 steps at 1e-3.
"""

import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from temporalio.client import Client

from durabert.data_worker.worker import build_spec as data_spec
from durabert.gpu_worker.worker import build_spec as gpu_spec
from durabert.orchestrator.worker import build_spec as orchestrator_spec
from durabert.shared import names
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    TrainingProgress,
)
from durabert.shared.runner import build_worker
from durabert.shared.settings import DurabertSettings
from support.datasets import NEGATIVE, POSITIVE, write_reviews
from support.histories import record_history

pytestmark = pytest.mark.slow


async def test_snapshot_train_and_infer_with_real_workers(
    client: Client, settings: DurabertSettings, tiny_model_dir: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings.queues.data, settings.queues.gpu, settings.queues.inference, settings.queues.orchestrator = (
        f"data-{suffix}",
        f"gpu-{suffix}",
        f"infer-{suffix}",
        f"orch-{suffix}",
    )
    data_file = write_reviews(settings.data_dir / "reviews.jsonl", rows=240)
    run_id = f"e2e-{suffix}"
    config = BertFineTuneConfig(
        run_id=run_id,
        model_name=str(tiny_model_dir),
        dataset_name="json",
        data_files=str(data_file),
        text_field="sentence",
        max_steps=120,
        checkpoint_steps=40,
        batch_size=8,
        max_seq_length=32,
        learning_rate=5e-3,
        use_gpu=False,
    )

    async with AsyncExitStack() as stack:
        for role in (orchestrator_spec(settings), data_spec(settings), gpu_spec(settings)):
            for spec in role.all_specs():  # the GPU worker's inference queue too
                await stack.enter_async_context(build_worker(client, settings, spec))
        handle = await client.start_workflow(
            names.TRAINING_WORKFLOW,
            config,
            id=run_id,
            task_queue=settings.queues.orchestrator,
            memo=settings.queue_memo(),
            result_type=BertFineTuneResult,
        )
        result = await handle.result()
        progress = await handle.query(names.GET_PROGRESS_QUERY, result_type=TrainingProgress)
        # Clear reviews, not the training rows themselves: other nouns, the same sentiment words.
        texts = [f"the acting was {word} and the music felt {word}" for word in POSITIVE[:4] + NEGATIVE[:4]]
        expected = ["positive"] * 4 + ["negative"] * 4
        prediction = await client.execute_workflow(
            names.INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id=run_id, texts=texts, max_seq_length=32, use_gpu=False),
            id=f"infer-{run_id}",
            task_queue=settings.queues.orchestrator,
            memo=settings.queue_memo(),
            result_type=BertInferenceResult,
        )
        await record_history(handle, "training_end_to_end")

    # The result says what happened, and the artifacts are where it says.
    assert result.run_id == run_id
    assert result.global_step == 120
    assert result.resumed_from_step is None
    assert result.attempts == 1
    assert result.device == "cpu"
    assert result.label_names == ["negative", "positive"]
    assert result.eval_metrics is not None
    assert "eval_loss" in result.eval_metrics
    # The held-out split is the same kind of text: a trained model gets it (nearly) all right.
    assert result.eval_metrics["eval_accuracy"] >= 0.9
    assert result.dataset_snapshot is not None
    snapshot_dir = settings.artifact_dir / result.dataset_snapshot.snapshot_path
    assert (snapshot_dir / "manifest.json").is_file()
    model_dir = settings.artifact_dir / result.model_path
    assert (model_dir / "config.json").is_file()
    assert result.total_checkpoints_saved == 3

    # Queries after the end show the whole story.
    assert progress.stage == "completed"
    assert progress.step == 120
    assert progress.checkpoints_saved == 3
    assert progress.latest_checkpoint is not None
    assert progress.latest_checkpoint.step == 120
    assert progress.snapshot_id == result.dataset_snapshot.snapshot_id

    # The model learnt the toy data: an untrained head gets 4 of 8 (one label for all).
    assert prediction.texts == texts
    right = sum(got == want for got, want in zip(prediction.predicted_label_names, expected, strict=True))
    assert right >= 7, f"{right}/8 right: {list(zip(texts, prediction.predicted_label_names, strict=True))}"

    # And the inference activity answers what the published model folder answers on its own.
    from transformers import pipeline

    reference = pipeline("text-classification", model=str(model_dir), device="cpu")(texts)
    assert prediction.predicted_label_names == [item["label"] for item in reference]
    assert prediction.predicted_labels == [result.label_names.index(item["label"]) for item in reference]
    for confidence, item in zip(prediction.confidences, reference, strict=True):
        assert abs(confidence - item["score"]) < 1e-4
