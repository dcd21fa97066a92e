"""The real ``durabert-gpu-worker`` process: SIGTERM checkpoints and stops; another worker resumes."""

import asyncio
import signal
import uuid
from pathlib import Path

from gpu_helpers import make_request, write_snapshot
from gpu_workflows import GpuTestTrainingWorkflow, pending_heartbeat
from temporalio.worker import Worker

from durabert.gpu_worker import checkpoints
from durabert.shared.artifacts import ArtifactStore
from support.processes import WorkerProcess


def process_gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


async def wait_for_first_checkpoint(client, handle, artifact_root: Path, timeout: float = 120.0):
    """The first complete checkpoint on disk, while the attempt still runs.

    Read from the run folder, not the heartbeat: heartbeats are throttled (8 s at this heartbeat
    timeout), and on an idle machine the tiny model can train to the end before one shows it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    checkpoints_dir = ArtifactStore(artifact_root).checkpoints_dir("preempted")
    while loop.time() < deadline:
        newest = checkpoints.newest_complete(checkpoints_dir)
        if newest is not None:
            assert await pending_heartbeat(client, handle) is not None, "the attempt already ended"
            return newest
        await asyncio.sleep(0.05)
    raise AssertionError("no complete checkpoint appeared")


async def test_sigterm_checkpoints_stops_and_another_worker_resumes(
    client, worker_env, artifact_root, queue_name, tiny_model_dir, tmp_path
):
    snapshot = write_snapshot(artifact_root, train_rows=128)
    # 600 steps: several seconds of training even on an idle machine, so the SIGTERM lands mid-run.
    request = make_request(tiny_model_dir, snapshot, run_id="preempted", max_steps=600, checkpoint_steps=20)
    env = {
        **worker_env,
        "DURABERT_QUEUES__GPU": queue_name,
        "DURABERT_WORKER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "30",
    }
    first = WorkerProcess("durabert-gpu-worker", env, log_path=tmp_path / "gpu-1.log").start()
    try:
        async with Worker(client, task_queue=f"{queue_name}-wf", workflows=[GpuTestTrainingWorkflow]):
            handle = await client.start_workflow(
                GpuTestTrainingWorkflow.run,
                args=[request, queue_name, 2],
                id=f"gpu-test-{uuid.uuid4().hex[:8]}",
                task_queue=f"{queue_name}-wf",
            )
            first_checkpoint = await wait_for_first_checkpoint(client, handle, artifact_root)
            first.signal(signal.SIGTERM)
            assert first.wait(timeout=60) == 0
            stopped = first.wait_for(lambda line: line.get("event") == "training stopped", timeout=1)
            started = first.wait_for(lambda line: line.get("event") == "training process started", timeout=1)
            assert process_gone(started["pid"])
            checkpoint = ArtifactStore(artifact_root).resolve(stopped["checkpoint"])
            assert checkpoints.is_complete(checkpoint)
            assert stopped["checkpoint_step"] >= first_checkpoint.step
            assert stopped["checkpoint_step"] < 600

            second = WorkerProcess("durabert-gpu-worker", env, log_path=tmp_path / "gpu-2.log").start()
            try:
                result = await asyncio.wait_for(handle.result(), timeout=180)
            finally:
                second.stop()
    finally:
        first.stop()
    assert result.attempts == 2
    assert result.resumed_from_step == stopped["checkpoint_step"]
    assert result.global_step == 600
    # Every 20 steps, plus the one saved at the SIGTERM (unless it fell on a multiple of 20).
    assert result.total_checkpoints_saved == 600 // 20 + (1 if stopped["checkpoint_step"] % 20 else 0)
