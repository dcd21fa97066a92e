"""``BertEvaluationWorkflow``: measure a finished run's model on a labelled dataset, durably.

Two activities: ``create_dataset_snapshot`` on the data queue freezes the labelled rows (the
training snapshot, asked to keep every row of the chosen split, cached by content), then
``evaluate_bert`` on the *training* queue scores them and stores the report. Evaluating a test
set is heavy GPU work like scoring, so it takes a training slot and leaves the inference slots to
online requests. Both steps are retried by the server's retry policy: every attempt's input is
the same, the snapshot is found by content and the model stays warm, so a preempted evaluation
starts again on the next worker and writes the same report.
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
        BertEvaluationRequest,
        BertEvaluationResult,
        DatasetSnapshotResult,
        EvaluateBertRequest,
        EvaluationProgress,
    )

# The queues from the starter's memo and the retry pacing are batch scoring's, from their one home.
from durabert.orchestrator.batch_workflow import (
    RETRY_INITIAL_INTERVAL,
    RETRY_MAXIMUM_INTERVAL,
    SNAPSHOT_HEARTBEAT_TIMEOUT,
    _queues,
)


def _retry_policy(request: BertEvaluationRequest) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=RETRY_INITIAL_INTERVAL,
        maximum_interval=RETRY_MAXIMUM_INTERVAL,
        maximum_attempts=request.max_attempts,
        non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
    )


@workflow.defn(name=names.EVALUATION_WORKFLOW)
class BertEvaluationWorkflow:
    """Snapshot a labelled dataset, then evaluate a finished run's model on it.

    A versioned orchestrator registers :class:`PinnedBertEvaluationWorkflow` instead.
    """

    def __init__(self) -> None:
        """Start with an empty progress record."""
        self._progress = EvaluationProgress()

    @workflow.run
    async def run(self, *args: Any) -> BertEvaluationResult:
        """Evaluate the model.

        Args:
            *args: Exactly one ``BertEvaluationRequest``; anything else, or a bad field, fails the
                workflow with an ``InvalidInputError`` naming the problem, without retries.

        Returns:
            Accuracy, macro F1, per-class metrics, the confusion matrix and the report's path.
        """
        try:
            request = parse_workflow_args(BertEvaluationRequest, args)
            self._progress.run_id = request.run_id
            snapshot = await self._snapshot(request)
            result = await self._evaluate(request, snapshot)
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
        self._progress.report_path = result.report_path
        return result

    def _fail(self, message: str) -> None:
        self._progress.stage = "failed"
        self._progress.error = message

    async def _snapshot(self, request: BertEvaluationRequest) -> DatasetSnapshotResult:
        self._progress.stage = "snapshotting"
        snapshot = await workflow.execute_activity(
            activities.create_dataset_snapshot,
            request.snapshot_request(),
            task_queue=_queues().data,
            start_to_close_timeout=timedelta(hours=request.timeout_hours),
            heartbeat_timeout=SNAPSHOT_HEARTBEAT_TIMEOUT,
            retry_policy=_retry_policy(request),
        )
        self._progress.snapshot_id = snapshot.snapshot_id
        return snapshot

    async def _evaluate(
        self, request: BertEvaluationRequest, snapshot: DatasetSnapshotResult
    ) -> BertEvaluationResult:
        self._progress.stage = "evaluating"
        return await workflow.execute_activity(
            activities.evaluate_bert,
            EvaluateBertRequest(request=request, snapshot=snapshot),
            task_queue=_queues().gpu,
            start_to_close_timeout=timedelta(hours=request.timeout_hours),
            heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds),
            retry_policy=_retry_policy(request),
            # Wait for the worker to stop its forward passes, so the GPU is free when "cancelled" shows.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    @workflow.query(name=names.GET_PROGRESS_QUERY)
    def get_progress(self) -> EvaluationProgress:
        """Return the durable view: stage, snapshot, report."""
        return self._progress


@workflow.defn(name=names.EVALUATION_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class PinnedBertEvaluationWorkflow(BertEvaluationWorkflow):
    """The evaluation workflow as a versioned orchestrator registers it: pinned to its build.

    Evaluating a large test set can take a while: a running one finishes on the build that
    started it rather than replaying its history on newer workflow code.
    """

    @workflow.run
    async def run(self, *args: Any) -> BertEvaluationResult:
        """Evaluate the model (see :meth:`BertEvaluationWorkflow.run`).

        Args:
            *args: As for :meth:`BertEvaluationWorkflow.run`.

        Returns:
            The evaluation result.
        """
        return await super().run(*args)
