"""A tiny workflow that runs the real ``fine_tune_bert`` and records its signals, for worker tests."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from durabert.shared import activities, names
    from durabert.shared.errors import NON_RETRYABLE_ERROR_TYPES
    from durabert.shared.models import BertFineTuneRequest, BertFineTuneResult, CheckpointInfo


@workflow.defn(name="GpuTestTrainingWorkflow")
class GpuTestTrainingWorkflow:
    """Runs one fine-tuning activity on a given queue; keeps every ``update_checkpoint`` signal."""

    def __init__(self) -> None:
        self.signals: list[CheckpointInfo] = []

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

    @workflow.signal(name=names.UPDATE_CHECKPOINT_SIGNAL)
    def update_checkpoint(self, info: CheckpointInfo) -> None:
        self.signals.append(info)

    @workflow.query(name="signals")
    def get_signals(self) -> list[CheckpointInfo]:
        return self.signals
