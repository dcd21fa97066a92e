"""``durabert-data-worker``: the CPU worker on ``data-queue``."""

import sys
from concurrent.futures import ThreadPoolExecutor

from temporalio.exceptions import ApplicationError

from durabert.data_worker.activities import SnapshotActivities
from durabert.data_worker.run_claims import RunClaimActivities
from durabert.shared.cli_support import run_worker_main
from durabert.shared.errors import ErrorType
from durabert.shared.object_store import open_object_store
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
        activities=[activities.create_dataset_snapshot, RunClaimActivities(settings).claim_run],
        # The snapshot activity is sync (heartbeats and cancellation work from its thread):
        # one thread per activity slot, so no accepted task waits for a thread.
        activity_executor=ThreadPoolExecutor(max_workers=slots, thread_name_prefix="snapshot"),
        max_concurrent_activities=slots,
    )


def check_artifact_store(settings: DurabertSettings) -> None:
    """Fail at start, before polling, when an object-store artifact root cannot be used.

    Without this a worker with missing or wrong credentials would poll, accept work and fail
    every task it takes. A local root is not checked (nothing changes for it).

    Args:
        settings: durabert settings.

    Raises:
        SystemExit: 2 when the store refuses this worker's configuration (the message names the
            credential variables or ``DURABERT_ARTIFACT_ROOT``), as a bad setting does; 1 when the
            store stayed unreachable for ``DURABERT_STORE__RETRY_SECONDS`` (a restart may help).
    """
    objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
    if objects is None:
        return
    try:
        objects.check_access()
    except ApplicationError as exc:
        print(f"cannot start the data worker: {exc.message}", file=sys.stderr)
        raise SystemExit(2 if exc.type == ErrorType.CONFIGURATION else 1) from None


def _checked_spec(settings: DurabertSettings) -> WorkerSpec:
    check_artifact_store(settings)
    return build_spec(settings)


def main() -> None:
    """Run the data worker until SIGTERM or SIGINT."""
    run_worker_main(_checked_spec)
