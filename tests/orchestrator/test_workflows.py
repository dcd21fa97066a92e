"""The training and inference workflows against a real dev server, with activities mocked.

Mock activities are registered under the real activity names on random queues (the
samples' pattern), so the workflow logic (retries that carry the latest checkpoint,
non-retryable errors, input validation, queries) is tested in isolation; the
end-to-end tests run the real workers.
"""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from durabert.orchestrator.workflows import (
    WORKFLOWS,
    BertInferenceWorkflow,
    CheckpointedBertTrainingWorkflow,
    normalise_run_id,
)
from durabert.shared import names
from durabert.shared.errors import ErrorType, configuration_error
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    CheckpointInfo,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    TrainingProgress,
)
from durabert.shared.settings import DurabertSettings, QueueSettings
from support.histories import record_history

FAST = {"retry_initial_interval_seconds": 0.1, "retry_maximum_interval_seconds": 0.2}


def _config(**overrides: Any) -> BertFineTuneConfig:
    base: dict[str, Any] = {
        "dataset_name": "json",
        "data_files": "/data/reviews.jsonl",
        "max_steps": 20,
        "checkpoint_steps": 5,
        "max_attempts": 3,
        "timeouts": FAST,
    }
    return BertFineTuneConfig.model_validate(base | overrides)


def _snapshot(request: DatasetSnapshotRequest) -> DatasetSnapshotResult:
    return DatasetSnapshotResult(
        snapshot_id="abc123",
        dataset_name=request.dataset_name,
        num_train_samples=10,
        num_eval_samples=2,
        data_hash="0" * 64,
        snapshot_timestamp=datetime.now(UTC).isoformat(),
        snapshot_path="snapshots/abc123",
        label_names=["negative", "positive"],
        text_field=request.text_field,
        label_field=request.label_field,
    )


def _result(request: BertFineTuneRequest, resumed: int | None) -> BertFineTuneResult:
    return BertFineTuneResult(
        run_id=request.run_id,
        config=request.config,
        train_loss=0.5,
        training_time_seconds=1.0,
        num_parameters=1,
        total_checkpoints_saved=4,
        global_step=request.config.max_steps or 0,
        resumed_from_step=resumed,
        attempts=request.attempt,
        device="cpu",
        model_path=f"runs/{request.run_id}/model",
    )


class FakeWorkers:
    """Three workers on random queues; the GPU activity's behaviour is given by the test."""

    def __init__(self, client: Client, fine_tune: Callable[..., Any]) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.settings = DurabertSettings(
            queues=QueueSettings(data=f"data-{suffix}", gpu=f"gpu-{suffix}", orchestrator=f"orch-{suffix}")
        )
        self.snapshot_requests: list[DatasetSnapshotRequest] = []

        @activity.defn(name=names.CREATE_DATASET_SNAPSHOT)
        async def snapshot(request: DatasetSnapshotRequest) -> DatasetSnapshotResult:
            self.snapshot_requests.append(request)
            return _snapshot(request)

        queues = self.settings.queues
        self.workers = [
            Worker(client, task_queue=queues.orchestrator, workflows=WORKFLOWS),
            Worker(client, task_queue=queues.data, activities=[snapshot]),
            Worker(client, task_queue=queues.gpu, activities=[fine_tune]),
        ]
        self.client = client

    async def __aenter__(self) -> "FakeWorkers":
        for worker in self.workers:
            await worker.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in self.workers:
            await worker.__aexit__(None, None, None)

    async def train(self, config: BertFineTuneConfig | dict[str, Any], workflow_id: str) -> Any:
        return await self.client.execute_workflow(
            CheckpointedBertTrainingWorkflow.run,
            config,
            id=workflow_id,
            task_queue=self.settings.queues.orchestrator,
            memo=self.settings.queue_memo(),
        )


async def _signal(info: CheckpointInfo) -> None:
    handle = activity.client().get_workflow_handle(activity.info().workflow_id)
    await handle.signal(names.UPDATE_CHECKPOINT_SIGNAL, info)


def _checkpoint(run_id: str, step: int, attempt: int) -> CheckpointInfo:
    return CheckpointInfo(
        epoch=step / 20,
        step=step,
        path=f"runs/{run_id}/checkpoints/checkpoint-{step}",
        loss=1.0 / step,
        timestamp=datetime.now(UTC).isoformat(),
        max_steps=20,
        attempt=attempt,
    )


async def test_failed_attempt_is_retried_with_the_latest_checkpoint(client: Client) -> None:
    seen: list[BertFineTuneRequest] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        seen.append(request)
        if request.attempt == 1:
            await _signal(_checkpoint(request.run_id, 5, 1))
            await _signal(_checkpoint(request.run_id, 10, 1))
            raise RuntimeError("worker lost its GPU")  # retryable
        return _result(request, resumed=10)

    run_id = f"wf-{uuid.uuid4().hex[:8]}"
    async with FakeWorkers(client, fine_tune) as fake:
        result = await fake.train(_config(run_id=run_id), run_id)
        progress = await client.get_workflow_handle(run_id).query(
            CheckpointedBertTrainingWorkflow.get_progress
        )
        latest = await client.get_workflow_handle(run_id).query(
            CheckpointedBertTrainingWorkflow.get_latest_checkpoint
        )
        await record_history(client.get_workflow_handle(run_id), "training_retry_with_checkpoint")

    assert [r.attempt for r in seen] == [1, 2]
    assert seen[0].resume_from_checkpoint is None
    assert seen[1].resume_from_checkpoint == f"runs/{run_id}/checkpoints/checkpoint-10"
    assert seen[1].dataset_snapshot.snapshot_id == "abc123"
    assert result.global_step == 20
    assert result.resumed_from_step == 10
    assert isinstance(progress, TrainingProgress)
    assert progress.stage == "completed"
    assert progress.resumes == 1
    assert progress.checkpoints_saved == 2
    assert progress.snapshot_id == "abc123"
    assert latest is not None
    assert latest.step == 10


