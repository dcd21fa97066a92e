"""Running one Temporal worker until SIGTERM or SIGINT, then draining it gracefully.

Kubernetes stops pods with SIGTERM; the SDK's samples only stop on Ctrl-C. Here both
signals start ``Worker.shutdown()``: polling stops, running activities get
``graceful_shutdown_timeout`` to finish (and can see ``activity.is_worker_shutdown()``),
and the process exits 0 after a clean drain.
"""

import asyncio
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import VersioningBehavior
from temporalio.worker import Worker, WorkerDeploymentConfig

from durabert.shared.client import connect_client, metrics_runtime
from durabert.shared.logging import get_logger
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)


@dataclass
class WorkerSpec:
    """What one worker process registers and on which queue."""

    role: str
    """Role name for logs (``data``, ``gpu``, ``orchestrator``)."""
    task_queue: str
    """Task queue to poll."""
    activities: Sequence[Callable[..., Any]] = ()
    """Activity implementations."""
    workflows: Sequence[type] = ()
    """Workflow classes."""
    activity_executor: Executor | None = None
    """Executor for sync activities."""
    max_concurrent_activities: int | None = None
    """Activity slots; None for the SDK default."""
    worker_options: dict[str, Any] = field(default_factory=dict)
    """Extra ``Worker`` keyword arguments (e.g. a workflow runner)."""
    versioned: bool = False
    """Take part in Worker Versioning when the settings carry a build id. Only the orchestrator
    does: its workflows replay, activities do not, so activity workers stay unversioned."""
    companions: Sequence["WorkerSpec"] = ()
    """Further workers run by the same process on queues of their own, each with its own slots
    (the GPU worker's inference queue beside its training queue); they start and drain together."""

    def all_specs(self) -> list["WorkerSpec"]:
        """This spec and its companions, in start order."""
        return [self, *self.companions]


def deployment_config(settings: DurabertSettings, spec: WorkerSpec) -> WorkerDeploymentConfig | None:
    """The Worker Versioning config of a worker, or None to run it unversioned.

    Args:
        settings: durabert settings (``worker.deployment_name`` and ``worker.build_id``).
        spec: The worker; only a ``versioned`` one gets a config.

    Returns:
        A config with versioning on, when the spec is versioned and a build id is set.
    """
    version = settings.worker.deployment_version
    if not spec.versioned or version is None:
        return None
    # Workflows declare their own behavior (training PINNED, inference AUTO_UPGRADE); a
    # workflow that declares none is pinned, the safe choice for code that may change.
    return WorkerDeploymentConfig(
        version=version, use_worker_versioning=True, default_versioning_behavior=VersioningBehavior.PINNED
    )


async def _serve_health(port: int, is_ready: Callable[[], bool]) -> asyncio.Server:
    """Serve ``GET /healthz``: 200 while the worker polls, 503 while it drains."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readline(), timeout=5)
            ok = is_ready()
            body = b'{"status":"ok"}' if ok else b'{"status":"draining"}'
            status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host="0.0.0.0", port=port)  # noqa: S104 - probes come from the kubelet


def build_worker(client: Client, settings: DurabertSettings, spec: WorkerSpec) -> Worker:
    """Build the Temporal ``Worker`` a spec describes, with the settings' slots and shutdown timeout.

    Args:
        client: A connected client.
        settings: durabert settings (workflow task slots, graceful shutdown timeout).
        spec: What to register and where.

    Returns:
        The worker, not yet running.
    """
    return Worker(
        client,
        task_queue=spec.task_queue,
        activities=list(spec.activities),
        workflows=list(spec.workflows),
        activity_executor=spec.activity_executor,
        max_concurrent_activities=spec.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker.max_concurrent_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=settings.worker.graceful_shutdown_timeout_seconds),
        max_heartbeat_throttle_interval=timedelta(seconds=settings.worker.heartbeat_interval_seconds),
        deployment_config=deployment_config(settings, spec),
        **spec.worker_options,
    )


async def run_worker(settings: DurabertSettings, spec: WorkerSpec) -> int:
    """Connect, run the worker until a stop signal, drain, and return the exit code.

    Args:
        settings: durabert settings (Temporal, shutdown timeout, health and metrics ports).
        spec: What to register and where.

    Returns:
        0 after a clean drain.
    """
    client = await connect_client(settings, runtime=metrics_runtime(settings.metrics_port))
    workers = [build_worker(client, settings, each) for each in spec.all_specs()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    health = None
    if settings.worker.health_port is not None:
        health = await _serve_health(settings.worker.health_port, lambda: not stop.is_set())

    log.info(
        "worker started",
        role=spec.role,
        task_queues=[each.task_queue for each in spec.all_specs()],
        namespace=settings.temporal.namespace,
        address=settings.temporal.address,
        activities=len(spec.activities),
        workflows=len(spec.workflows),
        build_id=settings.worker.build_id if spec.versioned else None,
    )

    async def run_all() -> None:
        await asyncio.gather(*(worker.run() for worker in workers))

    running = asyncio.create_task(run_all())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info(
            "stop signal received; draining",
            role=spec.role,
            # The budget (shared/settings.py): activities get the graceful timeout, a training
            # child the stop allowance, and the process exits inside the grace period.
            graceful_shutdown_timeout_seconds=settings.worker.graceful_shutdown_timeout_seconds,
            child_stop_seconds=settings.worker.child_stop_seconds,
            termination_grace_period_seconds=settings.worker.termination_grace_period_seconds,
        )
        await asyncio.gather(*(worker.shutdown() for worker in workers))
    else:
        stopping.cancel()
    await running  # re-raises a fatal worker error
    if health is not None:
        health.close()
    log.info("worker stopped", role=spec.role)
    return 0
