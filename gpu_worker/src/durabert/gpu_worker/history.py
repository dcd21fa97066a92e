"""A run's history file (attempts, losses, checkpoints over all attempts) and its loss curve.

Each attempt appends typed records to ``runs/<run_id>/history.jsonl``; the final model's
manifest and ``loss_curve.png`` are built from it, so a resumed run's curve shows every attempt.
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

HISTORY_FILE = "history.jsonl"
"""History file name inside a run folder."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _Record(BaseModel):
    # Records written by older versions may carry fields this one does not know: ignore them.
    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    time: str = Field(default_factory=_now)
    """ISO 8601 time the record was written."""
    attempt: int = 1
    """Sequence number of the attempt in this run folder (1 = first attempt that trained)."""


class AttemptRecord(_Record):
    """An attempt started training."""

    kind: Literal["attempt"] = "attempt"
    """Record discriminator."""
    activity_attempt: int = 1
    """The workflow's attempt number."""
    resumed_from_step: int | None = None
    """Step of the checkpoint resumed from; None for a fresh start."""
    device: str | None = None
    """Device the attempt trained on."""


class LossRecord(_Record):
    """A logged training loss."""

    kind: Literal["loss"] = "loss"
    """Record discriminator."""
    step: int
    """Global optimizer step."""
    epoch: float = 0.0
    """Fractional epoch."""
    loss: float | None = None
    """Mean loss since the previous log."""


class CheckpointRecord(_Record):
    """A complete checkpoint was published."""

    kind: Literal["checkpoint"] = "checkpoint"
    """Record discriminator."""
    step: int
    """Global step of the checkpoint."""
    path: str
    """Checkpoint folder relative to the artifact root."""


HistoryRecord = Annotated[AttemptRecord | LossRecord | CheckpointRecord, Field(discriminator="kind")]
"""Any record of a run's history."""
_RECORD: TypeAdapter[HistoryRecord] = TypeAdapter(HistoryRecord)


def append(run_dir: Path, record: AttemptRecord | LossRecord | CheckpointRecord) -> None:
    """Append one record (a line of JSON) to the run's history.

    Args:
        run_dir: The run folder.
        record: The record.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / HISTORY_FILE).open("a", encoding="utf-8") as handle:
        handle.write(record.model_dump_json() + "\n")
        handle.flush()


def read(run_dir: Path) -> list[HistoryRecord]:
    """Read the run's history, skipping a torn last line left by a killed attempt.

    Args:
        run_dir: The run folder.

    Returns:
        The records in order.
    """
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(_RECORD.validate_json(line))
        except ValidationError:
            continue
    return records


def attempts(records: Sequence[HistoryRecord]) -> list[AttemptRecord]:
    """The attempt records of a history.

    Args:
        records: History records.

    Returns:
        The attempts, oldest first.
    """
    return [record for record in records if isinstance(record, AttemptRecord)]


def plot_loss_curve(records: Sequence[HistoryRecord], destination: Path, title: str) -> None:
    """Draw the training loss of every attempt against the step into a PNG.

    Args:
        records: History records.
        destination: PNG file to write.
        title: Figure title (the run id).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    by_attempt: dict[int, list[tuple[int, float]]] = {}
    for record in records:
        if isinstance(record, LossRecord) and record.loss is not None:
            by_attempt.setdefault(record.attempt, []).append((record.step, record.loss))
    for attempt, points in sorted(by_attempt.items()):
        steps, losses = zip(*sorted(points), strict=True)
        axes.plot(steps, losses, marker=".", label=f"attempt {attempt}")
    for record in attempts(records):
        if record.resumed_from_step is not None:
            axes.axvline(record.resumed_from_step, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_title(title)
    if by_attempt:
        axes.legend()
    figure.tight_layout()
    figure.savefig(destination, dpi=100)
    plt.close(figure)
