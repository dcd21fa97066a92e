"""``durabert-gpu-worker``: fine-tuning and inference on ``gpu-queue``."""

import sys

from temporalio.exceptions import ApplicationError

from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.supervisor import warm_up
from durabert.shared.cli_support import run_worker_main
from durabert.shared.logging import get_logger
from durabert.shared.object_store import open_object_store
from durabert.shared.runner import WorkerSpec
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)


def check_store_access(settings: DurabertSettings) -> None:
    """With an object-store artifact root, make sure it can be read and written before polling.

    A worker with missing or wrong credentials would otherwise take tasks and fail each one.

    Args:
        settings: durabert settings.

    Raises:
        SystemExit: Code 2, with the store's message (it names the variables to check), when
            the store refuses access or cannot be reached within ``DURABERT_STORE__RETRY_SECONDS``.
    """
    objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
    if objects is None:
        return
    try:
        objects.check_access()
    except ApplicationError as exc:
        log.error("cannot start worker: artifact store not usable", error_type=exc.type, error=exc.message)
        print(f"durabert-gpu-worker: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("artifact store reachable", store=objects.url_of(""))


def build_spec(settings: DurabertSettings) -> WorkerSpec:
    """Describe the GPU worker: its queue, activities and one slot per GPU.

    Both activities are ``async def``: training runs in a child process supervised from
    the event loop, inference in a thread, so no activity executor is needed.

    Args:
        settings: durabert settings.

    Returns:
        The worker spec.
    """
    check_store_access(settings)
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
    run_worker_main(build_spec)
