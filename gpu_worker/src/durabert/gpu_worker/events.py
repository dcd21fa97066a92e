"""Messages between the activity and its training child process.

The child sends one JSON line per event over a pipe; the activity parses them with
:data:`EVENT_ADAPTER`. Only the activity talks to Temporal.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from durabert.shared.models import BertFineTuneRequest, BertFineTuneResult, TrainingPhase
from durabert.shared.settings import DurabertSettings

STOP_MESSAGE = "stop"
"""What the parent sends on the control pipe to ask for save-and-stop."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class StartedEvent(_Event):
    """Training is about to run its first step."""

    kind: Literal["started"] = "started"
    """Event discriminator."""
    resumed_from_step: int | None
    """Step of the checkpoint resumed from, or None for a fresh start."""
    resumed_from: str | None = None
    """That checkpoint's folder relative to the artifact root."""
    max_steps: int
    """Planned total optimizer steps."""
    num_parameters: int
    """Trainable parameters."""


class PulseEvent(_Event):
    """The child is alive: a new phase began, or a step or evaluation batch finished (throttled).

    The parent's stall watchdog measures silence between events; this is what keeps a
    healthy child from looking stalled between loss logs.
    """

    kind: Literal["pulse"] = "pulse"
    """Event discriminator."""
    phase: TrainingPhase
    """What the child is doing now."""
    step: int = 0
    """Global optimizer step (0 before training)."""


class ProgressEvent(_Event):
    """A logged training loss."""

    kind: Literal["progress"] = "progress"
    """Event discriminator."""
    step: int
    """Global optimizer step."""
    epoch: float
    """Fractional epoch."""
    loss: float | None
    """Mean loss since the previous log."""
    max_steps: int
    """Planned total optimizer steps."""


class CheckpointEvent(_Event):
    """A checkpoint was written and marked complete."""

    kind: Literal["checkpoint"] = "checkpoint"
    """Event discriminator."""
    step: int
    """Global optimizer step of the checkpoint."""
    epoch: float
    """Fractional epoch."""
    path: str
    """Checkpoint folder relative to the artifact root."""
    loss: float | None
    """Latest logged loss."""
    max_steps: int
    """Planned total optimizer steps."""


class StoppedEvent(_Event):
    """Training stopped early on request, after saving a checkpoint (see ``TrainingStopped``)."""

    kind: Literal["stopped"] = "stopped"
    """Event discriminator."""
    step: int
    """Global step reached."""
    checkpoint: str | None
    """Checkpoint saved at the stop, relative to the artifact root."""


class DoneEvent(_Event):
    """Training finished and the final model is in place."""

    kind: Literal["done"] = "done"
    """Event discriminator."""
    result: BertFineTuneResult
    """The run's result."""


class ErrorEvent(_Event):
    """Training failed."""

    kind: Literal["error"] = "error"
    """Event discriminator."""
    error_type: str
    """``ApplicationError`` type for Temporal (see ``durabert.shared.errors.ErrorType``)."""
    message: str
    """What went wrong."""
    non_retryable: bool
    """True when no retry can fix it."""


TrainingEvent = Annotated[
    StartedEvent | PulseEvent | ProgressEvent | CheckpointEvent | StoppedEvent | DoneEvent | ErrorEvent,
    Field(discriminator="kind"),
]
"""Any event the training child sends."""
EVENT_ADAPTER: TypeAdapter[TrainingEvent] = TypeAdapter(TrainingEvent)
"""Parses an event from its JSON line."""


class TrainingStopped(Exception):  # an outcome, not an error
    """Raised by training when it stopped on request after saving a checkpoint."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        """Record where training stopped.

        Args:
            step: Global step reached.
            checkpoint: Checkpoint saved at the stop, relative to the artifact root.
        """
        super().__init__(f"stopped at step {step}")
        self.step = step
        self.checkpoint = checkpoint

    def event(self) -> StoppedEvent:
        """The pipe message that tells the parent."""
        return StoppedEvent(step=self.step, checkpoint=self.checkpoint)


class TrainJob(BaseModel):
    """Everything the training child needs, sent to it as JSON."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    request: BertFineTuneRequest
    """The activity's input."""
    settings: DurabertSettings
    """The worker's settings (artifact root, logging)."""
    device: Literal["cuda", "mps", "cpu"]
    """Device chosen by the worker."""
    attempt: int = Field(default=1, ge=1)
    """Attempt number as counted by the workflow."""
