"""The GPU worker's Temporal activities: ``fine_tune_bert`` and ``run_bert_inference``.

Only this module talks to Temporal. ``fine_tune_bert`` is an ``async def`` activity that
supervises a training child process from the event loop: it reads the child's events,
heartbeats the latest step and checkpoint, signals them to the workflow, and on
cancellation or worker shutdown asks the child to checkpoint and stop, waits for it,
then raises. Heartbeating from the event loop (not a thread) is what the SDK supports.
"""

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker.data import locate_snapshot
from durabert.gpu_worker.device import select_device
from durabert.gpu_worker.events import (
    CheckpointEvent,
    DoneEvent,
    ErrorEvent,
    ProgressEvent,
    StartedEvent,
    StoppedEvent,
    TrainingEvent,
    TrainJob,
)
from durabert.gpu_worker.inference import ModelCache, predict
from durabert.gpu_worker.model_source import resolve_model_source
from durabert.gpu_worker.supervisor import ChildExited, TrainingChild
from durabert.shared import names
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import ErrorType
from durabert.shared.logging import bind_run_id, get_logger
from durabert.shared.models import (
    BertFineTuneRequest,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    CheckpointInfo,
)
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)

POLL_SECONDS = 1.0
"""How often the supervising loop wakes without events, to heartbeat and notice a worker shutdown."""
MIN_STOP_SECONDS = 5.0
"""Least time a stopping child gets to write its checkpoint before it is killed."""
TRAINING_PROCESS_DIED = "TrainingProcessDied"
"""Error type when the child exits without a result (killed, out of host memory): retried."""


class TrainingHeartbeat(BaseModel):
    """Heartbeat details of ``fine_tune_bert``; they come back as a dict on the next attempt."""

    step: int = 0
    """Latest optimizer step."""
    checkpoint: str | None = None
    """Latest complete checkpoint, relative to the artifact root."""
    attempt: int = 1
    """Attempt that sent the heartbeat."""
    pid: int | None = None
    """Process id of the training child (for operators and tests)."""


class _Reporter:
    """Heartbeats and workflow signals for one attempt; signals go out in order from one task."""

    def __init__(self, run_id: str, attempt: int) -> None:
        self.run_id = run_id
        self.state = TrainingHeartbeat(attempt=attempt)
        self.checkpoints = 0
        self._signals: asyncio.Queue[CheckpointInfo | None] = asyncio.Queue()
        self._handle = self._workflow_handle()
        self._sender = asyncio.create_task(self._send_signals()) if self._handle is not None else None

    @staticmethod
    def _workflow_handle() -> Any:
        info = activity.info()
        try:
            client = activity.client()
        except RuntimeError:
            return None  # outside a worker (ActivityEnvironment): no workflow to tell
        if not info.workflow_id:
            return None  # a standalone activity has no workflow
        return client.get_workflow_handle(info.workflow_id)

    async def _send_signals(self) -> None:
        while (info := await self._signals.get()) is not None:
            try:
                await self._handle.signal(names.UPDATE_CHECKPOINT_SIGNAL, info)
            except Exception as exc:
                log.warning(
                    "could not signal the workflow", run_id=self.run_id, step=info.step, error=repr(exc)
                )

    def heartbeat(self) -> None:
        activity.heartbeat(self.state.model_dump())

    def on_event(self, event: TrainingEvent) -> None:
        if isinstance(event, ProgressEvent | CheckpointEvent):
            self.state.step = event.step
            path = event.path if isinstance(event, CheckpointEvent) else None
            if path is not None:
                self.state.checkpoint = path
                self.checkpoints += 1
                log.info("checkpoint saved", run_id=self.run_id, step=event.step, path=path)
            self._signals.put_nowait(
                CheckpointInfo(
                    epoch=max(0.0, event.epoch),
                    step=event.step,
                    path=path,
                    loss=event.loss,
                    timestamp=datetime.now(UTC).isoformat(),
                    max_steps=event.max_steps if event.max_steps > 0 else None,
                    attempt=self.state.attempt,
                )
            )
        elif isinstance(event, StartedEvent):
            log.info(
                "training started",
                run_id=self.run_id,
                resumed_from_step=event.resumed_from_step,
                max_steps=event.max_steps,
            )
            self.state.step = event.resumed_from_step or 0
        self.heartbeat()

    async def close(self, timeout: float) -> None:
        """Send the queued signals (bounded wait), then stop the sender."""
        if self._sender is None:
            return
        self._signals.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._sender), timeout)
        self._sender.cancel()


