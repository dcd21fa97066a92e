"""The ``TrainerCallback`` that reports, publishes checkpoints under the fence, and stops on request.

With an object-store artifact root it also hands each published checkpoint to the attempt's
:class:`~durabert.gpu_worker.uploads.CheckpointUploader`, which reports it once it is in the store.
Imported only by the training child (it imports ``transformers``).
"""

import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from durabert.gpu_worker import checkpoints, history
from durabert.gpu_worker.events import CheckpointEvent, ProgressEvent, PulseEvent, StartedEvent
from durabert.gpu_worker.preparation import Emit, PreparedRun
from durabert.gpu_worker.uploads import CheckpointUploader
from durabert.shared.models import TrainingPhase

PULSE_SECONDS = 1.0
"""Least time between two liveness pulses from steps or evaluation batches."""


def _uploader(prepared: PreparedRun, emit: Emit) -> CheckpointUploader | None:
    """The attempt's background uploader with an object-store root; None with a local one."""
    mirror = prepared.mirror
    if mirror is None:
        return None
    request, writer = prepared.job.request, prepared.writer()

    def push(folder: Path) -> None:
        prepared.fence.check_store(f"upload {folder.name}")
        mirror.push_checkpoint(request.run_id, folder, writer, request.config.save_total_limit)

    return CheckpointUploader(push, emit)


class DurabertCallback(TrainerCallback):  # type: ignore[misc]
    """Reports progress and checkpoints of one attempt, and turns a stop request into save-and-stop."""

    def __init__(self, prepared: PreparedRun, emit: Emit, stop: threading.Event) -> None:
        """Create the callback for one attempt.

        Args:
            prepared: The prepared run.
            emit: Receives events.
            stop: When set, the attempt saves a checkpoint at the end of the current step and stops.
        """
        self.prepared = prepared
        self.emit = emit
        self.stop = stop
        self.last_loss: float | None = None
        """The newest logged training loss."""
        self.stopped_at: int | None = None
        """The step at which a stop request was honoured, if one was."""
        self.uploader = _uploader(prepared, emit)
        """Uploads checkpoints to the object store (None with a local artifact root)."""
        self._last_pulse = 0.0

    def finish_uploads(self) -> None:
        """Wait until every published checkpoint is in the store (no-op with a local root).

        Raises:
            ApplicationError: A failed upload's error.
        """
        if self.uploader is not None:
            self.uploader.wait()

    def _pulse(self, phase: TrainingPhase, step: int) -> None:
        now = time.monotonic()
        if now - self._last_pulse >= PULSE_SECONDS:
            self._last_pulse = now
            self.emit(PulseEvent(phase=phase, step=step))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Report the start: resumed step, planned steps, parameters."""
        parameters = sum(p.numel() for p in kwargs["model"].parameters() if p.requires_grad)
        resume = self.prepared.resume
        started = StartedEvent(
            resumed_from_step=state.global_step or None,
            resumed_from=self.prepared.store.relative(resume.path) if resume else None,
            max_steps=state.max_steps,
            num_parameters=parameters,
        )
        self.emit(started)
        self.emit(PulseEvent(phase="training", step=state.global_step))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Honour a stop request (save now, then stop), end the attempt on a failed upload, and pulse."""
        if self.uploader is not None:
            self.uploader.raise_if_failed()
        if self.stop.is_set() and self.stopped_at is None:
            # Save now (the Trainer writes the checkpoint right after this callback), then stop.
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        if control.should_save:
            # The Trainer saves right after this callback: a superseded attempt stops before
            # it writes even into its own staging folder.
            with self.prepared.fence.guard(f"save checkpoint-{state.global_step}"):
                pass
        self._pulse("training", state.global_step)

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Pulse during evaluation, so a long evaluation is not taken for a stall."""
        self._pulse("evaluating", state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """Record and report a logged training loss."""
        if not logs or "loss" not in logs:
            return
        self.last_loss = float(logs["loss"])
        epoch = float(state.epoch or 0.0)
        record = history.LossRecord(
            attempt=self.prepared.attempt_seq, step=state.global_step, epoch=epoch, loss=self.last_loss
        )
        with self.prepared.fence.guard("append to the run history"):
            history.append(self.prepared.run_dir, record)
        self.emit(
            ProgressEvent(step=state.global_step, epoch=epoch, loss=self.last_loss, max_steps=state.max_steps)
        )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Mark the staged checkpoint complete, publish it under the fence, rotate, report (or upload)."""
        # on_save fires after the Trainer wrote every file of the staged folder: mark it
        # complete there, then publish it into checkpoints/ in one rename, under the fence.
        prepared, name = self.prepared, f"checkpoint-{state.global_step}"
        target_dir = prepared.checkpoints_dir
        checkpoints.mark_complete(prepared.staging / name, state.global_step, prepared.writer())
        # One upload in flight: the previous checkpoint must be in the store before rotation
        # below may delete its local copy.
        self.finish_uploads()
        with prepared.fence.guard(f"publish {name}"):
            published = checkpoints.publish(prepared.staging / name, target_dir) or target_dir / name
            checkpoints.rotate(target_dir, prepared.job.request.config.save_total_limit)
            relative = prepared.store.relative(published)
            record = history.CheckpointRecord(
                attempt=prepared.attempt_seq, step=state.global_step, path=relative
            )
            history.append(prepared.run_dir, record)
        event = CheckpointEvent(
            step=state.global_step,
            epoch=float(state.epoch or 0.0),
            path=relative,
            loss=self.last_loss,
            max_steps=state.max_steps,
        )
        if self.uploader is None:
            self.emit(event)
        else:
            self.uploader.submit(published, event)  # reported once it is in the store
