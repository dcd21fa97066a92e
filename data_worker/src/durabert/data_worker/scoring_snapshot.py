"""Snapshots of datasets to *score*: no labels, input order kept, no row dropped (no Temporal here).

A training snapshot shuffles, holds rows out and needs labels; a scoring snapshot is the
opposite: the rows of the source's ``train`` split (the first ``max_samples`` of them), in the
order the source gives them, each with its ``row_index``. A null or non-text value is refused
with its field named, never skipped, so the output of batch scoring has every input row.

Layout: ``snapshots/<snapshot_id>/rows.parquet`` (``row_index`` int64, ``text`` string) and
``scoring.json`` (what the rows came from, their hash). The id comes from a SHA-256 over a format
tag and every text in order, so a scoring snapshot never shares an id with a training one. On a
local root the folder is written under a temporary name and renamed into place; with an
object-store root it is uploaded with its completion marker last and the local copy dropped.
"""

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq
from temporalio.exceptions import ApplicationError

from durabert.data_worker.failures import redacted_failure
from durabert.data_worker.sources import describe_source, load_source, resolve_source, source_field
from durabert.data_worker.staging import StagingArea
from durabert.shared.artifacts import SNAPSHOTS_DIR, ArtifactStore
from durabert.shared.errors import invalid_input
from durabert.shared.models import (
    SCORING_ROWS_FILE,
    DatasetSnapshotRequest,
    ScoringSnapshotRequest,
    ScoringSnapshotResult,
)
from durabert.shared.object_store import ObjectStore, open_object_store
from durabert.shared.redaction import redact, redact_value
from durabert.shared.settings import DurabertSettings

SCORING_FORMAT: Final = "durabert-scoring-v1"
"""Tag hashed in front of the rows (and written in ``scoring.json``)."""
ROWS_FILE: Final = SCORING_ROWS_FILE
"""The rows to score, in input order."""
SCORING_MANIFEST: Final = "scoring.json"
"""What the rows came from and their hash; written last, so the folder is complete once it exists."""
ROW_INDEX: Final = "row_index"
"""Column of a row's position in the input (0-based)."""
TEXT: Final = "text"
"""Column of a row's text, whatever the source called it."""
ID_LENGTH: Final = 16
"""Hex characters of the hash that name the folder."""

Progress = Callable[[str], None]
"""Called with a stage name between steps; may raise to stop."""


def _source_request(request: ScoringSnapshotRequest) -> DatasetSnapshotRequest:
    """The request the shared source functions (confinement, staging, loading) take."""
    return DatasetSnapshotRequest(
        run_id=request.run_id,
        dataset_name=request.dataset_name,
        dataset_config_name=request.dataset_config_name,
        data_files=request.data_files,
        text_field=request.text_field,
        trust_remote_code=request.trust_remote_code,
        eval_split_names=[],
    )


def text_column(table: pa.Table, field: str, source: str) -> pa.ChunkedArray:
    """The text column as plain strings, refusing a missing, non-text or null column.

    Args:
        table: The loaded split.
        field: The ``text_field``.
        source: Human description of the source, for messages.

    Returns:
        The column, cast to ``large_string``.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``text_field``.
    """
    if field not in table.column_names:
        columns = ", ".join(table.column_names) or "none"
        raise invalid_input(f"column {field!r} is not in {source} (columns: {columns})", field="text_field")
    column = table.column(field)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (
        pa.types.is_string(column.type)
        or pa.types.is_large_string(column.type)
        or pa.types.is_string_view(column.type)
    ):
        raise invalid_input(f"column {field!r} of {source} holds {column.type}, not text", field="text_field")
    if column.null_count:
        # Skipping them would shift every later row: the output must hold each input row once.
        raise invalid_input(
            f"column {field!r} has {column.null_count} null value(s) in {source}; every row to score needs "
            "a text (rows are never dropped)",
            field="text_field",
        )
    return column.cast(pa.large_string())


def rows_digest(texts: pa.ChunkedArray) -> str:
    """SHA-256 over the format tag and every text, length-prefixed, in order.

    Args:
        texts: The texts to score, in input order.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256(SCORING_FORMAT.encode())
    for chunk in texts.chunks:
        for value in chunk.to_pylist():
            data = value.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def _load_texts(
    request: ScoringSnapshotRequest, settings: DurabertSettings, staging: StagingArea, progress: Progress
) -> pa.ChunkedArray:
    """Confine, stage and load the source; its ``train`` split's texts, the first ``max_samples``."""
    if request.trust_remote_code and not settings.data.allow_trust_remote_code:
        raise invalid_input(
            "this worker does not run dataset loading code from the hub; set "
            "DURABERT_DATA__ALLOW_TRUST_REMOTE_CODE=true on the data worker to allow it",
            field="trust_remote_code",
        )
    source_request = _source_request(request)
    data_dir = settings.data_dir.expanduser().resolve()
    confined = resolve_source(source_request, settings.data_roots, data_dir, settings.data_url_roots)
    progress("loading")
    loaded = load_source(source_request, staging.stage(confined), trust_remote_code=request.trust_remote_code)
    progress("loaded")
    source = describe_source(source_request)
    texts = text_column(loaded.train, request.text_field, source)
    if len(texts) == 0:
        raise invalid_input(f"{source} has no rows to score", field=source_field(source_request))
    return texts if request.max_samples is None else texts.slice(0, request.max_samples)