def _resume_hint() -> str | None:
    """The checkpoint of the previous attempt's last heartbeat, validated again (it comes back a dict)."""
    details = activity.info().heartbeat_details
    if not details:
        return None
    try:
        return TrainingHeartbeat.model_validate(details[0]).checkpoint
    except ValidationError:
        log.warning("ignoring unreadable heartbeat details of the previous attempt")
        return None


class GpuActivities:
    """Activities of the GPU worker, sharing its settings, artifact store and model cache."""

    def __init__(self, settings: DurabertSettings) -> None:
        """Create the activities.

        Args:
            settings: durabert settings (artifact root, device, cache size, shutdown timeout).
        """
        self.settings = settings
        self.store = ArtifactStore(settings.artifact_root)
        self.cache = ModelCache(self.store, settings.gpu.inference_cache_size)
        self.stop_seconds = max(MIN_STOP_SECONDS, settings.worker.graceful_shutdown_timeout_seconds)

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune_bert(self, request: BertFineTuneRequest) -> BertFineTuneResult:
        """Fine-tune in a child process with checkpoints, resuming from the newest complete one.

        Args:
            request: Run id, configuration and snapshot.

        Returns:
            The run's result; the final model is in ``runs/<run_id>/model``.

        Raises:
            ApplicationError: ``ConfigurationError``/``ArtifactNotFoundError`` (not retried) for a
                request that cannot run; ``WorkerPreemptedError`` (retried) after a checkpoint
                when the worker shuts down; other types (retried) for transient failures.
            asyncio.CancelledError: After a checkpoint, when the activity is cancelled.
        """
        bind_run_id(request.run_id)
        # The workflow retries training itself (each call carries its attempt number); a
        # server-side retry of the same call would add to it.
        attempt = request.attempt + activity.info().attempt - 1
        device = select_device(request.config.use_gpu, self.settings.gpu.device)
        # Fail fast, before a child process starts, on what the parent can check cheaply.
        locate_snapshot(self.store, request.dataset_snapshot)
        resolve_model_source(request.config.model_name, self.store)
        job = TrainJob(
            request=request,
            settings=self.settings,
            device=device,
            attempt=attempt,
            resume_hint=_resume_hint(),
        )
        log.info("fine-tuning attempt starting", run_id=request.run_id, attempt=attempt, device=device)
        reporter = _Reporter(request.run_id, attempt)
        child = TrainingChild(job)
        try:
            await self._start(child, reporter)
            return await self._supervise(child, reporter)
        finally:
            try:
                # A child that reported its outcome exits by itself; give it a moment, then make sure.
                await child.wait_exit(MIN_STOP_SECONDS)
            finally:
                child.close()
                await reporter.close(timeout=self.stop_seconds)

    async def _start(self, child: TrainingChild, reporter: _Reporter) -> None:
        """Start the child, heartbeating meanwhile.

        The first start launches the forkserver, which imports torch (~10 s): without
        heartbeats that would look like a dead worker to a short heartbeat timeout.
        """
        starting = asyncio.create_task(child.start())
        try:
            while not starting.done():
                reporter.heartbeat()
                await asyncio.wait({starting}, timeout=POLL_SECONDS)
        except asyncio.CancelledError:
            # Let the start finish, so the child exists and can be told to stop (never orphaned).
            with contextlib.suppress(Exception):
                await asyncio.shield(starting)
            child.request_stop()
            raise
        await starting
        reporter.state.pid = child.pid
        reporter.heartbeat()

    async def _supervise(self, child: TrainingChild, reporter: _Reporter) -> BertFineTuneResult:
        run_id = child.job.request.run_id
        preempted = False
        try:
            while True:
                if not preempted and activity.is_worker_shutdown():
                    preempted = True
                    log.warning("worker shutting down: checkpointing and stopping training", run_id=run_id)
                    child.request_stop()
                    finished = await self._finish_stop(child, reporter, preempted=True)
                    if finished is None:  # _finish_stop raises WorkerPreemptedError otherwise
                        raise ApplicationError("training ended without a result", type=TRAINING_PROCESS_DIED)
                    return finished
                event = await child.next_event(POLL_SECONDS)
                if event is None:
                    reporter.heartbeat()
                    continue
                reporter.on_event(event)
                outcome = self._outcome(event, run_id)
                if outcome is not None:
                    return outcome
        except ChildExited:
            raise await self._died(child) from None
        except asyncio.CancelledError:
            log.warning("fine-tuning cancelled: checkpointing and stopping training", run_id=run_id)
            child.request_stop()
            await self._finish_stop(child, reporter, preempted=False)
            raise

    def _outcome(self, event: TrainingEvent, run_id: str) -> BertFineTuneResult | None:
        if isinstance(event, DoneEvent):
            return event.result
        if isinstance(event, ErrorEvent):
            raise ApplicationError(event.message, type=event.error_type, non_retryable=event.non_retryable)
        if isinstance(event, StoppedEvent):
            # The child stopped without being asked (its parent pipe broke): retry from its checkpoint.
            raise ApplicationError(
                f"training of run {run_id!r} stopped unexpectedly at step {event.step}",
                type=TRAINING_PROCESS_DIED,
            )
        return None

    async def _finish_stop(
        self, child: TrainingChild, reporter: _Reporter, *, preempted: bool
    ) -> BertFineTuneResult | None:
        """Drain events until the child stopped (or kill it after the stop timeout)."""
        run_id = child.job.request.run_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_seconds
        stopped: StoppedEvent | None = None
        while loop.time() < deadline:
            try:
                event = await child.next_event(max(0.01, min(POLL_SECONDS, deadline - loop.time())))
            except ChildExited:
                break
            if event is None:
                with contextlib.suppress(RuntimeError):
                    reporter.heartbeat()
                continue
            with contextlib.suppress(RuntimeError):
                reporter.on_event(event)
            if isinstance(event, StoppedEvent):
                stopped = event
            elif isinstance(event, DoneEvent | ErrorEvent):
                if preempted:
                    return self._outcome(event, run_id)  # it finished (or failed) before the stop landed
                break
        else:
            log.error(
                "training process did not stop in time; killing it", run_id=run_id, seconds=self.stop_seconds
            )
        code = await child.wait_exit(MIN_STOP_SECONDS)
        child.kill()
        log.info(
            "training stopped",
            run_id=run_id,
            step=stopped.step if stopped else None,
            checkpoint=stopped.checkpoint if stopped else None,
            exit_code=code,
        )
        if preempted:
            where = (
                f"checkpoint {stopped.checkpoint} (step {stopped.step})" if stopped else "no new checkpoint"
            )
            raise ApplicationError(
                f"worker shutting down: training of run {run_id!r} stopped after {where}; "
                "a retry on another worker resumes from it",
                {
                    "step": stopped.step if stopped else None,
                    "checkpoint": stopped.checkpoint if stopped else None,
                },
                type=ErrorType.PREEMPTED,
            )
        return None

    async def _died(self, child: TrainingChild) -> ApplicationError:
        code = await child.wait_exit(MIN_STOP_SECONDS)
        log.error("training process exited without a result", run_id=child.job.request.run_id, exit_code=code)
        return ApplicationError(
            f"training process for run {child.job.request.run_id!r} exited with code {code} before finishing "
            "(killed, or out of host memory); a retry resumes from the newest complete checkpoint",
            type=TRAINING_PROCESS_DIED,
        )

    @activity.defn(name=names.RUN_BERT_INFERENCE)
    async def run_bert_inference(self, request: BertInferenceRequest) -> BertInferenceResult:
        """Classify texts with a finished run's model, kept warm between calls.

        Args:
            request: Run id, texts and batching options.

        Returns:
            Predicted labels, names and confidences.

        Raises:
            ApplicationError: ``ArtifactNotFoundError`` (not retried) when the run has no finished model.
        """
        bind_run_id(request.run_id)
        device = select_device(request.use_gpu, self.settings.gpu.device)
        # Forward passes block: run them in a thread so the event loop keeps heartbeating other work.
        return await asyncio.to_thread(predict, self.cache, request, device)
