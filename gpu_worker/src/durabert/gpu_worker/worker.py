"""``durabert-gpu-worker``: fine-tuning on ``gpu-queue``, online inference on ``inference-queue``."""

from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.evaluation_activities import EvaluationActivities
from durabert.gpu_worker.scoring_activities import ScoringActivities
from durabert.gpu_worker.supervisor import warm_up
from durabert.gpu_worker.sweep_report import SweepReports
from durabert.shared.cli_support import run_worker_main
from durabert.shared.runner import WorkerSpec
from durabert.shared.settings import DurabertSettings


def build_spec(settings: DurabertSettings) -> WorkerSpec:
    """Describe the GPU worker: training on its queue with one slot per GPU, inference beside it.

    Inference polls a queue of its own with slots of its own, so a request is answered while
    every training slot is busy. Both activities are ``async def``: training runs in a child
    process supervised from the event loop, inference's forward passes in the batcher's thread,
    so no activity executor is needed.

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
        activities=[
            activities.fine_tune_bert,
            ScoringActivities(settings, activities.cache).score_dataset,
            EvaluationActivities(settings, activities.cache).evaluate_bert,
        ],
        max_concurrent_activities=settings.gpu.max_concurrent_activities,
        companions=[
            WorkerSpec(
                role="gpu-inference",
                task_queue=settings.queues.inference,
                # The sweep report is light CPU work: it must not wait behind a training slot.
                activities=[activities.run_bert_inference, SweepReports(settings).record_sweep],
                max_concurrent_activities=settings.inference.max_concurrent_requests,
            )
        ],
    )


def main() -> None:
    """Run the GPU worker until SIGTERM or SIGINT."""
    run_worker_main(build_spec, uses_artifacts=True)