def _manifest(request: ScoringSnapshotRequest, digest: str, rows: int) -> dict[str, Any]:
    return {
        "format": SCORING_FORMAT,
        "snapshot_id": digest[:ID_LENGTH],
        "data_hash": digest,
        "num_rows": rows,
        "created_by_run_id": request.run_id,
        "snapshot_timestamp": datetime.now(UTC).isoformat(),
        "source": {
            "dataset_name": redact(request.dataset_name),
            "dataset_config_name": request.dataset_config_name,
            "data_files": redact_value(request.data_files),
            "text_field": request.text_field,
            "max_samples": request.max_samples,
        },
    }


def read_scoring_manifest(folder: Path, data_hash: str | None = None) -> dict[str, Any] | None:
    """The manifest of a complete scoring snapshot folder (of ``data_hash``, when given).

    Args:
        folder: A scoring snapshot folder on this machine.
        data_hash: The hash it must hold; None accepts any.

    Returns:
        The manifest, or None when the folder is incomplete, foreign or of other content.
    """
    try:
        manifest: dict[str, Any] = json.loads((folder / SCORING_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("format") != SCORING_FORMAT or not (folder / ROWS_FILE).is_file():
        return None
    return manifest if data_hash is None or manifest.get("data_hash") == data_hash else None


def _write_folder(folder: Path, texts: pa.ChunkedArray, manifest: dict[str, Any]) -> None:
    """Rows first, manifest last, both flushed: the manifest's presence means the rows are whole."""
    table = pa.table({ROW_INDEX: pa.array(range(len(texts)), pa.int64()), TEXT: texts})
    pq.write_table(table, folder / ROWS_FILE, compression="zstd")
    (folder / SCORING_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    for name in (ROWS_FILE, SCORING_MANIFEST):
        with (folder / name).open("rb") as handle:
            os.fsync(handle.fileno())


def _publish_local(local: ArtifactStore, texts: pa.ChunkedArray, manifest: dict[str, Any]) -> bool:
    """Write the folder under a temporary name and rename it into place; True when it existed already."""
    final = local.snapshot_dir(manifest["snapshot_id"])
    if read_scoring_manifest(final, manifest["data_hash"]) is not None:
        return True
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        _write_folder(temporary, texts, manifest)
        if final.exists():  # an incomplete leftover (a killed writer's, or a foreign copy)
            shutil.rmtree(final)
        try:
            os.rename(temporary, final)
        except OSError:
            # Another slot renamed the same content into place first.
            if read_scoring_manifest(final, manifest["data_hash"]) is None:
                raise
            return True
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return False


def _stored_complete(objects: ObjectStore, key: str, data_hash: str) -> bool:
    """Whether the store holds this content complete under ``key`` (marker, rows and manifest)."""
    marker = objects.read_marker(key)
    if marker is None or not {ROWS_FILE, SCORING_MANIFEST} <= set(marker.files):
        return False
    raw = objects.read_bytes(f"{key}/{SCORING_MANIFEST}")
    return raw is not None and json.loads(raw).get("data_hash") == data_hash


def _publish(
    settings: DurabertSettings, texts: pa.ChunkedArray, manifest: dict[str, Any], progress: Progress
) -> bool:
    """Publish locally, or through the local copy into the object store (marker last)."""
    local = ArtifactStore(settings.artifact_dir)
    objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
    if objects is None:
        return _publish_local(local, texts, manifest)
    key = f"{SNAPSHOTS_DIR}/{manifest['snapshot_id']}"
    if _stored_complete(objects, key, manifest["data_hash"]):
        return True
    _publish_local(local, texts, manifest)
    progress("uploading")
    folder = local.snapshot_dir(manifest["snapshot_id"])
    writer = {"role": "data", "host": socket.gethostname(), "run_id": manifest["created_by_run_id"]}
    objects.upload_folder(folder, key, writer=writer)
    shutil.rmtree(folder, ignore_errors=True)  # the store answers the next request
    return False


def create_scoring_snapshot(
    request: ScoringSnapshotRequest, settings: DurabertSettings, progress: Progress
) -> ScoringSnapshotResult:
    """Freeze the rows to score into ``snapshots/<snapshot_id>/``, or reuse the existing snapshot.

    Args:
        request: What to score.
        settings: Worker settings (artifact root, allowed data roots, remote-code policy).
        progress: Called between steps; raising from it stops the work (cancellation).

    Returns:
        The snapshot.

    Raises:
        ApplicationError: ``InvalidInputError`` naming the field for bad input,
            ``ConfigurationError`` when the source cannot be loaded; messages hold no URL credentials.
    """
    try:
        with StagingArea(settings, progress) as staging:
            texts = _load_texts(request, settings, staging, progress)
            digest = rows_digest(texts)
            manifest = _manifest(request, digest, len(texts))
            cache_hit = _publish(settings, texts, manifest, progress)
    except ApplicationError as exc:
        raise redacted_failure(exc) from None
    return ScoringSnapshotResult(
        snapshot_id=manifest["snapshot_id"],
        snapshot_path=f"{SNAPSHOTS_DIR}/{manifest['snapshot_id']}",
        num_rows=len(texts),
        data_hash=digest,
        cache_hit=cache_hit,
    )
