"""The final model folder, ``runs/<run_id>/model``: its layout, its manifest and its atomic publishing.

The folder is loadable by ``transformers.pipeline`` as it is; durabert adds three files.
It is written under a temporary name and renamed into place, so a reader (inference)
sees either no model or a whole one.
"""

import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from durabert.shared.artifacts import write_json_atomic

MODEL_MANIFEST = "durabert-manifest.json"
"""Run manifest inside the final model folder; its modification time is the model's version."""
METRICS_FILE = "metrics.json"
"""Final metrics inside the final model folder."""
LOSS_CURVE_FILE = "loss_curve.png"
"""Loss curve of all attempts inside the final model folder."""
_STAGING_PREFIX = ".model-"


class ModelManifest(BaseModel):
    """What a final model folder was trained from and how: ``durabert-manifest.json``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    run_id: str
    """The run."""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    """ISO 8601 time the model was published."""
    config: dict[str, Any]
    """The run's configuration (JSON)."""
    base_model: str
    """The pretrained model the run started from (folder or hub id)."""
    snapshot: dict[str, str]
    """``snapshot_id``, ``data_hash`` and ``snapshot_path`` of the data trained on."""
    label_names: list[str]
    """Class names by id."""
    device: str
    """Device of the attempt that finished."""
    precision: str
    """Numeric precision of that attempt (``bf16``, ``fp16`` or ``fp32``)."""
    global_step: int
    """Optimizer steps at the end."""
    max_steps: int
    """Planned optimizer steps."""
    attempts: list[dict[str, Any]]
    """The run folder's attempt records (see ``history.AttemptRecord``)."""
    resume_points: list[int]
    """Steps that attempts resumed from, in order."""
    metrics: dict[str, float]
    """Final training loss and evaluation metrics."""


def write_extras(folder: Path, manifest: ModelManifest, metrics: dict[str, float]) -> None:
    """Write durabert's files (metrics, manifest) into a staged model folder.

    Args:
        folder: The staged folder.
        manifest: The run manifest.
        metrics: Final metrics.
    """
    write_json_atomic(folder / METRICS_FILE, metrics)
    write_json_atomic(folder / MODEL_MANIFEST, manifest.model_dump(mode="json"))


def publish(run_dir: Path, final_dir: Path, fill: Callable[[Path], None]) -> None:
    """Build the final model in a temporary folder, then rename it into place.

    Args:
        run_dir: The run folder (the staging folder is created inside it, same file system).
        final_dir: ``runs/<run_id>/model``.
        fill: Writes the model's files into the folder it is given.
    """
    staging = run_dir / f"{_STAGING_PREFIX}tmp-{uuid.uuid4().hex[:8]}"
    fill(staging)
    old = None
    if final_dir.exists():
        # The run was trained again (its result never reached Temporal): swap, then delete.
        old = run_dir / f"{_STAGING_PREFIX}old-{uuid.uuid4().hex[:8]}"
        os.replace(final_dir, old)
    os.replace(staging, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clear_staging(run_dir: Path) -> None:
    """Delete staged model folders a killed attempt left behind.

    Args:
        run_dir: The run folder.
    """
    if run_dir.is_dir():
        for stale in run_dir.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


def model_version(model_dir: Path) -> int:
    """The version of a published model: its manifest's modification time (ns).

    Args:
        model_dir: ``runs/<run_id>/model``.

    Returns:
        The version.

    Raises:
        FileNotFoundError: When no model is published there.
    """
    return (model_dir / MODEL_MANIFEST).stat().st_mtime_ns
