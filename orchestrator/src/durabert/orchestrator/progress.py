"""How a training run's progress and result are shown: text helpers, two live views, and watching.

On a terminal the view is a rich progress bar redrawn in place; anywhere else (a pipe, a CI
log) it prints one line each time something changes, so logs stay readable and greppable.
:func:`watch` drives a view from :func:`durabert.orchestrator.client_ops.watch_run` (the data
side); ``durabert watch``, ``durabert train --wait`` and ``make demo`` all show progress this way.
"""

import asyncio
from collections.abc import Callable
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
from rich.text import Text
from temporalio.client import Client

from durabert.orchestrator.client_ops import LiveProgress, WatchOutcome, watch_run
from durabert.orchestrator.predict_ops import PredictOutcome, watch_predict
from durabert.shared.models import (
    BatchInferenceProgress,
    BertBatchInferenceResult,
    BertFineTuneResult,
    BertInferenceResult,
    BertSweepResult,
    TrainingProgress,
)

WAITING_TEXT = "waiting for the orchestrator worker to answer"
"""Shown while a progress query gets no answer (no worker polling the queue yet)."""


def progress_details(progress: TrainingProgress) -> str:
    """Summarise everything but the step count: loss, checkpoint, attempts, preemptions, failures.

    Args:
        progress: The merged progress (see ``client_ops.live_progress``).

    Returns:
        Text such as ``loss 0.4123 · latest checkpoint step 100 · attempt 3 · preemptions 1 ·
        failures 1 · resumes 2``.
    """
    parts = []
    if progress.epoch:
        parts.append(f"epoch {progress.epoch:.2f}")
    parts.append(f"loss {progress.loss:.4f}" if progress.loss is not None else "loss -")
    latest = progress.latest_checkpoint
    parts.append(f"latest checkpoint step {latest.step}" if latest is not None else "no checkpoint yet")
    parts.append(f"attempt {progress.attempt}" if progress.attempt else "attempt -")
    # Apart: preemptions never use up max_attempts, failures do.
    parts.append(f"preemptions {progress.preemptions}")
    parts.append(f"failures {progress.failures}")
    parts.append(f"resumes {progress.resumes}")
    if progress.continued_as_new:
        parts.append(f"continued as new {progress.continued_as_new}")
    if progress.error:
        parts.append(f"error: {progress.error}")
    return " · ".join(parts)


def stage_text(progress: TrainingProgress) -> str:
    """Name the stage, with the running attempt's phase when it says more.

    Args:
        progress: The merged progress.

    Returns:
        ``training (evaluating)``, ``snapshotting``, ``completed``, ...
    """
    if progress.phase is None or progress.phase == progress.stage:
        return progress.stage
    return f"{progress.stage} ({progress.phase})"


