"""The training and inference workflows against a real dev server, with activities mocked.

Mock activities are registered under the real activity names on random queues (the
samples' pattern), so the workflow logic (retries that carry the latest checkpoint,
non-retryable errors, input validation, queries) is tested in isolation; the
end-to-end tests run the real workers. See ``fake_training`` for the workers; the
long-run behaviours (preemptions, continue-as-new, run-id reuse, versioning) are in
``test_long_runs_*``.
"""

import uuid
from pathlib import Path
from typing import Any

import pytest
from fake_training import FakeWorkers, config, event_types, heartbeat, new_run_id, result_for
from fake_training import preempted as preempted_at
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from durabert.orchestrator.workflows import WORKFLOWS, BertInferenceWorkflow, CheckpointedBertTrainingWorkflow
from durabert.shared import names
from durabert.shared.errors import ErrorType, configuration_error, retryable_error
from durabert.shared.models import (
    BertFineTuneRequest,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    TrainingProgress,
)
from support.histories import record_history


async def test_failed_attempt_is_retried_with_the_latest_checkpoint(
    client: Client, artifact_root: Path
) -> None:
    seen: list[BertFineTuneRequest] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        seen.append(request)
        if request.attempt == 1:
            # The training child died after saving checkpoint-10: the failure carries the
            # attempt's last state (no signal reaches the workflow).
            details = heartbeat(request, step=12, saved=10).model_dump(mode="json")
            raise retryable_error(ErrorType.PROCESS_DIED, "training child exited with -9", details)
        return result_for(request, resumed=10)

    run_id = new_run_id()
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        handle = await fake.start(config(run_id=run_id), run_id)
        result = await handle.result()
        progress = await handle.query(CheckpointedBertTrainingWorkflow.get_progress)
        latest = await handle.query(CheckpointedBertTrainingWorkflow.get_latest_checkpoint)
        events = await event_types(handle)
        await record_history(handle, "training_retry_with_checkpoint")

    assert [r.attempt for r in seen] == [1, 2]
    assert seen[0].resume_from_checkpoint is None
    assert seen[1].resume_from_checkpoint == f"runs/{run_id}/checkpoints/checkpoint-10"
    assert seen[1].dataset_snapshot.snapshot_id == "abc123"
    chain = handle.first_execution_run_id or handle.result_run_id
    assert [(r.fence.workflow_id, r.fence.chain_id, r.fence.seq) for r in seen if r.fence] == [
        (run_id, chain, 1),
        (run_id, chain, 2),
    ]
    assert result.global_step == 20
    assert result.resumed_from_step == 10
    # A crash after saving a newer checkpoint is progress: it does not use up max_attempts.
    assert (result.attempts, result.preemptions, result.failed_attempts) == (2, 1, 0)
    assert isinstance(progress, TrainingProgress)
    assert progress.stage == "completed"
    assert progress.resumes == 1
    assert (progress.preemptions, progress.failures) == (1, 0)
    assert progress.snapshot_id == "abc123"
    assert latest is not None
    assert latest.step == 10
    assert "WORKFLOW_EXECUTION_SIGNALED" not in events
    assert events.count("ACTIVITY_TASK_SCHEDULED") == 4  # claim, snapshot, two attempts


async def test_non_retryable_error_fails_at_once(client: Client, artifact_root: Path) -> None:
    calls = 0

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        nonlocal calls
        calls += 1
        raise configuration_error("model_name: no model folder at /nope")

    run_id = new_run_id()
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(config(run_id=run_id), run_id)
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


async def test_failures_without_progress_are_bounded_by_max_attempts(
    client: Client, artifact_root: Path
) -> None:
    attempts: list[int] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        attempts.append(request.attempt)
        if request.attempt == 1:
            raise preempted_at(request, 5)
        # From here on every attempt reports the checkpoint it started from: no progress.
        details = heartbeat(request, step=7, saved=5).model_dump(mode="json")
        raise retryable_error(ErrorType.PROCESS_DIED, "flaky node", details)

    run_id = new_run_id()
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(config(run_id=run_id, max_attempts=2), run_id)
        progress = await client.get_workflow_handle(run_id).query(
            CheckpointedBertTrainingWorkflow.get_progress
        )
    # The preemption was free; the two failures without progress used up max_attempts=2.
    assert attempts == [1, 2, 3]
    assert (progress.preemptions, progress.failures) == (1, 2)
    assert progress.stage == "failed"
    assert "flaky node" in str(info.value.cause.cause)


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
    client: Client, artifact_root: Path, raw: dict[str, Any], field: str
) -> None:
    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        raise AssertionError("must not be reached")

    workflow_id = new_run_id()
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
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


async def test_run_id_must_match_the_workflow_id(client: Client, artifact_root: Path) -> None:
    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        raise AssertionError("must not be reached")

    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(config(run_id="some-run"), f"other-{uuid.uuid4().hex[:6]}")
    assert "run_id" in str(info.value.cause)


@pytest.mark.parametrize("prefix", ["My Run_", "Train-BERT-", "run/../", "x" * 64])
async def test_a_workflow_id_that_is_not_a_run_id_is_refused(
    client: Client, artifact_root: Path, prefix: str
) -> None:
    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        raise AssertionError("must not be reached")

    workflow_id = f"{prefix}{uuid.uuid4().hex[:6]}"
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(config(), workflow_id)
        events = await event_types(client.get_workflow_handle(workflow_id))
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorType.INVALID_INPUT
    assert cause.non_retryable
    # Named, not folded into another id: Train-BERT and train-bert are two runs, or one is refused.
    assert repr(workflow_id) in cause.message
    assert "not a valid run id" in cause.message
    assert "ACTIVITY_TASK_SCHEDULED" not in events
    assert not (artifact_root / "runs").exists()


async def test_a_valid_workflow_id_is_the_run_id(client: Client, artifact_root: Path) -> None:
    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        return result_for(request, resumed=None)

    workflow_id = new_run_id("train-bert")
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        result = await fake.train(config(), workflow_id)
        assert fake.snapshot_requests[0].run_id == workflow_id
    assert result.run_id == workflow_id
    assert (artifact_root / "runs" / workflow_id / "run.json").is_file()


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
    inference = f"infer-{uuid.uuid4().hex[:8]}"
    memo = {names.QUEUES_MEMO_KEY: {"inference": inference}}  # the inference queue, never the GPU one
    async with (
        Worker(client, task_queue=queue, workflows=WORKFLOWS),
        Worker(client, task_queue=inference, activities=[infer]),
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
