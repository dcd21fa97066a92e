"""The real workflows with fake activities: three in-process workers on random queues.

The GPU activity's behaviour is given by each test (registered under the real activity name,
the samples' pattern); the data worker runs a fake snapshot and the *real* ``claim_run``
against the test's artifact store, so run-id reuse is tested on real run records.
"""

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from durabert.data_worker.run_claims import RunClaimActivities
from durabert.orchestrator.workflows import WORKFLOWS, CheckpointedBertTrainingWorkflow
from durabert.shared import names
from durabert.shared.errors import ErrorType, retryable_error
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertFineTuneResult,
    CheckpointInfo,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    TrainingHeartbeat,
)
from durabert.shared.settings import DurabertSettings, QueueSettings

FAST = {"retry_initial_interval_seconds": 0.1, "retry_maximum_interval_seconds": 0.2}


def config(**overrides: Any) -> BertFineTuneConfig:
    base: dict[str, Any] = {
        "dataset_name": "json",
        "data_files": "/data/reviews.jsonl",
        "max_steps": 20,
        "checkpoint_steps": 5,
        "max_attempts": 3,
        "timeouts": FAST,
    }
    return BertFineTuneConfig.model_validate(base | overrides)


def new_run_id(prefix: str = "wf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def snapshot_for(request: DatasetSnapshotRequest) -> DatasetSnapshotResult:
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


def result_for(request: BertFineTuneRequest, resumed: int | None, **update: Any) -> BertFineTuneResult:
    result = BertFineTuneResult(
        run_id=request.run_id,
        config=request.config,
        train_loss=0.5,
        training_time_seconds=1.0,
        num_parameters=1,
        total_checkpoints_saved=4,
        global_step=request.config.max_steps or 0,
        resumed_from_step=resumed,
        attempts=1,  # the worker does not know; the workflow fills in the run's figures
        device="cpu",
        model_path=f"runs/{request.run_id}/model",
    )
    return result.model_copy(update=update)


def checkpoint(run_id: str, step: int, attempt: int, max_steps: int = 20) -> CheckpointInfo:
    return CheckpointInfo(
        epoch=step / max_steps,
        step=step,
        path=f"runs/{run_id}/checkpoints/checkpoint-{step}",
        loss=1.0 / step,
        timestamp=datetime.now(UTC).isoformat(),
        max_steps=max_steps,
        attempt=attempt,
    )


def heartbeat(request: BertFineTuneRequest, step: int, saved: int | None) -> TrainingHeartbeat:
    """What a GPU attempt reports at ``step`` with its newest complete checkpoint at ``saved``."""
    max_steps = request.config.max_steps or 20
    resumed = _step_of(request.resume_from_checkpoint)
    return TrainingHeartbeat(
        phase="training",
        step=step,
        max_steps=max_steps,
        epoch=step / max_steps,
        loss=1.0 / (step + 1),
        latest_checkpoint=checkpoint(request.run_id, saved, request.attempt, max_steps) if saved else None,
        resumed_from_step=resumed,
        attempt=request.attempt,
        updated_at=datetime.now(UTC).isoformat(),
    )


def _step_of(path: str | None) -> int | None:
    return int(path.rsplit("-", 1)[1]) if path else None


def preempted(request: BertFineTuneRequest, saved: int) -> ApplicationError:
    """The error a SIGTERMed GPU worker raises after saving a checkpoint at ``saved``."""
    details = heartbeat(request, saved, saved).model_dump(mode="json")
    return retryable_error(ErrorType.PREEMPTED, "worker shutting down; checkpoint saved", details)


def resumed_step(request: BertFineTuneRequest) -> int | None:
    """Step of the checkpoint a request resumes from."""
    return _step_of(request.resume_from_checkpoint)


class FakeWorkers:
    """Orchestrator, data and GPU workers on random queues; the GPU activity is the test's."""

    def __init__(self, client: Client, fine_tune: Callable[..., Any], artifact_root: Path) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.settings = DurabertSettings(
            queues=QueueSettings(data=f"data-{suffix}", gpu=f"gpu-{suffix}", orchestrator=f"orch-{suffix}"),
            artifact_root=artifact_root,
        )
        self.snapshot_requests: list[DatasetSnapshotRequest] = []

        @activity.defn(name=names.CREATE_DATASET_SNAPSHOT)
        async def snapshot(request: DatasetSnapshotRequest) -> DatasetSnapshotResult:
            self.snapshot_requests.append(request)
            return snapshot_for(request)

        queues = self.settings.queues
        self._executor = ThreadPoolExecutor(max_workers=2)
        claims = RunClaimActivities(self.settings)
        self.workers = [
            Worker(client, task_queue=queues.orchestrator, workflows=WORKFLOWS),
            Worker(
                client,
                task_queue=queues.data,
                activities=[snapshot, claims.claim_run],
                activity_executor=self._executor,
            ),
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
        self._executor.shutdown()

    async def start(
        self, cfg: BertFineTuneConfig | dict[str, Any], workflow_id: str
    ) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            CheckpointedBertTrainingWorkflow.run,
            cfg,
            id=workflow_id,
            task_queue=self.settings.queues.orchestrator,
            memo=self.settings.queue_memo(),
            result_type=BertFineTuneResult,
        )

    async def train(self, cfg: BertFineTuneConfig | dict[str, Any], workflow_id: str) -> Any:
        return await (await self.start(cfg, workflow_id)).result()


async def event_types(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Names of the events of one execution's history (``EVENT_TYPE_`` stripped)."""
    from temporalio.api.enums.v1 import EventType

    history = await handle.fetch_history()
    return [EventType.Name(event.event_type).removeprefix("EVENT_TYPE_") for event in history.events]