async def test_non_retryable_error_fails_at_once(client: Client) -> None:
    calls = 0

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        nonlocal calls
        calls += 1
        raise configuration_error("model_name: no model folder at /nope")

    run_id = f"wf-{uuid.uuid4().hex[:8]}"
    async with FakeWorkers(client, fine_tune) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(_config(run_id=run_id), run_id)
        progress = await client.get_workflow_handle(run_id).query(
            CheckpointedBertTrainingWorkflow.get_progress
        )
        await record_history(client.get_workflow_handle(run_id), "training_non_retryable_failure")

    assert calls == 1
    cause = info.value.cause.cause  # ActivityError -> ApplicationError
    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorType.CONFIGURATION
    assert progress.stage == "failed"
    assert progress.error is not None
    assert "model_name" in progress.error


async def test_attempts_are_bounded_by_max_attempts(client: Client) -> None:
    attempts: list[int] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        attempts.append(request.attempt)
        raise RuntimeError("flaky node")

    run_id = f"wf-{uuid.uuid4().hex[:8]}"
    async with FakeWorkers(client, fine_tune) as fake:
        with pytest.raises(WorkflowFailureError):
            await fake.train(_config(run_id=run_id, max_attempts=2), run_id)
    assert attempts == [1, 2]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"dataset_name": "json", "data_files": "x.jsonl", "learning_rat": 0.1}, "learning_rat"),
        ({"dataset_name": "json", "data_files": "x.jsonl", "batch_size": 0}, "batch_size"),
        ({"dataset_name": "json"}, "data_files"),
        ({"dataset_name": "json", "data_files": "x.jsonl", "run_id": "../etc"}, "run_id"),
    ],
)
async def test_invalid_json_input_fails_fast_naming_the_field(
    client: Client, raw: dict[str, Any], field: str
) -> None:
    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        raise AssertionError("must not be reached")

    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"
    async with FakeWorkers(client, fine_tune) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(raw, workflow_id)
        assert fake.snapshot_requests == []
        if field == "learning_rat":
            await record_history(client.get_workflow_handle(workflow_id), "training_invalid_input")
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorType.INVALID_INPUT
    assert cause.non_retryable
    assert field in cause.message


async def test_run_id_must_match_the_workflow_id(client: Client) -> None:
    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        raise AssertionError("must not be reached")

    async with FakeWorkers(client, fine_tune) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(_config(run_id="some-run"), f"other-{uuid.uuid4().hex[:6]}")
    assert "run_id" in str(info.value.cause)


async def test_run_id_is_derived_from_the_workflow_id(client: Client) -> None:
    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        return _result(request, resumed=None)

    workflow_id = f"My Run_{uuid.uuid4().hex[:6]}!"
    async with FakeWorkers(client, fine_tune) as fake:
        result = await fake.train(_config(), workflow_id)
        assert fake.snapshot_requests[0].run_id == result.run_id
    assert result.run_id == normalise_run_id(workflow_id)
    assert result.run_id.startswith("my-run_")


def test_normalise_run_id_gives_valid_ids() -> None:
    from durabert.shared.models import RUN_ID_PATTERN

    for raw in ["Hello World", "../../etc/passwd", "-x-", "a" * 200, "..", "UPPER.case..dots"]:
        assert RUN_ID_PATTERN.fullmatch(normalise_run_id(raw)), raw


async def test_inference_workflow_runs_the_activity_and_refuses_bad_input(client: Client) -> None:
    @activity.defn(name=names.RUN_BERT_INFERENCE)
    async def infer(request: BertInferenceRequest) -> BertInferenceResult:
        return BertInferenceResult(
            run_id=request.run_id,
            texts=request.texts,
            predicted_labels=[1] * len(request.texts),
            predicted_label_names=["positive"] * len(request.texts),
            confidences=[0.9] * len(request.texts),
            label_names=["negative", "positive"],
        )

    queue = f"orch-{uuid.uuid4().hex[:8]}"
    gpu = f"gpu-{uuid.uuid4().hex[:8]}"
    memo = {names.QUEUES_MEMO_KEY: {"gpu": gpu}}
    async with (
        Worker(client, task_queue=queue, workflows=WORKFLOWS),
        Worker(client, task_queue=gpu, activities=[infer]),
    ):
        infer_id = f"infer-{uuid.uuid4().hex[:8]}"
        result = await client.execute_workflow(
            BertInferenceWorkflow.run,
            BertInferenceRequest(run_id="r1", texts=["great", "awful"]),
            id=infer_id,
            task_queue=queue,
            memo=memo,
        )
        await record_history(client.get_workflow_handle(infer_id), "inference")
        with pytest.raises(WorkflowFailureError) as info:
            await client.execute_workflow(
                names.INFERENCE_WORKFLOW,
                {"run_id": "r1", "texts": ["x"] * 257},
                id=f"infer-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
                memo=memo,
            )
    assert result.predicted_label_names == ["positive", "positive"]
    assert "texts" in str(info.value.cause)
