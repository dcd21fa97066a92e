"""How a training run's progress and result are shown: pure text helpers and two live views.

On a terminal the view is a rich progress bar redrawn in place; anywhere else (a pipe, a CI
log) it prints one line each time something changes, so logs stay readable and greppable.
"""

from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from durabert.shared.models import BertFineTuneResult, TrainingProgress

WAITING_TEXT = "waiting for the orchestrator worker to answer"
"""Shown while a progress query gets no answer (no worker polling the queue yet)."""


def progress_details(progress: TrainingProgress) -> str:
    """Summarise everything but the step count: loss, checkpoints, attempt, resumes.

    Args:
        progress: The ``get_progress`` answer.

    Returns:
        Text such as ``loss 0.4123 · checkpoints 2 (latest step 100) · attempt 2 · resumes 1``.
    """
    parts = []
    if progress.epoch:
        parts.append(f"epoch {progress.epoch:.2f}")
    parts.append(f"loss {progress.loss:.4f}" if progress.loss is not None else "loss -")
    checkpoints = f"checkpoints {progress.checkpoints_saved}"
    if progress.latest_checkpoint is not None:
        checkpoints += f" (latest step {progress.latest_checkpoint.step})"
    parts.append(checkpoints)
    parts.append(f"attempt {progress.attempt}" if progress.attempt else "attempt -")
    parts.append(f"resumes {progress.resumes}")
    if progress.error:
        parts.append(f"error: {progress.error}")
    return " · ".join(parts)


def format_progress(progress: TrainingProgress) -> str:
    """Render progress as one line (used for status output and non-terminal watching).

    Args:
        progress: The ``get_progress`` answer.

    Returns:
        Text such as ``training · step 120/400 (30%) · epoch 0.60 · loss 0.4123 · ...``.
    """
    if progress.max_steps:
        percent = min(100, 100 * progress.step // progress.max_steps)
        steps = f"step {progress.step}/{progress.max_steps} ({percent}%)"
    else:
        steps = f"step {progress.step}/?"
    return f"{progress.stage} · {steps} · {progress_details(progress)}"


def result_rows(result: BertFineTuneResult) -> list[tuple[str, str]]:
    """List a finished run's key figures as label/value pairs.

    Args:
        result: The training workflow's result.

    Returns:
        Rows: run id, steps, losses and eval metrics, resume step, attempts, device, model path.
    """
    rows = [
        ("run id", result.run_id),
        ("global step", str(result.global_step)),
        ("train loss", f"{result.train_loss:.4f}"),
    ]
    rows += [(name, f"{value:.4f}") for name, value in sorted((result.eval_metrics or {}).items())]
    resumed = "never resumed" if result.resumed_from_step is None else f"step {result.resumed_from_step}"
    rows += [
        ("resumed from", resumed),
        ("attempts", str(result.attempts)),
        ("checkpoints saved", str(result.total_checkpoints_saved)),
        ("device", result.device),
        ("training time", f"{result.training_time_seconds:.1f} s"),
        ("model", f"{result.model_path} (under the artifact root)"),
    ]
    return rows


def result_table(result: BertFineTuneResult) -> Table:
    """Build a two-column rich table of :func:`result_rows`.

    Args:
        result: The training workflow's result.

    Returns:
        The table, ready to print.
    """
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in result_rows(result):
        table.add_row(label, value)
    return table


class ProgressView(Protocol):
    """Something that shows progress updates while a run is watched."""

    def __enter__(self) -> "ProgressView":
        """Start showing."""
        ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop showing, leaving the last state visible."""
        ...

    def update(self, progress: TrainingProgress | None) -> None:
        """Show the newest progress; None when the query got no answer."""
        ...


class LineView:
    """Prints a line only when the progress text changes (for pipes and logs)."""

    def __init__(self, console: Console) -> None:
        """Print to ``console``.

        Args:
            console: Where lines go.
        """
        self._console = console
        self._last: str | None = None

    def __enter__(self) -> "LineView":
        """Nothing to set up."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Nothing to tear down."""

    def update(self, progress: TrainingProgress | None) -> None:
        """Print the progress line if it differs from the last one.

        Args:
            progress: The newest progress, or None while no worker answers.
        """
        text = format_progress(progress) if progress is not None else WAITING_TEXT
        if text != self._last:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)
            self._last = text


class BarView:
    """A rich progress bar: stage, bar, step of max steps, details, elapsed time."""

    def __init__(self, console: Console) -> None:
        """Draw on ``console`` (a terminal).

        Args:
            console: The terminal console.
        """
        self._progress = Progress(
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[details]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> "BarView":
        """Start the live display."""
        self._progress.start()
        self._task = self._progress.add_task("training", total=None, stage="pending", details="")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the live display, leaving the final bar on screen."""
        self._progress.stop()

    def update(self, progress: TrainingProgress | None) -> None:
        """Move the bar and refresh its text.

        Args:
            progress: The newest progress, or None while no worker answers.
        """
        if self._task is None:
            return
        if progress is None:
            self._progress.update(self._task, details=WAITING_TEXT)
            return
        self._progress.update(
            self._task,
            total=progress.max_steps,
            completed=progress.step,
            stage=progress.stage,
            details=progress_details(progress),
        )


def make_view(console: Console) -> ProgressView:
    """Pick the view for a console: a live bar on a terminal, changed lines elsewhere.

    Args:
        console: Where progress goes.

    Returns:
        The view.
    """
    return BarView(console) if console.is_terminal else LineView(console)
