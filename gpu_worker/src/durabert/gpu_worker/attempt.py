"""One fine-tuning attempt, supervised from the activity's event loop, and how it stops.

The attempt starts a training child, folds its events into the heartbeat, and waits for an
outcome. Three things can stop it before the child finishes, each reported its own way:

=================  =================================  ==========================================
what stopped it    what happens to the child          what the activity reports
=================  =================================  ==========================================
cancellation       asked to checkpoint and stop       ``CancelledError`` (the workflow asked)
worker shutdown    asked to checkpoint and stop       the result or error if the child got there
                                                      first, else ``WorkerPreemptedError``
stall              killed at once (it is hung)        ``TrainingStalledError``
=================  =================================  ==========================================

A child that exits on its own without an outcome is ``TrainingProcessDied``. Every retryable
failure carries the heartbeat (newest checkpoint included) as its details. The retryable
ones are retried by the workflow, resuming from the newest complete checkpoint.

A stop has one deadline, set when it is first asked for: a cancellation that lands while the
child is already stopping for a worker shutdown (the SDK cancels at the graceful timeout) does
not start the wait again, and a child that misses the deadline is killed at once. With the
allowance from ``WorkerSettings.child_stop_seconds`` the whole stop fits the pod's grace period.
"""

import asyncio
import contextlib
from enum import StrEnum

from temporalio import activity
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker.events import DoneEvent, ErrorEvent, StoppedEvent, TrainingEvent
from durabert.gpu_worker.reporting import HeartbeatReporter, StallWatchdog
from durabert.gpu_worker.supervisor import ChildExited, TrainingChild
from durabert.shared.errors import ErrorType, retryable_error
from durabert.shared.logging import get_logger
from durabert.shared.models import BertFineTuneResult

log = get_logger(__name__)

POLL_SECONDS = 1.0
"""How often the supervising loop wakes without events, to heartbeat and check for a stop."""
MIN_STOP_SECONDS = 5.0
"""Least time a stopping child gets to write its checkpoint before it is killed."""


class StopCause(StrEnum):
    """What ended an attempt before its child finished (see the module's table)."""

    CANCELLED = "cancelled"
    """The workflow cancelled the activity."""
    WORKER_SHUTDOWN = "worker shutdown"
    """The worker got SIGTERM: a preemption, a rollout or a scale-down."""
    STALLED = "stalled"
    """The child reported nothing for longer than the stall timeout."""


Terminal = DoneEvent | ErrorEvent | StoppedEvent
"""Events after which the child exits."""


def _error_of(event: ErrorEvent) -> ApplicationError:
    return ApplicationError(event.message, type=event.error_type, non_retryable=event.non_retryable)


