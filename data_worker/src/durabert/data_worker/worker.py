"""``durabert-data-worker``: the CPU worker on ``data-queue``."""

from concurrent.futures import ThreadPoolExecutor

from durabert.data_worker.activities import SnapshotActivities
from durabert.data_worker.run_claims import RunClaimActivities
from durabert.shared.cli_support import run_worker_main
from durabert.shared.runner import WorkerSpec
from durabert.shared.settings import DurabertSettings


def build_spec(settings: DurabertSettings) -> WorkerSpec:
    """Describe the data worker: its queue, activities and concurrency.

    Args:
        settings: durabert settings.

    Returns:
        The worker spec.
    """
    slots = settings.data.max_concurrent_activities
    activities = SnapshotActivities(settings)
    return WorkerSpec(
        role="data",
        task_queue=settings.queues.data,
        activities=[
            activities.create_dataset_snapshot,
            activities.create_scoring_snapshot,
            RunClaimActivities(settings).claim_run,
        ],
        # The snapshot activity is sync (heartbeats and cancellation work from its thread):
        # one thread per activity slot, so no accepted task waits for a thread.
        activity_executor=ThreadPoolExecutor(max_workers=slots, thread_name_prefix="snapshot"),
        max_concurrent_activities=slots,
    )


def main() -> None:
    """Run the data worker until SIGTERM or SIGINT."""
    run_worker_main(build_spec, uses_artifacts=True)
