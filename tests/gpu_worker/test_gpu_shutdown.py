"""Shutdown fits the grace period: one budget, a stop with one deadline, a worker that exits in time."""

import asyncio
import os
import signal
import uuid
from pathlib import Path

import pytest
from gpu_helpers import make_job, make_request, write_snapshot
from gpu_workflows import GpuTestTrainingWorkflow, pending_heartbeat
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.attempt import TrainingAttempt
from durabert.gpu_worker.events import TrainingEvent
from durabert.gpu_worker.reporting import HeartbeatReporter, StallWatchdog
from durabert.gpu_worker.supervisor import TrainingChild
from durabert.shared.runner import WorkerSpec, run_worker
from durabert.shared.settings import (
    CHILD_STOP_MARGIN_SECONDS,
    SHUTDOWN_EXIT_SECONDS,
    DurabertSettings,
    WorkerSettings,
    describe_settings_error,
)

# -- the budget -------------------------------------------------------------------------------------


def test_the_grace_period_sets_the_graceful_timeout_and_the_childs_stop_allowance():
    worker = WorkerSettings(termination_grace_period_seconds=180)
    assert worker.graceful_shutdown_timeout_seconds == 180 - SHUTDOWN_EXIT_SECONDS == 160
    assert worker.child_stop_seconds == 160 - CHILD_STOP_MARGIN_SECONDS == 145
    # Without a grace period (a terminal, tests) the graceful timeout stays as set.
    assert WorkerSettings().graceful_shutdown_timeout_seconds == 30
    assert WorkerSettings(graceful_shutdown_timeout_seconds=60).child_stop_seconds == 45
    # A graceful timeout that fits is kept.
    assert (
        WorkerSettings(
            termination_grace_period_seconds=180, graceful_shutdown_timeout_seconds=100
        ).graceful_shutdown_timeout_seconds
        == 100
    )


