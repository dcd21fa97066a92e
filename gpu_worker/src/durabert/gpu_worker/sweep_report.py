"""The ``record_sweep`` activity: a sweep's ``trials.json`` and ``metric.png`` under ``sweeps/<sweep_id>/``.

The orchestrator must not import matplotlib, so the sweep workflow asks a GPU worker (matplotlib is
one of its dependencies) to draw. It runs on the inference queue: a report is a small CPU job that
must not wait behind a training slot. Each file is written whole: by rename in a local root, by one
PUT in an object store, so a reader never sees half a plot. The plot shows the metric against the
steps trained, one line per trial, a point per finished rung.
"""

import asyncio
import io
import json
import os
import tempfile
from pathlib import Path

from temporalio import activity

from durabert.shared import names
from durabert.shared.logging import get_logger
from durabert.shared.models import BertSweepResult, SweepReportRequest, SweepReportResult
from durabert.shared.object_store import open_object_store
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)

TRIALS_FILE = "trials.json"
"""The sweep's trials, best and totals as JSON."""
PLOT_FILE = "metric.png"
"""The metric against steps, one line per trial."""


def trials_document(sweep: BertSweepResult) -> bytes:
    """The sweep as the JSON document ``trials.json`` holds.

    Args:
        sweep: The sweep so far.

    Returns:
        UTF-8 JSON, indented.
    """
    return json.dumps(sweep.model_dump(mode="json"), indent=2, sort_keys=True).encode()


def plot_metric(sweep: BertSweepResult) -> bytes:
    """Draw the metric against steps trained, a line per trial (best one thick), as PNG bytes.

    Args:
        sweep: The sweep so far.

    Returns:
        The PNG file's bytes.
    """
    # The object-oriented API with the Agg canvas: no global pyplot state, safe in a worker thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for trial in sweep.trials:
        points = [(point.step, point.metric) for point in trial.points if point.metric is not None]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        best = trial.run_id == sweep.best_run_id
        label = f"{trial.run_id}{' (best)' if best else ''}"
        axes.plot(steps, values, marker="o", linewidth=2.5 if best else 1.0, label=label)
    axes.set_xlabel("optimizer steps trained")
    axes.set_ylabel(sweep.metric)
    axes.set_title(f"sweep {sweep.sweep_id} ({sweep.strategy})")
    if axes.lines:
        axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _write_whole(path: Path, data: bytes) -> None:
    """Write a file by rename, so a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_report(settings: DurabertSettings, sweep: BertSweepResult) -> SweepReportResult:
    """Write ``trials.json`` and ``metric.png`` of a sweep into the artifact store.

    Args:
        settings: durabert settings (the artifact root: a folder or an object-store URL).
        sweep: The sweep so far.

    Returns:
        The report folder relative to the root, and the files written.
    """
    folder = f"{names.SWEEPS_DIR}/{sweep.sweep_id}"
    files = {TRIALS_FILE: trials_document(sweep), PLOT_FILE: plot_metric(sweep)}
    objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
    for name, data in files.items():
        if objects is None:
            _write_whole(settings.artifact_dir / folder / name, data)
        else:
            objects.write_bytes(f"{folder}/{name}", data)
    return SweepReportResult(report_path=folder, files=sorted(files))


class SweepReports:
    """The sweep report activity, bound to the worker's settings."""

    def __init__(self, settings: DurabertSettings) -> None:
        """Keep the settings (the artifact root).

        Args:
            settings: durabert settings.
        """
        self.settings = settings

    @activity.defn(name=names.RECORD_SWEEP)
    async def record_sweep(self, request: SweepReportRequest) -> SweepReportResult:
        """Write the sweep's report files, in a thread so the inference event loop keeps answering.

        Args:
            request: The sweep so far.

        Returns:
            Where the files went.
        """
        sweep = request.sweep
        result = await asyncio.to_thread(write_report, self.settings, sweep)
        log.info("sweep report written", sweep_id=sweep.sweep_id, report_path=result.report_path)
        return result
