"""What a fine-tuning attempt tells Temporal: its live :class:`TrainingHeartbeat`, and a stall watchdog.

Progress travels only as heartbeat details: they cost no workflow history (a run's history
stays bounded whatever its step count) and are readable with ``describe`` while the attempt
runs. The same record goes into the details of the attempt's failure, so the workflow resumes
the next attempt from the newest checkpoint and tells progress from a failure.
"""

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from temporalio import activity

from durabert.gpu_worker.events import (
    CheckpointEvent,
    ProgressEvent,
    PulseEvent,
    StartedEvent,
    StoppedEvent,
    TrainingEvent,
)
from durabert.shared.logging import get_logger
from durabert.shared.models import SLOW_PHASE_FACTOR, CheckpointInfo, TrainingHeartbeat, TrainingPhase

log = get_logger(__name__)

T = TypeVar("T")

STEP_PHASES: frozenset[TrainingPhase] = frozenset({"training", "evaluating"})
"""Phases that pulse every step or evaluation batch; others get ``SLOW_PHASE_FACTOR`` times longer."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


class HeartbeatReporter:
    """Keeps the attempt's live state and heartbeats it."""

    def __init__(
        self, run_id: str, attempt: int, heartbeat: Callable[..., None] = activity.heartbeat
    ) -> None:
        """Start with an attempt that has not trained yet.

        Args:
            run_id: The run (for logs).
            attempt: The workflow's attempt number.
            heartbeat: Sends heartbeat details (``activity.heartbeat`` in an activity).
        """
        self.run_id = run_id
        self.state = TrainingHeartbeat(attempt=attempt, updated_at=_now())
        """The live state."""
        self._send = heartbeat

    def heartbeat(self) -> None:
        """Send the live state (the SDK throttles sends to the heartbeat timeout)."""
        self._send(self.state.model_dump(mode="json"))

    async def beat_until_done(self, work: "asyncio.Future[T]", interval: float) -> T:
        """Heartbeat at once and then every ``interval`` seconds until ``work`` is done.

        Temporal counts an attempt's liveness from its heartbeats alone: whatever the activity
        waits for before the child reports (checks in a thread, the child's start), the server
        must keep hearing from it, or it times the attempt out as dead.

        Args:
            work: A task or future; it is not cancelled if the wait is.
            interval: Seconds between heartbeats (well under the heartbeat timeout).

        Returns:
            The result of ``work`` (its exception is raised).
        """
        while not work.done():
            self.heartbeat()
            await asyncio.wait({work}, timeout=interval)
        return work.result()

    def details(self) -> dict[str, Any]:
        """The live state as JSON, for the details of the attempt's failure."""
        return self.state.model_dump(mode="json")

    def on_event(self, event: TrainingEvent) -> None:
        """Fold a child event into the live state and heartbeat it.

        Args:
            event: The event.
        """
        state = self.state
        if isinstance(event, PulseEvent):
            state.phase, state.step = event.phase, max(state.step, event.step)
        elif isinstance(event, StartedEvent):
            self._on_started(event)
        elif isinstance(event, StoppedEvent) and event.checkpoint is not None:
            # A stop before the first step reports the checkpoint the attempt would resume from.
            known = state.latest_checkpoint
            if known is None or event.step > known.step:
                state.latest_checkpoint = self._checkpoint(
                    event.step, event.checkpoint, state.epoch, state.loss
                )
        elif isinstance(event, ProgressEvent | CheckpointEvent):
            state.step, state.epoch, state.max_steps = (
                event.step,
                max(0.0, event.epoch),
                event.max_steps or None,
            )
            state.loss = event.loss if event.loss is not None else state.loss
            if isinstance(event, CheckpointEvent):
                state.latest_checkpoint = self._checkpoint(event.step, event.path, event.epoch, event.loss)
                log.info("checkpoint saved", run_id=self.run_id, step=event.step, path=event.path)
        state.updated_at = _now()
        self.heartbeat()

    def _on_started(self, event: StartedEvent) -> None:
        state = self.state
        state.phase, state.max_steps = "training", event.max_steps or None
        state.resumed_from_step = event.resumed_from_step
        state.step = event.resumed_from_step or 0
        if event.resumed_from is not None and event.resumed_from_step is not None:
            state.latest_checkpoint = self._checkpoint(event.resumed_from_step, event.resumed_from, 0.0, None)
        log.info(
            "training started",
            run_id=self.run_id,
            resumed_from_step=event.resumed_from_step,
            max_steps=event.max_steps,
        )

    def _checkpoint(self, step: int, path: str, epoch: float, loss: float | None) -> CheckpointInfo:
        return CheckpointInfo(
            step=step,
            path=path,
            epoch=max(0.0, epoch),
            loss=loss,
            timestamp=_now(),
            max_steps=self.state.max_steps,
            attempt=self.state.attempt,
        )


class StallWatchdog:
    """Notices a training child that stopped making progress (a hung CUDA call, a deadlocked loader).

    Every child event resets it; the child pulses at least once a second while steps or
    evaluation batches finish. Phases made of one long call (loading, tokenizing,
    publishing) may stay silent ``SLOW_PHASE_FACTOR`` times longer.
    """

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Start watching now, in the ``starting`` phase.

        Args:
            stall_seconds: Longest silence allowed while steps run.
            clock: Monotonic clock (tests pass a fake one).
        """
        self.stall_seconds = stall_seconds
        self.phase: TrainingPhase = "starting"
        """The child's phase as last reported."""
        self._clock = clock
        self._last = clock()

    def observe(self, event: TrainingEvent) -> None:
        """Note a sign of life.

        Args:
            event: Any event of the child.
        """
        self._last = self._clock()
        if isinstance(event, PulseEvent):
            self.phase = event.phase
        elif isinstance(event, StartedEvent):
            self.phase = "training"

    @property
    def limit(self) -> float:
        """Longest silence allowed in the current phase, in seconds."""
        return self.stall_seconds * (1 if self.phase in STEP_PHASES else SLOW_PHASE_FACTOR)

    def silent_for(self) -> float | None:
        """How long the child has been silent, when that is longer than the phase allows.

        Returns:
            Seconds of silence past the limit's start, or None while the child is healthy.
        """
        silence = self._clock() - self._last
        return silence if silence > self.limit else None