def test_a_graceful_timeout_that_leaves_no_time_to_exit_is_refused(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("DURABERT_WORKER__TERMINATION_GRACE_PERIOD_SECONDS", "180")
    monkeypatch.setenv("DURABERT_WORKER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", "170")
    with pytest.raises(ValidationError) as info:
        DurabertSettings()
    message = describe_settings_error(info.value)
    assert "DURABERT_WORKER" in message
    assert "graceful_shutdown_timeout_seconds 170 leaves less than 20 s" in message


# -- one attempt whose child ignores the stop ----------------------------------------------------


class StubbornChild:
    """Stands in for ``TrainingChild``: trains forever, ignores stop requests, dies only when killed.

    It counts the seconds the attempt asked to wait for it after the stop request, which is
    what the budget bounds (waits sleep that long, so the count is the stop's length).
    """

    def __init__(self, job) -> None:
        self.job = job
        self.pid = 4242
        self.alive = False
        self.started = asyncio.Event()
        self.stop_requests = 0
        self.kills = 0
        self.waited_after_stop = 0.0

    async def start(self) -> None:
        self.alive = True
        self.started.set()

    async def _wait(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        if self.stop_requests:
            self.waited_after_stop += timeout

    async def next_event(self, timeout: float) -> TrainingEvent | None:
        await self._wait(timeout)
        return None

    def request_stop(self) -> None:
        self.stop_requests += 1

    async def wait_exit(self, timeout: float) -> int | None:
        if self.alive:
            await self._wait(timeout)
        return None if self.alive else -9

    def kill(self) -> None:
        if self.alive:
            self.kills += 1
            self.alive = False

    def close(self) -> None:
        self.kill()


def stubborn_attempt(
    tmp_path: Path, tiny_model_dir: Path, grace: int
) -> tuple[TrainingAttempt, StubbornChild]:
    settings = DurabertSettings(
        artifact_root=tmp_path, data_dir=tmp_path / "data", worker={"termination_grace_period_seconds": grace}
    )
    child = StubbornChild(make_job(make_request(tiny_model_dir, write_snapshot(tmp_path)), settings))
    attempt = TrainingAttempt(
        child,  # type: ignore[arg-type]
        HeartbeatReporter("run-1", 1),
        StallWatchdog(600),
        # What the activity passes: the whole graceful timeout. The attempt keeps to the budget.
        stop_seconds=settings.worker.graceful_shutdown_timeout_seconds,
    )
    return attempt, child


async def test_a_child_that_ignores_the_stop_is_killed_and_reported_before_the_sdk_cancels(
    tmp_path, tiny_model_dir
):
    attempt, child = stubborn_attempt(tmp_path, tiny_model_dir, grace=30)
    settings = child.job.settings.worker
    assert (settings.graceful_shutdown_timeout_seconds, attempt.stop_seconds) == (10, 5)
    env = ActivityEnvironment()
    task = asyncio.create_task(env.run(attempt.run))
    await child.started.wait()
    env.worker_shutdown()
    # What the SDK does to activities still running at the graceful timeout.
    asyncio.get_running_loop().call_later(settings.graceful_shutdown_timeout_seconds, env.cancel)
    with pytest.raises(ApplicationError) as info:
        await task
    # Reported as a preemption (with its heartbeat), not torn down by the SDK's cancellation.
    assert info.value.type == "WorkerPreemptedError"
    assert child.kills == 1
    assert child.stop_requests == 1
    assert child.waited_after_stop <= settings.child_stop_seconds + 0.1


async def test_a_cancel_during_a_shutdowns_stop_keeps_its_deadline(tmp_path, tiny_model_dir):
    attempt, child = stubborn_attempt(tmp_path, tiny_model_dir, grace=30)
    env = ActivityEnvironment()
    task = asyncio.create_task(env.run(attempt.run))
    await child.started.wait()
    env.worker_shutdown()
    while not child.stop_requests:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    env.cancel()  # the SDK's cancel lands while the child is already stopping
    with pytest.raises(asyncio.CancelledError):
        await task
    assert child.stop_requests == 1
    assert child.kills == 1
    # The stop did not start over (nor wait for an exit) after the cancel: one allowance in all.
    assert child.waited_after_stop <= child.job.settings.worker.child_stop_seconds + 0.1


# -- the real worker: SIGTERM to exit inside the grace period --------------------------------------


def _stop_never_arrives(self) -> None:
    """The stop request is lost: the child trains on as if its save hung or a CUDA call stuck.

    Patched on the parent's side, so the child is a real one from the worker's forkserver (a
    child forked from this test process could inherit thread pools of earlier in-process runs).
    """


async def training_heartbeat(client, handle, worker: asyncio.Task, timeout: float = 120):
    """The first heartbeat past step 1; fails at once if the worker or the workflow ended first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        assert not worker.done(), f"the worker ended before training: {worker.exception()!r}"
        beat = await pending_heartbeat(client, handle)
        if beat is not None and beat.step >= 2:
            return beat
        if beat is None and (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            await handle.result()  # raises the attempt's failure
        await asyncio.sleep(0.2)
    raise AssertionError(f"no training step within {timeout} s")


async def test_the_worker_exits_within_the_grace_period_when_the_child_does_not_stop(
    client, dev_server, artifact_root, queue_name, tiny_model_dir, tmp_path, monkeypatch
):
    grace = 30
    settings = DurabertSettings(
        temporal={"address": dev_server.address},
        artifact_root=artifact_root,
        data_dir=tmp_path / "data",
        log_format="json",
        worker={"termination_grace_period_seconds": grace},
    )
    monkeypatch.setattr(TrainingChild, "request_stop", _stop_never_arrives)
    activities = GpuActivities(settings)
    spec = WorkerSpec(role="gpu", task_queue=queue_name, activities=[activities.fine_tune_bert])
    request = make_request(
        tiny_model_dir, write_snapshot(artifact_root, train_rows=128), max_steps=5000, checkpoint_steps=1000
    )
    loop = asyncio.get_running_loop()
    worker = asyncio.create_task(run_worker(settings, spec))
    try:
        async with Worker(client, task_queue=f"{queue_name}-wf", workflows=[GpuTestTrainingWorkflow]):
            handle = await client.start_workflow(
                GpuTestTrainingWorkflow.run,
                args=[request, queue_name, 1],
                id=f"gpu-test-{uuid.uuid4().hex[:8]}",
                task_queue=f"{queue_name}-wf",
            )
            beat = await training_heartbeat(client, handle, worker)
            sigterm_at = loop.time()
            os.kill(os.getpid(), signal.SIGTERM)  # what the kubelet sends; run_worker handles it
            assert await asyncio.wait_for(worker, timeout=grace) == 0
            exited_after = loop.time() - sigterm_at
            with pytest.raises(WorkflowFailureError) as failure:
                await handle.result()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if not worker.done():
            worker.cancel()
    assert exited_after < grace  # the kubelet's SIGKILL never comes
    cause = failure.value.cause.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "WorkerPreemptedError"
    assert beat.pid is not None
    status = Path(f"/proc/{beat.pid}/status")
    assert not status.exists() or "zombie" in status.read_text()
