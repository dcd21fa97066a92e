"""``BertBatchInferenceWorkflow``: score a whole dataset with a finished run's model, durably.

Two activities: ``create_scoring_snapshot`` on the data queue freezes the rows (no labels,
input order, every row), then ``score_dataset`` on the *training* queue scores them in chunks
stored complete-or-not. Scoring is long, heavy GPU work like training, so it takes a training
slot and leaves the inference slots to online requests. The server's retry policy retries a
lost scoring attempt: unlike training, every attempt's input is the same, and the worker finds
the chunks already stored itself, so a retry resumes at the first missing chunk.

The workflow's ``get_progress`` query gives the durable view (stage, snapshot, the result);
the live chunk and row counts are the pending activity's heartbeat details (no history cost),
merged client-side by :meth:`BatchInferenceProgress.with_heartbeat`.
"""

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from durabert.shared import activities, names
    from durabert.shared.errors import NON_RETRYABLE_ERROR_TYPES, parse_workflow_args
    from durabert.shared.models import (
        BatchInferenceProgress,
        BatchScoringRequest,
        BertBatchInferenceRequest,
        BertBatchInferenceResult,
        ScoringSnapshotResult,
    )
    from durabert.shared.settings import QueueSettings

RETRY_INITIAL_INTERVAL = timedelta(seconds=2)
"""Pause before the first retry of a step; doubles each retry."""
RETRY_MAXIMUM_INTERVAL = timedelta(seconds=60)
"""Longest pause between retries."""
SNAPSHOT_HEARTBEAT_TIMEOUT = timedelta(seconds=120)
"""A silent data worker is presumed dead after this long (it heartbeats from a thread)."""


def _queues() -> QueueSettings:
    """The activities' queues: the starter's memo (``settings.queue_memo()``) over the defaults."""
    memo = workflow.memo_value(names.QUEUES_MEMO_KEY, default=None)
    return QueueSettings.model_validate(memo if isinstance(memo, dict) else {})


def _retry_policy(request: BertBatchInferenceRequest) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=RETRY_INITIAL_INTERVAL,
        maximum_interval=RETRY_MAXIMUM_INTERVAL,
        maximum_attempts=request.max_attempts,
        non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
    )


@workflow.defn(name=names.BATCH_INFERENCE_WORKFLOW)
class BertBatchInferenceWorkflow:
    """Snapshot a dataset to score, then score it in stored chunks with a finished run's model.

    A versioned orchestrator registers :class:`PinnedBertBatchInferenceWorkflow` instead.
    """

    def __init__(self) -> None:
        """Start with an empty progress record."""
        self._progress = BatchInferenceProgress()

    @workflow.run
    async def run(self, *args: Any) -> BertBatchInferenceResult:
        """Score the dataset.

        Args:
            *args: Exactly one ``BertBatchInferenceRequest``; anything else, or a bad field, fails
                the workflow with an ``InvalidInputError`` naming the problem, without retries.

        Returns:
            Where the output Parquet is, rows, chunks and the chunks resumed.
        """
        try:
            request = parse_workflow_args(BertBatchInferenceRequest, args)
            self._progress.run_id = request.run_id
            snapshot = await self._snapshot(request)
            result = await self._score(request, snapshot)
        except ApplicationError as exc:
            self._fail(exc.message)
            raise
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                self._progress.stage = "cancelled"
            else:
                self._fail(str(exc.cause or exc))
            raise
        self._progress.stage = "completed"
        self._progress.output_path = result.output_path
        self._progress.chunks_done = self._progress.chunks = result.chunks
        self._progress.rows_done = result.num_rows
        self._progress.resumed_chunks = result.resumed_chunks
        return result

    def _fail(self, message: str) -> None:
        self._progress.stage = "failed"
        self._progress.error = message

    async def _snapshot(self, request: BertBatchInferenceRequest) -> ScoringSnapshotResult:
        self._progress.stage = "snapshotting"
        snapshot = await workflow.execute_activity(
            activities.create_scoring_snapshot,
            request.snapshot_request(),
            task_queue=_queues().data,
            start_to_close_timeout=timedelta(hours=request.timeout_hours),
            heartbeat_timeout=SNAPSHOT_HEARTBEAT_TIMEOUT,
            retry_policy=_retry_policy(request),
        )
        self._progress.snapshot_id = snapshot.snapshot_id
        self._progress.num_rows = snapshot.num_rows
        return snapshot

    async def _score(
        self, request: BertBatchInferenceRequest, snapshot: ScoringSnapshotResult
    ) -> BertBatchInferenceResult:
        self._progress.stage = "scoring"
        return await workflow.execute_activity(
            activities.score_dataset,
            BatchScoringRequest(request=request, snapshot=snapshot),
            task_queue=_queues().gpu,
            start_to_close_timeout=timedelta(hours=request.timeout_hours),
            heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds),
            retry_policy=_retry_policy(request),
            # Wait for the worker to stop its forward passes, so the GPU is free when "cancelled" shows.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    @workflow.query(name=names.GET_PROGRESS_QUERY)
    def get_progress(self) -> BatchInferenceProgress:
        """Return the durable view: stage, snapshot, rows; live chunk counts come from the heartbeat."""
        return self._progress


@workflow.defn(name=names.BATCH_INFERENCE_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class PinnedBertBatchInferenceWorkflow(BertBatchInferenceWorkflow):
    """The batch scoring workflow as a versioned orchestrator registers it: pinned to its build.

    Scoring a large dataset can take hours, like training: a running one finishes on the build that
    started it rather than replaying its history on newer workflow code.
    """

    @workflow.run
    async def run(self, *args: Any) -> BertBatchInferenceResult:
        """Score the dataset (see :meth:`BertBatchInferenceWorkflow.run`).

        Args:
            *args: As for :meth:`BertBatchInferenceWorkflow.run`.

        Returns:
            The scoring result.
        """
        return await super().run(*args)
