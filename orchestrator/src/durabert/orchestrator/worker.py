"""``durabert-orchestrator-worker``: the workflows on ``orchestrator-queue``."""

from durabert.orchestrator.workflows import VERSIONED_WORKFLOWS, WORKFLOWS
from durabert.shared.cli_support import run_worker_main
from durabert.shared.runner import WorkerSpec
from durabert.shared.settings import DurabertSettings


def build_spec(settings: DurabertSettings) -> WorkerSpec:
    """Describe the orchestrator worker: its queue and workflows, versioned when a build id is set.

    Args:
        settings: durabert settings.

    Returns:
        The worker spec.
    """
    versioned = settings.worker.deployment_version is not None
    return WorkerSpec(
        role="orchestrator",
        task_queue=settings.queues.orchestrator,
        # Only a versioned worker may send versioning behaviors (the server refuses them otherwise).
        workflows=VERSIONED_WORKFLOWS if versioned else WORKFLOWS,
        versioned=versioned,
    )


def main() -> None:
    """Run the orchestrator worker until SIGTERM or SIGINT."""
    run_worker_main(build_spec)
