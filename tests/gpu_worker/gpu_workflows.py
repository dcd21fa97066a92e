"""A tiny workflow that runs the real ``fine_tune_bert`` with a server-side retry policy, for worker tests."""

from datetime import timedelta

from temporalio import workflow
from temporalio.client import WorkflowHandle
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from durabert.orchestrator.client_ops import running_attempt
    from durabert.shared import activities
    from durabert.shared.errors import NON_RETRYABLE_ERROR_TYPES
    from durabert.shared.models import BertFineTuneRequest, BertFineTuneResult, TrainingHeartbeat


@workflow.defn(name="GpuTestTrainingWorkflow")
class GpuTestTrainingWorkflow:
    """Runs one fine-tuning activity on a given queue."""

    @workflow.run
    async def run(
        self, request: BertFineTuneRequest, gpu_queue: str, max_attempts: int
    ) -> BertFineTuneResult:
        return await workflow.execute_activity(
            activities.fine_tune_bert,
            request,
            task_queue=gpu_queue,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                maximum_attempts=max_attempts,
                initial_interval=timedelta(milliseconds=200),
                non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
            ),
        )


async def pending_heartbeat(client, handle: WorkflowHandle) -> TrainingHeartbeat | None:
    """The live heartbeat of the workflow's pending fine-tuning activity, read with ``describe``."""
    return await running_attempt(client, await handle.describe())
