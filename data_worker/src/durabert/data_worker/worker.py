"""``durabert-data-worker``: the CPU worker on ``data-queue``."""

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
    return WorkerSpec(
        role="data",
        task_queue=settings.queues.data,
        activities=[],
        max_concurrent_activities=settings.data.max_concurrent_activities,
    )


def main() -> None:
    """Run the data worker until SIGTERM or SIGINT."""
    run_worker_main(build_spec)
