"""The activities through ActivityEnvironment: cancel and worker shutdown stop training after a checkpoint."""

import asyncio
import os
import signal
from pathlib import Path

import pytest
from gpu_helpers import make_request, write_snapshot
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.gpu_worker import checkpoints
from durabert.gpu_worker.activities import GpuActivities
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.models import DEFAULT_MODEL_NAME, BertInferenceRequest, TrainingHeartbeat
from durabert.shared.settings import DurabertSettings

pytestmark = pytest.mark.slow

LONG = {"max_steps": 5000, "checkpoint_steps": 4}


def gpu_settings(root: Path, tmp_path: Path) -> DurabertSettings:
    return DurabertSettings(artifact_root=root, data_dir=tmp_path / "data", log_format="json")


def process_gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


async def start_and_wait_for_checkpoint(env: ActivityEnvironment, activities: GpuActivities, request):
    beats: list[TrainingHeartbeat] = []
    env.on_heartbeat = lambda *details: beats.append(TrainingHeartbeat.model_validate(details[0]))
    task = asyncio.create_task(env.run(activities.fine_tune_bert, request))
    while not any(beat.latest_checkpoint for beat in beats):
        assert not task.done(), f"activity ended early: {task.exception()!r}"
        await asyncio.sleep(0.05)
    return task, beats


def child_pid(beats: list[TrainingHeartbeat]) -> int:
    pids = {beat.pid for beat in beats if beat.pid is not None}
    assert len(pids) == 1, f"expected one training child, heartbeats named {pids}"
    return pids.pop()


async def test_cancel_stops_training_with_a_complete_checkpoint(tmp_path, tiny_model_dir):
    root = tmp_path / "artifacts"
    snapshot = write_snapshot(root, train_rows=128)
    activities = GpuActivities(gpu_settings(root, tmp_path))
    env = ActivityEnvironment()
    task, beats = await start_and_wait_for_checkpoint(
        env, activities, make_request(tiny_model_dir, snapshot, **LONG)
    )
    pid = child_pid(beats)
    assert not process_gone(pid), "the child should be training until the cancel"
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    newest = checkpoints.newest_complete(ArtifactStore(root).checkpoints_dir("run-1"))
    assert newest is not None
    assert newest.step < LONG["max_steps"], "training ran to the end instead of stopping"
    assert newest.step >= max(beat.latest_checkpoint.step for beat in beats if beat.latest_checkpoint)
    assert process_gone(pid)
    assert not ArtifactStore(root).model_dir("run-1").exists()


async def test_worker_shutdown_checkpoints_fails_retryably_and_the_retry_resumes(tmp_path, tiny_model_dir):
    root = tmp_path / "artifacts"
    snapshot = write_snapshot(root, train_rows=128)
    activities = GpuActivities(gpu_settings(root, tmp_path))
    request = make_request(tiny_model_dir, snapshot, max_steps=200, checkpoint_steps=20)
    env = ActivityEnvironment()
    task, beats = await start_and_wait_for_checkpoint(env, activities, request)
    pid = child_pid(beats)
    env.worker_shutdown()
    with pytest.raises(ApplicationError) as info:
        await task
    assert info.value.type == "WorkerPreemptedError"
    assert not info.value.non_retryable
    # The failure carries the heartbeat: the workflow resumes the next attempt from its checkpoint.
    stopped_at = TrainingHeartbeat.model_validate(info.value.details[0]).latest_checkpoint
    assert stopped_at is not None
    assert stopped_at.step > beats[-1].latest_checkpoint.step or stopped_at == beats[-1].latest_checkpoint
    assert checkpoints.is_complete(ArtifactStore(root).resolve(stopped_at.path), content=True)
    assert process_gone(pid)

    retry = request.model_copy(update={"attempt": 2, "resume_from_checkpoint": stopped_at.path})
    result = await ActivityEnvironment().run(activities.fine_tune_bert, retry)
    assert result.resumed_from_step == stopped_at.step
    assert result.global_step == 200
    assert result.attempts == 2
    assert (root / result.model_path / "config.json").is_file()


async def test_a_stalled_child_is_killed_and_the_retry_resumes(tmp_path, tiny_model_dir):
    root = tmp_path / "artifacts"
    snapshot = write_snapshot(root, train_rows=128)
    activities = GpuActivities(gpu_settings(root, tmp_path))
    request = make_request(tiny_model_dir, snapshot, **LONG, stall_timeout_seconds=10)
    env = ActivityEnvironment()
    task, beats = await start_and_wait_for_checkpoint(env, activities, request)
    pid = child_pid(beats)
    # Freeze the training child after its first checkpoint: to its parent it is a hung CUDA
    # call or a deadlocked data loader (alive, silent).
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(ApplicationError) as info:
        await task
    assert info.value.type == "TrainingStalledError"
    assert not info.value.non_retryable
    assert "phase 'training'" in info.value.message
    assert process_gone(pid)
    stalled = TrainingHeartbeat.model_validate(info.value.details[0])
    assert stalled.latest_checkpoint is not None
    assert stalled.step < LONG["max_steps"]

    retry = request.model_copy(
        update={
            "attempt": 2,
            "resume_from_checkpoint": stalled.latest_checkpoint.path,
            "config": request.config.model_copy(update={"max_steps": stalled.latest_checkpoint.step + 8}),
        }
    )
    result = await ActivityEnvironment().run(activities.fine_tune_bert, retry)
    assert result.resumed_from_step == stalled.latest_checkpoint.step
    assert result.global_step == stalled.latest_checkpoint.step + 8


async def test_configuration_errors_fail_before_a_child_starts(tmp_path):
    root = tmp_path / "artifacts"
    snapshot = write_snapshot(root)
    activities = GpuActivities(gpu_settings(root, tmp_path))
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as info:
        await env.run(activities.fine_tune_bert, make_request(tmp_path / "nowhere", snapshot))
    assert info.value.type == "ConfigurationError"
    assert info.value.non_retryable
    missing = snapshot.model_copy(update={"snapshot_path": "snapshots/none"})
    with pytest.raises(ApplicationError) as info:
        await env.run(activities.fine_tune_bert, make_request(tmp_path, missing))
    assert info.value.type == "ArtifactNotFoundError"


async def test_real_minilm_fine_tunes_and_serves(tmp_path):
    """The packaged all-MiniLM-L6-v2 (the offline default) through both activities."""
    root = tmp_path / "artifacts"
    snapshot = write_snapshot(root, train_rows=16, eval_rows=8)
    activities = GpuActivities(gpu_settings(root, tmp_path))
    request = make_request(
        "unused",
        snapshot,
        run_id="minilm",
        model_name=DEFAULT_MODEL_NAME,
        max_steps=2,
        batch_size=4,
        max_seq_length=16,
        checkpoint_steps=1,
        save_total_limit=1,
    )
    result = await ActivityEnvironment().run(activities.fine_tune_bert, request)
    assert result.global_step == 2
    assert result.num_parameters > 20_000_000
    assert result.device == "cpu"
    assert len(checkpoints.list_checkpoints(ArtifactStore(root).checkpoints_dir("minilm"))) == 1
    answer = await ActivityEnvironment().run(
        activities.run_bert_inference,
        BertInferenceRequest(run_id="minilm", texts=["a lovely film"], use_gpu=False),
    )
    assert answer.label_names == ["negative", "positive"]
    assert answer.predicted_label_names[0] in answer.label_names