def format_progress(progress: TrainingProgress) -> str:
    """Render progress as one line (used for status output and non-terminal watching).

    Args:
        progress: The merged progress.

    Returns:
        Text such as ``training (training) · step 120/400 (30%) · epoch 0.60 · loss 0.4123 · ...``.
    """
    if progress.max_steps:
        percent = min(100, 100 * progress.step // progress.max_steps)
        steps = f"step {progress.step}/{progress.max_steps} ({percent}%)"
    else:
        steps = f"step {progress.step}/?"
    return f"{stage_text(progress)} · {steps} · {progress_details(progress)}"


def result_rows(result: BertFineTuneResult) -> list[tuple[str, str]]:
    """List a finished run's key figures as label/value pairs.

    Args:
        result: The training workflow's result.

    Returns:
        Rows: run id, steps, losses and eval metrics, resume step, attempts, preemptions and
        failures apart, device, model path.
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
        ("preemptions", str(result.preemptions)),
        ("failed attempts", str(result.failed_attempts)),
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


def predictions_table(result: BertInferenceResult) -> Table:
    """Build the table of predictions ``durabert infer`` prints: text, label, confidence.

    Args:
        result: The inference workflow's result.

    Returns:
        The table, ready to print.
    """
    table = Table("text", "label", "confidence")
    for text, label, confidence in zip(
        result.texts, result.predicted_label_names, result.confidences, strict=True
    ):
        table.add_row(Text(text), Text(label), f"{confidence:.3f}")
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
            stage=stage_text(progress),
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


async def watch(
    client: Client,
    run_id: str,
    console: Console,
    *,
    interval: float,
    detach: asyncio.Event,
    on_progress: Callable[[LiveProgress], None] | None = None,
) -> WatchOutcome:
    """Show a run's live progress on ``console`` until it closes or the watcher detaches.

    Args:
        client: A connected client.
        run_id: The run id.
        console: Where the view draws (a bar on a terminal, changed lines elsewhere).
        interval: Seconds between progress reads.
        detach: Set (by Ctrl-C) to stop watching; the run goes on.
        on_progress: Also called with every reading, after the view (the demo kills a
            worker from here).

    Returns:
        How watching ended.
    """
    with make_view(console) as view:

        def show(reading: LiveProgress) -> None:
            view.update(reading.progress)
            if on_progress is not None:
                on_progress(reading)

        return await watch_run(client, run_id, interval=interval, detach=detach, on_progress=show)


def format_scoring(progress: BatchInferenceProgress | None) -> str:
    """Render a batch scoring's progress as one line (``durabert predict`` and ``durabert watch``).

    Args:
        progress: The merged progress, or None while nothing answers.

    Returns:
        Text such as ``scoring · chunk 3/13 · rows 12,288/50,000 (24%) · resumed chunks 2``.
    """
    if progress is None:
        return WAITING_TEXT
    parts: list[str] = [progress.stage]
    if progress.chunks:
        parts.append(f"chunk {progress.chunks_done}/{progress.chunks}")
    if progress.num_rows:
        percent = 100 * progress.rows_done // progress.num_rows
        parts.append(f"rows {progress.rows_done:,}/{progress.num_rows:,} ({percent}%)")
    if progress.resumed_chunks:
        parts.append(f"resumed chunks {progress.resumed_chunks}")
    if progress.error:
        parts.append(f"error: {progress.error}")
    return " · ".join(parts)


def scoring_result_table(result: BertBatchInferenceResult) -> Table:
    """Build the two-column table ``durabert predict`` prints for a finished scoring.

    Args:
        result: The batch scoring workflow's result.

    Returns:
        The table, ready to print.
    """
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in (
        ("run id", result.run_id),
        ("snapshot", result.snapshot_id),
        ("rows", f"{result.num_rows:,}"),
        ("chunks", f"{result.chunks} ({result.resumed_chunks} resumed)"),
        ("device", result.device),
        ("output", f"{result.output_path} (under the artifact root)"),
    ):
        table.add_row(label, Text(value))
    return table


async def watch_scoring(
    client: Client, workflow_id: str, console: Console, *, interval: float, detach: asyncio.Event
) -> PredictOutcome:
    """Print a batch scoring's progress on ``console``, a line each time it changes, until it closes.

    Args:
        client: A connected client.
        workflow_id: The scoring workflow's id.
        console: Where lines go.
        interval: Seconds between progress reads.
        detach: Set (by Ctrl-C) to stop watching; scoring goes on.

    Returns:
        How watching ended.
    """
    last: list[str] = []

    def show(progress: BatchInferenceProgress | None) -> None:
        text = format_scoring(progress)
        if last != [text]:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
            last[:] = [text]

    return await watch_predict(client, workflow_id, interval=interval, detach=detach, on_progress=show)


BEST_MARK = "*"
"""Marks the best trial in the sweep table."""


def _params_text(params: dict[str, object]) -> str:
    return " ".join(f"{name}={value}" for name, value in params.items())


def sweep_table(sweep: BertSweepResult) -> Table:
    """Build the table of a sweep's trials ``durabert sweep status`` prints, the best one marked.

    Args:
        sweep: The sweep so far (the progress query's) or its result.

    Returns:
        One row per trial: run id, params, step, metric, state, and ``*`` on the best.
    """
    table = Table("best", "trial", "params", "step", sweep.metric, "state", title=f"sweep {sweep.sweep_id}")
    for trial in sweep.trials:
        metric = f"{trial.metric:.4f}" if trial.metric is not None else "-"
        state = trial.state if trial.error is None else f"{trial.state}: {trial.error}"
        table.add_row(
            BEST_MARK if trial.run_id == sweep.best_run_id else "",
            Text(trial.run_id),
            Text(_params_text(trial.params)),
            str(trial.global_step),
            metric,
            Text(state),
        )
    return table


def sweep_summary(sweep: BertSweepResult) -> str:
    """Summarise a sweep in one line: strategy, rungs, best trial, steps trained.

    Args:
        sweep: The sweep so far or its result.

    Returns:
        Text such as ``successive_halving · rungs 4, 8 · best sw-02 (eval_accuracy 0.9100) · 24 steps``.
    """
    rungs = ", ".join("epochs" if steps is None else str(steps) for steps in sweep.rungs)
    best = "best -"
    if sweep.best_run_id is not None and sweep.best_metric is not None:
        best = f"best {sweep.best_run_id} ({sweep.metric} {sweep.best_metric:.4f})"
    return f"{sweep.strategy} · rungs {rungs} · {best} · {sweep.total_steps} steps trained"
