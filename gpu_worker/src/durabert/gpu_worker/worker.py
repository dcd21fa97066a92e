"""``durabert-gpu-worker``: fine-tuning and inference on ``gpu-queue``."""

from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.supervisor import warm_up
from durabert.shared.cli_support import run_worker_main
from durabert.shared.runner import WorkerSpec
from durabert.shared.settings import DurabertSettings


def build_spec(settings: DurabertSettings) -> WorkerSpec:
    """Describe the GPU worker: its queue, activities and one slot per GPU.

    Both activities are ``async def``: training runs in a child process supervised from
    the event loop, inference in a thread, so no activity executor is needed.

    Args:
        settings: durabert settings.

    Returns:
        The worker spec.
    """
    activities = GpuActivities(settings)
    warm_up()
    return WorkerSpec(
        role="gpu",
        task_queue=settings.queues.gpu,
        activities=[activities.fine_tune_bert, activities.run_bert_inference],
        max_concurrent_activities=settings.gpu.max_concurrent_activities,
    )


def main() -> None:
    """Run the GPU worker until SIGTERM or SIGINT."""
    run_worker_main(build_spec, uses_artifacts=True)
