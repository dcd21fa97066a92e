"""A tiny workflow that runs the snapshot activity on a given queue, for the worker tests."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from durabert.shared import activities
    from durabert.shared.errors import NON_RETRYABLE_ERROR_TYPES
    from durabert.shared.models import DatasetSnapshotRequest, DatasetSnapshotResult


@workflow.defn(name="DataWorkerSnapshotTestWorkflow")
class SnapshotTestWorkflow:
    """Calls ``create_dataset_snapshot`` the way the training workflow does."""

    @workflow.run
    async def run(self, request: DatasetSnapshotRequest, activity_queue: str) -> DatasetSnapshotResult:
        return await workflow.execute_activity(
            activities.create_dataset_snapshot,
            request,
            task_queue=activity_queue,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=100),
                maximum_attempts=3,
                non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
            ),
        )
