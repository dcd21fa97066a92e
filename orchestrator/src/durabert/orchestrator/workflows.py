"""The durable control flow: snapshot, checkpointed fine-tuning with resume, and inference.

Workflows stay deterministic and small: every I/O and ML step is an activity on the data
or GPU queue, called through the typed stubs in :mod:`durabert.shared.activities`.

Training retries are run by this workflow, not by the server's retry policy, because each
new attempt must carry the newest checkpoint the workflow has been told about: a server
retry would resend the first attempt's input (the seed's fault) and make resume depend on
one worker's disk scan.
"""

import asyncio
import re
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from durabert.shared import activities, names
    from durabert.shared.errors import NON_RETRYABLE_ERROR_TYPES, invalid_input, parse_workflow_args
    from durabert.shared.models import (
        BertFineTuneConfig,
        BertFineTuneRequest,
        BertFineTuneResult,
        BertInferenceRequest,
        BertInferenceResult,
        CheckpointInfo,
        DatasetSnapshotResult,
        TrainingProgress,
    )
    from durabert.shared.settings import QueueSettings


def normalise_run_id(workflow_id: str) -> str:
    """Derive a valid run id from a workflow id (lower case, safe characters, 63 at most).

    Args:
        workflow_id: The workflow's id.

    Returns:
        A string matching ``RUN_ID_PATTERN``.
    """
    text = re.sub(r"[^a-z0-9._-]+", "-", workflow_id.lower()).replace("..", ".")
    text = text.strip("._-")[:63].rstrip("._-")
    return text or "run"


def _activity_queues() -> QueueSettings:
    """Queues for the activities: the starter's memo overrides the defaults (tests use random ones)."""
    memo = workflow.memo_value(names.QUEUES_MEMO_KEY, default=None)
    return QueueSettings.model_validate(memo if isinstance(memo, dict) else {})


def _is_non_retryable(error: ActivityError) -> bool:
    cause = error.cause
    return isinstance(cause, ApplicationError) and (
        cause.non_retryable or cause.type in NON_RETRYABLE_ERROR_TYPES
    )


