"""The attempt's live heartbeat and its stall watchdog, without a child process."""

import asyncio

import pytest

from durabert.gpu_worker.events import CheckpointEvent, ProgressEvent, PulseEvent, StartedEvent, StoppedEvent
from durabert.gpu_worker.reporting import HeartbeatReporter, StallWatchdog
from durabert.shared.models import SLOW_PHASE_FACTOR, TrainingHeartbeat


def reporter() -> tuple[HeartbeatReporter, list[TrainingHeartbeat]]:
    sent: list[TrainingHeartbeat] = []
    return HeartbeatReporter(
        "run-1", attempt=2, heartbeat=lambda d: sent.append(TrainingHeartbeat(**d))
    ), sent


def test_the_heartbeat_carries_the_newest_checkpoint_from_resume_to_save():
    live, sent = reporter()
    live.on_event(PulseEvent(phase="loading"))
    live.on_event(
        StartedEvent(
            resumed_from_step=40,
            resumed_from="runs/r/checkpoints/checkpoint-40",
            max_steps=100,
            num_parameters=1,
        )
    )
    assert (sent[-1].phase, sent[-1].step, sent[-1].resumed_from_step) == ("training", 40, 40)
    assert sent[-1].latest_checkpoint.path == "runs/r/checkpoints/checkpoint-40"
    live.on_event(ProgressEvent(step=43, epoch=1.2, loss=0.5, max_steps=100))
    live.on_event(
        CheckpointEvent(step=45, epoch=1.3, path="runs/r/checkpoints/checkpoint-45", loss=0.4, max_steps=100)
    )
    assert (sent[-1].step, sent[-1].loss, sent[-1].latest_checkpoint.step) == (45, 0.4, 45)
    assert sent[-1].latest_checkpoint.attempt == 2
    assert live.details() == sent[-1].model_dump(mode="json")


def test_a_stop_before_the_first_step_reports_the_checkpoint_to_resume_from():
    live, sent = reporter()
    live.on_event(PulseEvent(phase="tokenizing"))
    live.on_event(StoppedEvent(step=40, checkpoint="runs/r/checkpoints/checkpoint-40"))
    assert sent[-1].latest_checkpoint.step == 40
    assert sent[-1].latest_checkpoint.path == "runs/r/checkpoints/checkpoint-40"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_allows_slow_phases_more_silence_than_steps():
    clock = FakeClock()
    watchdog = StallWatchdog(10, clock=clock)
    clock.now = 10 * SLOW_PHASE_FACTOR - 1
    assert watchdog.silent_for() is None  # starting: loading may be slow
    watchdog.observe(PulseEvent(phase="training", step=3))
    clock.now += 9
    assert watchdog.silent_for() is None
    clock.now += 2
    assert watchdog.silent_for() == 11
    watchdog.observe(PulseEvent(phase="publishing", step=100))
    clock.now += 11
    assert watchdog.silent_for() is None
    assert watchdog.limit == 10 * SLOW_PHASE_FACTOR


async def test_the_reporter_heartbeats_until_the_work_it_waits_for_is_done():
    work: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    sent: list[TrainingHeartbeat] = []

    def heartbeat(details):
        sent.append(TrainingHeartbeat(**details))
        if len(sent) == 3:
            work.set_result("child started")

    live = HeartbeatReporter("run-1", attempt=1, heartbeat=heartbeat)
    assert await live.beat_until_done(work, interval=0.01) == "child started"
    assert len(sent) == 3  # at once, then on each interval while waiting; none after
    assert sent[0].phase == "starting"

    failing: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    failing.set_exception(RuntimeError("no such snapshot"))
    with pytest.raises(RuntimeError, match="no such snapshot"):
        await live.beat_until_done(failing, interval=0.01)