class TrainingAttempt:
    """Supervises one training child for the ``fine_tune_bert`` activity."""

    def __init__(
        self, child: TrainingChild, reporter: HeartbeatReporter, watchdog: StallWatchdog, stop_seconds: float
    ) -> None:
        """Prepare the supervision (nothing starts yet).

        Args:
            child: The (not yet started) training child.
            reporter: Heartbeats the live state.
            watchdog: Detects a stalled child.
            stop_seconds: Most time a stopping child gets to checkpoint before it is killed; never
                more than the worker's shutdown budget allows (``child_stop_seconds`` of the job's
                settings), so a stop fits the grace period whatever the caller passes.
        """
        self.child = child
        self.reporter = reporter
        self.watchdog = watchdog
        budget = child.job.settings.worker.child_stop_seconds
        self.stop_seconds = max(MIN_STOP_SECONDS, min(stop_seconds, budget))
        self.run_id = child.job.request.run_id
        # The live state says which device trains, so a CPU fallback shows in `durabert status`.
        reporter.state.device = child.job.device
        self._stop_deadline: float | None = None

    async def run(self) -> BertFineTuneResult:
        """Run the attempt to its outcome.

        Returns:
            The run's result when the child finished.

        Raises:
            ApplicationError: The child's error, or a retryable ``WorkerPreemptedError``,
                ``TrainingStalledError`` or ``TrainingProcessDied`` with the heartbeat as details.
            asyncio.CancelledError: After the child checkpointed and stopped, on cancellation.
        """
        try:
            try:
                await self._start()
                outcome = await self._watch()
            except asyncio.CancelledError:
                log.warning("fine-tuning cancelled: checkpointing and stopping training", run_id=self.run_id)
                await self._stop_child()
                raise
            if isinstance(outcome, BertFineTuneResult):
                return outcome
            return await self._stop(outcome)
        finally:
            # A child that reported its outcome exits by itself; give it a moment (never past the
            # stop deadline), then make sure.
            await self.child.wait_exit(self._exit_allowance())
            self.child.close()

    def _exit_allowance(self) -> float:
        """How long to wait for the child to exit by itself: a moment, cut short by the stop deadline."""
        if self._stop_deadline is None:
            return MIN_STOP_SECONDS
        remaining = self._stop_deadline - asyncio.get_running_loop().time()
        return max(0.0, min(MIN_STOP_SECONDS, remaining))

    async def _start(self) -> None:
        """Start the child, heartbeating meanwhile.

        The first start launches the forkserver, which imports torch (~10 s): without
        heartbeats that would look like a dead worker to a short heartbeat timeout.
        """
        starting = asyncio.create_task(self.child.start())
        try:
            await self.reporter.beat_until_done(starting, POLL_SECONDS)
        except asyncio.CancelledError:
            # Let the start finish, so the child exists and can be told to stop (never orphaned).
            with contextlib.suppress(Exception):
                await asyncio.shield(starting)
            raise
        self.reporter.state.pid = self.child.pid
        self.reporter.heartbeat()

    async def _watch(self) -> BertFineTuneResult | StopCause:
        """Fold events into the heartbeat until the child finishes or something stops it."""
        while True:
            if activity.is_worker_shutdown():
                return StopCause.WORKER_SHUTDOWN
            if self.watchdog.silent_for() is not None:
                return StopCause.STALLED
            try:
                event = await self.child.next_event(POLL_SECONDS)
            except ChildExited:
                raise await self._died() from None
            if event is None:
                self.reporter.heartbeat()
                continue
            self._observe(event)
            if isinstance(event, DoneEvent | ErrorEvent | StoppedEvent):
                return self._finished(event)

    def _finished(self, event: Terminal) -> BertFineTuneResult:
        """The result of a child that ended by itself, or the error it ended with."""
        if isinstance(event, DoneEvent):
            return event.result
        if isinstance(event, ErrorEvent):
            raise _error_of(event)
        # Stopped without being asked (its control pipe broke): retry from its checkpoint.
        raise self._failure(ErrorType.PROCESS_DIED, f"stopped unexpectedly at step {event.step}")

    def _observe(self, event: TrainingEvent) -> None:
        self.watchdog.observe(event)
        self.reporter.on_event(event)

    async def _stop(self, cause: StopCause) -> BertFineTuneResult:
        """Stop the child for a worker shutdown or a stall, and report as the module's table says."""
        if cause is StopCause.STALLED:
            silence = self.watchdog.silent_for() or 0.0
            log.error("training stalled: killing the child", run_id=self.run_id, phase=self.watchdog.phase)
            self.child.kill()
            raise self._failure(
                ErrorType.STALLED,
                f"stalled: no progress for {silence:.0f} s in phase {self.watchdog.phase!r} "
                f"(limit {self.watchdog.limit:.0f} s, see stall_timeout_seconds); the child was killed",
            )
        log.warning("worker shutting down: checkpointing and stopping training", run_id=self.run_id)
        final = await self._stop_child()
        if isinstance(final, DoneEvent | ErrorEvent):
            return self._finished(final)  # it finished (or failed) before the stop landed
        raise self._failure(
            ErrorType.PREEMPTED,
            "stopped because the worker is shutting down; a retry on another worker resumes",
        )

    async def _stop_child(self) -> Terminal | None:
        """Ask the child to checkpoint and stop; drain events until it did, or kill it at the deadline.

        Called again (a cancellation during a shutdown's stop), it keeps the first deadline.
        """
        loop = asyncio.get_running_loop()
        if self._stop_deadline is None:
            self.child.request_stop()
            self.reporter.state.phase = "stopping"
            self._stop_deadline = loop.time() + self.stop_seconds
        final = await self._drain_until(self._stop_deadline)
        if final is None:
            # Past its allowance (or gone without a word): waiting longer would eat the time the
            # pod needs to exit.
            log.error("training process did not checkpoint and stop in time; killing it", run_id=self.run_id)
            self.child.kill()
        code = await self.child.wait_exit(self._exit_allowance())
        self.child.kill()
        checkpoint = self.reporter.state.latest_checkpoint
        log.info(
            "training stopped",
            run_id=self.run_id,
            outcome=getattr(final, "kind", None),
            step=self.reporter.state.step,
            checkpoint_step=checkpoint.step if checkpoint else None,
            checkpoint=checkpoint.path if checkpoint else None,
            exit_code=code,
        )
        return final

    async def _drain_until(self, deadline: float) -> Terminal | None:
        """Fold a stopping child's events into the heartbeat until its last one or the deadline."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                event = await self.child.next_event(max(0.01, min(POLL_SECONDS, deadline - loop.time())))
            except ChildExited:
                return None
            # Heartbeats of a cancelled activity may be refused by the SDK (RuntimeError once the
            # activity is being torn down): the checkpoint matters more than the heartbeat.
            with contextlib.suppress(RuntimeError):
                if event is None:
                    self.reporter.heartbeat()
                else:
                    self._observe(event)
            if isinstance(event, DoneEvent | ErrorEvent | StoppedEvent):
                return event
        return None

    async def _died(self) -> ApplicationError:
        code = await self.child.wait_exit(MIN_STOP_SECONDS)
        log.error("training process exited without a result", run_id=self.run_id, exit_code=code)
        return self._failure(
            ErrorType.PROCESS_DIED,
            f"exited with code {code} before finishing (killed, or out of host memory)",
        )

    def _failure(self, error_type: ErrorType, what: str) -> ApplicationError:
        checkpoint = self.reporter.state.latest_checkpoint
        where = (
            f"checkpoint {checkpoint.path} (step {checkpoint.step})" if checkpoint else "no checkpoint yet"
        )
        return retryable_error(
            error_type,
            f"training of run {self.run_id!r} {what}; newest complete checkpoint: {where}",
            self.reporter.details(),
        )