@workflow.defn(name=names.TRAINING_WORKFLOW)
class CheckpointedBertTrainingWorkflow:
    """Snapshot the dataset, then fine-tune with checkpoints, resuming after every failure."""

    def __init__(self) -> None:
        """Start with an empty progress record."""
        self._progress = TrainingProgress()

    @workflow.run
    async def run(self, *args: Any) -> BertFineTuneResult:
        """Run the whole training pipeline.

        Args:
            *args: Exactly one ``BertFineTuneConfig`` (plain JSON from the ``temporal`` CLI
                works). Anything else, or a config with a bad field, fails the workflow with
                an ``InvalidInputError`` naming the problem, without retries.

        Returns:
            The fine-tuning result of the attempt that finished.
        """
        try:
            cfg = parse_workflow_args(BertFineTuneConfig, args)
            run_id = self._run_id(cfg)
            self._progress.run_id = run_id
            snapshot = await self._snapshot(cfg, run_id)
            result = await self._train(cfg, run_id, snapshot)
        except ApplicationError as exc:
            self._progress.stage = "failed"
            self._progress.error = exc.message
            raise
        except (ActivityError, asyncio.CancelledError) as exc:
            if is_cancelled_exception(exc):
                self._progress.stage = "cancelled"
            else:
                self._progress.stage = "failed"
                self._progress.error = str(exc.cause or exc) if isinstance(exc, ActivityError) else str(exc)
            raise
        self._progress.stage = "completed"
        self._progress.step = result.global_step
        return result

    def _run_id(self, cfg: BertFineTuneConfig) -> str:
        workflow_id = workflow.info().workflow_id
        if cfg.run_id is None:
            return normalise_run_id(workflow_id)
        if cfg.run_id != workflow_id:
            # Temporal refuses a second running workflow with the same id; tying the run id
            # to it is what keeps two runs from writing into one folder.
            raise invalid_input(
                f"{cfg.run_id!r} differs from the workflow id {workflow_id!r}; start the "
                "workflow with id equal to run_id (or leave run_id empty to derive it)",
                field="run_id",
            )
        return cfg.run_id

    async def _snapshot(self, cfg: BertFineTuneConfig, run_id: str) -> DatasetSnapshotResult:
        self._progress.stage = "snapshotting"
        timeouts = cfg.timeouts
        snapshot = await workflow.execute_activity(
            activities.create_dataset_snapshot,
            cfg.snapshot_request(run_id),
            task_queue=_activity_queues().data,
            start_to_close_timeout=timedelta(seconds=timeouts.snapshot_timeout_seconds),
            heartbeat_timeout=timedelta(seconds=timeouts.snapshot_heartbeat_timeout_seconds),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=timeouts.retry_initial_interval_seconds),
                maximum_interval=timedelta(seconds=timeouts.retry_maximum_interval_seconds),
                maximum_attempts=cfg.max_attempts,
                non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
            ),
        )
        self._progress.snapshot_id = snapshot.snapshot_id
        return snapshot

    async def _train(
        self, cfg: BertFineTuneConfig, run_id: str, snapshot: DatasetSnapshotResult
    ) -> BertFineTuneResult:
        self._progress.stage = "training"
        timeouts = cfg.timeouts
        pause = timeouts.retry_initial_interval_seconds
        for attempt in range(1, cfg.max_attempts + 1):
            latest = self._progress.latest_checkpoint
            if attempt > 1 and latest is not None:
                self._progress.resumes += 1
            self._progress.attempt = attempt
            request = BertFineTuneRequest(
                run_id=run_id,
                config=cfg,
                dataset_snapshot=snapshot,
                resume_from_checkpoint=latest.path if latest else None,
                attempt=attempt,
            )
            try:
                return await workflow.execute_activity(
                    activities.fine_tune_bert,
                    request,
                    task_queue=_activity_queues().gpu,
                    start_to_close_timeout=timedelta(hours=timeouts.training_timeout_hours),
                    heartbeat_timeout=timedelta(seconds=cfg.heartbeat_timeout_seconds),
                    # One server-side attempt per call: this loop is the retry policy.
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    # Wait for the worker to acknowledge a cancel, so the GPU is free when
                    # the workflow reports "cancelled".
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            except ActivityError as exc:
                # A cancelled activity means the workflow itself is being cancelled: no retry.
                if is_cancelled_exception(exc) or _is_non_retryable(exc) or attempt == cfg.max_attempts:
                    raise
                workflow.logger.warning(
                    "fine-tuning attempt failed; retrying from the latest checkpoint",
                    extra={"run_id": run_id, "attempt": attempt, "error": str(exc.cause or exc)},
                )
                await workflow.sleep(timedelta(seconds=pause))
                pause = min(pause * 2, timeouts.retry_maximum_interval_seconds)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    @workflow.signal(name=names.UPDATE_CHECKPOINT_SIGNAL)
    def update_checkpoint(self, info: CheckpointInfo) -> None:
        """Record a saved checkpoint or a progress update from the training activity.

        Args:
            info: The event; ``path`` is set only for a complete checkpoint.
        """
        progress = self._progress
        # A slow signal from an older attempt must not move progress backwards.
        if info.attempt >= progress.attempt or info.step >= progress.step:
            progress.step = info.step
            progress.epoch = info.epoch
            progress.loss = info.loss if info.loss is not None else progress.loss
            progress.max_steps = info.max_steps or progress.max_steps
        if info.path is not None:
            progress.checkpoints_saved += 1
            latest = progress.latest_checkpoint
            if latest is None or info.step >= latest.step:
                progress.latest_checkpoint = info

    @workflow.query(name=names.GET_LATEST_CHECKPOINT_QUERY)
    def get_latest_checkpoint(self) -> CheckpointInfo | None:
        """Return the newest complete checkpoint the workflow knows, if any."""
        return self._progress.latest_checkpoint

    @workflow.query(name=names.GET_PROGRESS_QUERY)
    def get_progress(self) -> TrainingProgress:
        """Return stage, step of max steps, epoch, loss, latest checkpoint, attempt and resumes."""
        return self._progress


@workflow.defn(name=names.INFERENCE_WORKFLOW)
class BertInferenceWorkflow:
    """Classify texts with a finished run's model: one activity on the GPU queue."""

    @workflow.run
    async def run(self, *args: Any) -> BertInferenceResult:
        """Run inference.

        Args:
            *args: Exactly one ``BertInferenceRequest`` (texts and the run whose model to
                use); anything else fails the workflow with an ``InvalidInputError``.

        Returns:
            Predictions, names and confidences.
        """
        req = parse_workflow_args(BertInferenceRequest, args)
        return await workflow.execute_activity(
            activities.run_bert_inference,
            req,
            task_queue=_activity_queues().gpu,
            start_to_close_timeout=timedelta(seconds=req.timeout_seconds),
            retry_policy=RetryPolicy(
                maximum_attempts=3, non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES)
            ),
        )


WORKFLOWS: list[type] = [CheckpointedBertTrainingWorkflow, BertInferenceWorkflow]
"""Every workflow the orchestrator worker registers."""
