"""An attempt heartbeats from its first moment: slow start-up work is not a dead worker.

Temporal judges an attempt alive by its heartbeats alone, counted from the start. On a fresh
worker the attempt's start-up takes seconds (torch's first import for the device probe, the
snapshot's marker read from a slow or briefly unreachable object store, the child's start and
downloads); none of it may let the heartbeat timeout expire, or a healthy attempt is cancelled
and counted as failed (seen in the object-store demo with a 10 s heartbeat timeout).
"""

import asyncio
import threading
import uuid
from datetime import timedelta

import pytest
from gpu_helpers import make_request, write_snapshot
from temporalio import workflow
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from durabert.gpu_worker import activities as gpu_activities
from durabert.gpu_worker.activities import GpuActivities
from durabert.shared import activities
from durabert.shared.models import BertFineTuneRequest, BertFineTuneResult
from durabert.shared.object_store import ObjectStore
from durabert.shared.settings import DurabertSettings

pytestmark = pytest.mark.slow

HEARTBEAT_TIMEOUT = timedelta(seconds=3)
"""Short, so start-up work of a few seconds outlasts it."""


@workflow.defn(name="StartupHeartbeatTestWorkflow")
class OneAttemptWorkflow:
    """One fine-tuning attempt with a short heartbeat timeout and no retry: a timeout fails the run."""

    @workflow.run
    async def run(self, request: BertFineTuneRequest, gpu_queue: str) -> BertFineTuneResult:
        return await workflow.execute_activity(
            activities.fine_tune_bert,
            request,
            task_queue=gpu_queue,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


async def test_the_attempt_heartbeats_while_its_device_probe_blocks(tmp_path, monkeypatch):
    """The device probe imports torch on a fresh worker (seconds); heartbeats go on meanwhile."""
    beats = threading.Semaphore(0)
    heard_while_probing: list[bool] = []
    select_device = gpu_activities.select_device

    def slow_probe(use_gpu: bool, preference: str) -> str:
        # Blocks like a cold import until two heartbeats were sent while it runs (or gives up).
        heard_while_probing.append(all(beats.acquire(timeout=10) for _ in range(2)))
        return select_device(use_gpu, preference)  # type: ignore[arg-type]

    monkeypatch.setattr(gpu_activities, "select_device", slow_probe)
    settings = DurabertSettings(artifact_root=tmp_path / "artifacts", data_dir=tmp_path / "data")
    # A snapshot elsewhere: after the probe, the attempt fails fast on it, before any child starts.
    request = make_request(tmp_path / "no-model", write_snapshot(tmp_path / "elsewhere"))
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.release()
    with pytest.raises(ApplicationError) as failure:
        await env.run(GpuActivities(settings).fine_tune_bert, request)
    assert failure.value.type == "ArtifactNotFoundError"
    assert heard_while_probing == [True], "no heartbeats while the device probe ran"


async def heartbeats_outlast_the_timeout(client: Client, handle: WorkflowHandle) -> None:
    """Wait until the server has had heartbeats for twice the heartbeat timeout past the attempt's start.

    Returns at once, without waiting further, when the workflow ended (the attempt timed out).
    """
    for _ in range(600):
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            return
        for pending in description.raw_description.pending_activities:
            if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED and pending.HasField(
                "last_heartbeat_time"
            ):
                alive = pending.last_heartbeat_time.ToDatetime() - pending.last_started_time.ToDatetime()
                if alive > 2 * HEARTBEAT_TIMEOUT:
                    return
        await asyncio.sleep(0.2)
    raise AssertionError("the attempt neither heartbeated past its timeout nor ended")


async def test_a_fresh_worker_outlives_an_unreachable_store_at_attempt_start(
    client, queue_name, s3_root, s3_server, tmp_path, tiny_model_dir
):
    """The store cannot be reached when the attempt starts: the attempt waits it out, alive, and trains."""
    local = tmp_path / "data-worker"
    snapshot = write_snapshot(local)
    ObjectStore(s3_root).upload_folder(local / snapshot.snapshot_path, snapshot.snapshot_path)
    settings = DurabertSettings(
        artifact_root=s3_root,
        work_dir=tmp_path / "fresh-node",
        data_dir=tmp_path / "data",
        log_format="json",
        store={"retry_seconds": 120},
    )
    request = make_request(tiny_model_dir, snapshot, max_steps=2, checkpoint_steps=2)
    gpu = GpuActivities(settings)
    s3_server.set_reachable(False)
    try:
        async with (
            # Heartbeats reach the server about every second, whatever its throttle would allow.
            Worker(
                client,
                task_queue=queue_name,
                activities=[gpu.fine_tune_bert],
                max_heartbeat_throttle_interval=timedelta(seconds=0.5),
            ),
            Worker(
                client,
                task_queue=f"{queue_name}-wf",
                workflows=[OneAttemptWorkflow],
                workflow_runner=UnsandboxedWorkflowRunner(),
            ),
        ):
            handle = await client.start_workflow(
                OneAttemptWorkflow.run,
                args=[request, queue_name],
                id=f"startup-heartbeats-{uuid.uuid4().hex[:8]}",
                task_queue=f"{queue_name}-wf",
            )
            # The store comes back only once the attempt has outlived its heartbeat timeout twice.
            await heartbeats_outlast_the_timeout(client, handle)
            s3_server.set_reachable(True)
            result = await handle.result()
    finally:
        s3_server.set_reachable(True)
    assert result.global_step == 2
    assert ObjectStore(s3_root).is_complete(result.model_path)
