"""Storing an evaluation's report: ``runs/<run_id>/evaluations/<snapshot_id>/`` (no Temporal here).

The folder holds ``report.json`` (the result, the model's digest and the snapshot's source) and
``confusion_matrix.png``. Each file is written under a temporary name and renamed into place,
the picture first and the report last, so a report on disk always has its picture. With an
object-store root the folder is then uploaded, its completion marker last: a reader counts the
report only once the marker exists. A retried evaluation overwrites both with the same figures.
"""

import os
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from durabert.shared.artifacts import ArtifactStore, write_json_atomic
from durabert.shared.models import BertEvaluationResult
from durabert.shared.object_store import ObjectStore

EVALUATIONS_DIR: Final = "evaluations"
"""Folder of a run's evaluations, one subfolder per snapshot."""
REPORT_FILE: Final = "report.json"
"""The report: the evaluation result and where its rows and model came from."""
CONFUSION_PNG: Final = "confusion_matrix.png"
"""The confusion matrix drawn as a heat map."""


def report_key(store: ArtifactStore, run_id: str, snapshot_id: str) -> str:
    """The evaluation folder of a run and snapshot, relative to the artifact root.

    Args:
        store: The artifact store.
        run_id: The evaluated run.
        snapshot_id: The evaluated snapshot.

    Returns:
        ``runs/<run_id>/evaluations/<snapshot_id>``.
    """
    return f"{store.relative(store.run_dir(run_id))}/{EVALUATIONS_DIR}/{snapshot_id}"


def plot_confusion_matrix(result: BertEvaluationResult, destination: Path) -> None:
    """Draw the confusion matrix (rows true, columns predicted) with its counts into a PNG.

    Args:
        result: The evaluation result.
        destination: PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    count = len(result.label_names)
    size = min(4 + 0.5 * count, 20)  # readable labels without a huge image for many classes
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(result.confusion_matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_xticks(range(count), labels=result.label_names, rotation=45, ha="right")
    axes.set_yticks(range(count), labels=result.label_names)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(f"{result.run_id} · accuracy {result.accuracy:.3f} · macro F1 {result.macro_f1:.3f}")
    if count <= 30:  # beyond that the numbers overlap
        for row, counts in enumerate(result.confusion_matrix):
            for column, value in enumerate(counts):
                axes.text(column, row, str(value), ha="center", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(destination, dpi=100)
    plt.close(figure)


def _write_png(result: BertEvaluationResult, folder: Path) -> None:
    temporary = folder / f".tmp-{uuid.uuid4().hex[:8]}-{CONFUSION_PNG}"
    try:
        plot_confusion_matrix(result, temporary)
        os.replace(temporary, folder / CONFUSION_PNG)
    finally:
        temporary.unlink(missing_ok=True)


def store_report(
    store: ArtifactStore,
    objects: ObjectStore | None,
    result: BertEvaluationResult,
    provenance: dict[str, Any],
) -> Path:
    """Write the report and its picture, then upload them (marker last) to an object store.

    Args:
        store: The artifact folder (the local copy with an object-store root).
        objects: The object store behind it, or None for a local root.
        result: The evaluation result; its ``report_path`` names the report.
        provenance: Where the model and rows came from (model digest, snapshot source), kept in the report.

    Returns:
        The local report file.
    """
    report = store.resolve(result.report_path)
    folder = report.parent
    folder.mkdir(parents=True, exist_ok=True)
    _write_png(result, folder)
    written_at = datetime.now(UTC).isoformat()
    write_json_atomic(report, result.model_dump(mode="json") | provenance | {"written_at": written_at})
    if objects is not None:
        writer = {"role": "gpu", "host": socket.gethostname(), "run_id": result.run_id}
        objects.upload_folder(folder, store.relative(folder), writer=writer)
    return report
