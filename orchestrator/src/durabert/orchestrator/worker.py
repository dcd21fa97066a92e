"""``durabert-orchestrator-worker``: the workflows on ``orchestrator-queue``."""

from durabert.orchestrator.workflows import WORKFLOWS
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
    return WorkerSpec(
        role="orchestrator", task_queue=settings.queues.orchestrator, workflows=WORKFLOWS, versioned=True
    )


def main() -> None:
    """Run the orchestrator worker until SIGTERM or SIGINT."""
    run_worker_main(build_spec)
