"""The snapshot activity through ActivityEnvironment, an in-process Worker and the console script."""

import asyncio
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from dw_helpers import json_request, reviews
from snapshot_test_workflow import SnapshotTestWorkflow
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, RetryState
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from durabert.data_worker import store
from durabert.data_worker.activities import SnapshotActivities, _BackgroundHeartbeat, heartbeat_interval
from durabert.data_worker.worker import build_spec
from durabert.shared import names
from durabert.shared.errors import ErrorType
from durabert.shared.models import DatasetSnapshotResult
from durabert.shared.settings import DurabertSettings
from support.processes import WorkerProcess


def test_activity_environment_runs_the_snapshot_and_heartbeats(local_settings, write_rows) -> None:
    write_rows("rows.jsonl", reviews(50))
    env = ActivityEnvironment()
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    result = env.run(SnapshotActivities(local_settings).create_dataset_snapshot, json_request("rows.jsonl"))
    assert isinstance(result, DatasetSnapshotResult)
    assert (result.num_train_samples, result.num_eval_samples) == (45, 5)
    stages = [details[0] for details in beats]
    assert stages[0] == "loading"
    assert "written" in stages


def test_activity_environment_cancellation_stops_without_a_snapshot(local_settings, write_rows) -> None:
    write_rows("rows.jsonl", reviews(50))
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: env.cancel()
    with pytest.raises(CancelledError):
        env.run(SnapshotActivities(local_settings).create_dataset_snapshot, json_request("rows.jsonl"))
    assert not (local_settings.artifact_dir / "snapshots").exists()


def test_background_heartbeat_carries_the_activity_context() -> None:
    env = ActivityEnvironment()
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)

    def slow_step() -> None:
        with _BackgroundHeartbeat(0.01):
            deadline = time.monotonic() + 5
            while not beats and time.monotonic() < deadline:
                time.sleep(0.01)

    env.run(slow_step)
    assert beats[0] == ("working",)
    assert heartbeat_interval(timedelta(seconds=20)) == 5.0
    assert heartbeat_interval(None) > 0


def test_spec_registers_the_activity_with_a_thread_per_slot(local_settings) -> None:
    settings = local_settings.model_copy(
        update={"data": local_settings.data.model_copy(update={"max_concurrent_activities": 3})}
    )
    spec = build_spec(settings)
    assert spec.task_queue == names.DATA_QUEUE
    # The data worker also serves the run-claim activity (a store operation that needs no GPU).
    assert {activity._Definition.must_from_callable(fn).name for fn in spec.activities} == {
        names.CREATE_DATASET_SNAPSHOT,
        names.CREATE_SCORING_SNAPSHOT,
        names.CLAIM_RUN,
    }
    assert spec.max_concurrent_activities == 3
    assert isinstance(spec.activity_executor, ThreadPoolExecutor)
    assert spec.activity_executor._max_workers == 3
    spec.activity_executor.shutdown()


async def _run(client: Client, settings: DurabertSettings, request, activity_queue: str):
    return await client.execute_workflow(
        SnapshotTestWorkflow.run,
        args=[request, activity_queue],
        id=f"snapshot-test-{uuid.uuid4().hex[:8]}",
        task_queue=f"{activity_queue}-wf",
    )


async def test_worker_snapshots_retries_transient_faults_and_never_bad_input(
    client: Client, settings: DurabertSettings, queue_name: str, write_rows, monkeypatch
) -> None:
    settings = settings.model_copy(update={"queues": settings.queues.model_copy(update={"data": queue_name})})
    write_rows("rows.jsonl", reviews(80))
    failures = []

    real_rename = store._rename_into_place

    def fail_once(temporary, final) -> None:
        if not failures:
            failures.append(temporary)
            raise OSError("store briefly unavailable")
        real_rename(temporary, final)

    monkeypatch.setattr(store, "_rename_into_place", fail_once)
    spec = build_spec(settings)
    activity_worker = Worker(
        client,
        task_queue=spec.task_queue,
        activities=list(spec.activities),
        activity_executor=spec.activity_executor,
        max_concurrent_activities=spec.max_concurrent_activities,
    )
    workflow_worker = Worker(client, task_queue=f"{queue_name}-wf", workflows=[SnapshotTestWorkflow])
    async with activity_worker, workflow_worker:
        result = await _run(client, settings, json_request("rows.jsonl", run_id="worker-run"), queue_name)
        assert len(failures) == 1  # the first attempt died before the rename; the retry finished
        assert not result.cache_hit
        assert (settings.artifact_dir / result.snapshot_path / "manifest.json").is_file()

        with pytest.raises(WorkflowFailureError) as caught:
            await _run(client, settings, json_request("rows.jsonl", label_field="stars"), queue_name)
    assert spec.activity_executor is not None
    spec.activity_executor.shutdown()
    error = caught.value.cause
    assert isinstance(error, ActivityError)
    assert error.retry_state == RetryState.NON_RETRYABLE_FAILURE  # one attempt, no retries
    assert isinstance(error.cause, ApplicationError)
    assert error.cause.type == ErrorType.INVALID_INPUT
    assert error.cause.non_retryable
    assert error.cause.message.startswith("label_field: column 'stars' is not in split 'train'")


async def test_console_worker_logs_each_snapshot(
    client: Client, settings: DurabertSettings, queue_name: str, worker_env: dict[str, str], write_rows
) -> None:
    write_rows("rows.jsonl", reviews(40))
    process = WorkerProcess("durabert-data-worker", {**worker_env, "DURABERT_QUEUES__DATA": queue_name})
    try:
        await asyncio.to_thread(process.start)
        async with Worker(client, task_queue=f"{queue_name}-wf", workflows=[SnapshotTestWorkflow]):
            first = await _run(client, settings, json_request("rows.jsonl", run_id="logged-run"), queue_name)
            second = await _run(client, settings, json_request("rows.jsonl", run_id="second-run"), queue_name)
        created = await asyncio.to_thread(
            process.wait_for, lambda line: line.get("event") == "snapshot created", 10
        )
        reused = await asyncio.to_thread(
            process.wait_for, lambda line: line.get("event") == "snapshot reused", 10
        )
        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        process.stop()
    assert second.cache_hit
    assert second.snapshot_id == first.snapshot_id
    assert created["run_id"] == "logged-run"
    assert created["snapshot_id"] == first.snapshot_id
    assert created["rows"] == 40
    assert created["seconds"] > 0  # a missing or zero figure fails (no upper bound: no timing assertions)
    assert reused["run_id"] == "second-run"
