"""The activities through ActivityEnvironment: cancel and worker shutdown stop training after a checkpoint."""

import asyncio
import dataclasses
from pathlib import Path

import pytest
from gpu_helpers import make_request, write_snapshot
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.gpu_worker import checkpoints
from durabert.gpu_worker.activities import GpuActivities
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.models import DEFAULT_MODEL_NAME, BertInferenceRequest
from durabert.shared.settings import DurabertSettings

LONG = {"max_steps": 5000, "checkpoint_steps": 4}


def gpu_settings(root: Path, tmp_path: Path) -> DurabertSettings:
    return DurabertSettings(artifact_root=root, data_dir=tmp_path / "data", log_format="json")


def process_gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


async def start_and_wait_for_checkpoint(env: ActivityEnvironment, activities: GpuActivities, request):
    beats: list[dict] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    task = asyncio.create_task(env.run(activities.fine_tune_bert, request))
    while not any(beat.get("checkpoint") for beat in beats):
        assert not task.done(), f"activity ended early: {task.exception()!r}"
        await asyncio.sleep(0.05)
    return task, beats


async def test_cancel_stops_training_with_a_complete_checkpoint(tmp_path, tiny_model_dir):
    root = tmp_path / "artifacts"
    snapshot = write_snapshot(root, train_rows=128)
    activities = GpuActivities(gpu_settings(root, tmp_path))
    env = ActivityEnvironment()
    task, beats = await start_and_wait_for_checkpoint(
        env, activities, make_request(tiny_model_dir, snapshot, **LONG)
    )
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    newest = checkpoints.newest_complete(ArtifactStore(root).checkpoints_dir("run-1"))
    assert newest is not None
    assert newest.step < LONG["max_steps"], "training ran to the end instead of stopping"
    assert newest.step >= max(beat["step"] for beat in beats if beat.get("checkpoint"))
    assert process_gone(beats[0]["pid"])
    assert not ArtifactStore(root).model_dir("run-1").exists()


async def test_worker_shutdown_checkpoints_fails_retryably_and_the_retry_resumes(tmp_path, tiny_model_dir):
    root = tmp_path / "artifacts"
    snapshot = write_snapshot(root, train_rows=128)
    activities = GpuActivities(gpu_settings(root, tmp_path))
    request = make_request(tiny_model_dir, snapshot, max_steps=200, checkpoint_steps=20)
    env = ActivityEnvironment()
    task, beats = await start_and_wait_for_checkpoint(env, activities, request)
    env.worker_shutdown()
    with pytest.raises(ApplicationError) as info:
        await task
    assert info.value.type == "WorkerPreemptedError"
    assert not info.value.non_retryable
    stopped_at = info.value.details[0]
    saved = ArtifactStore(root).resolve(stopped_at["checkpoint"])
    assert checkpoints.is_complete(saved)
    assert process_gone(beats[0]["pid"])

    # The next attempt gets the last heartbeat back (as a dict) and resumes from the saved checkpoint.
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2, heartbeat_details=[beats[-1]])
    result = await retry.run(activities.fine_tune_bert, request)
    assert result.resumed_from_step == stopped_at["step"]
    assert result.global_step == 200
    assert result.attempts == 2
    assert (root / result.model_path / "config.json").is_file()


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
