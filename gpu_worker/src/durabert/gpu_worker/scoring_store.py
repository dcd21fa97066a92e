"""Where batch scoring keeps its chunks and its output, complete-or-not, locally or in an object store.

``runs/<run_id>/predictions/<snapshot_id>/`` holds the output ``predictions.parquet`` and, while
scoring runs, ``chunks-<model>/chunk-<start>-<stop>/`` folders. A chunk folder is written under a
temporary name with its completion marker (:data:`~durabert.shared.object_store.MARKER_FILE`, the
same format as the store's) last, then renamed into place: a folder under its final name whose
marker lists its file at the right size is complete, anything else is never read. With an
object-store root the chunk is uploaded from the worker's local copy, marker last, and the store
is the truth: a new worker on another machine resumes from the chunks complete *there*.

``<model>`` is a digest of the model folder's manifest, so chunks scored by an older model of a
run (before ``continue_run`` retrained it) are never mixed with a newer one's; the output records
the same digest (Parquet metadata locally, the marker's writer in a store) and is reused only by
the model that wrote it.
"""

import hashlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.object_store import (
    MARKER_FILE,
    CompletionMarker,
    ObjectStore,
    StoredFile,
    describe_folder,
    sha256_of,
)

PREDICTIONS_DIR: Final = "predictions"
"""Folder of a run's batch predictions, one subfolder per scoring snapshot."""
PREDICTIONS_FILE: Final = "predictions.parquet"
"""The file of a chunk, and the name of the output."""
MODEL_METADATA_KEY: Final = b"durabert_model"
"""Parquet metadata key (and marker writer key, as text) of the model digest that wrote a file."""
DIGEST_LENGTH: Final = 16
"""Hex characters of the model digest."""


def model_digest(model_dir: Path) -> str:
    """Identify a run's current final model by the content of its manifest.

    Args:
        model_dir: The model folder (present on this machine).

    Returns:
        The first :data:`DIGEST_LENGTH` hex characters of the manifest's SHA-256.
    """
    return hashlib.sha256((model_dir / MODEL_MANIFEST).read_bytes()).hexdigest()[:DIGEST_LENGTH]


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _complete_marker(folder: Path) -> CompletionMarker | None:
    """The marker of a complete chunk folder: it parses and its file has the listed size."""
    try:
        marker = CompletionMarker.model_validate_json((folder / MARKER_FILE).read_bytes())
        entry = marker.files[PREDICTIONS_FILE]
        return marker if (folder / PREDICTIONS_FILE).stat().st_size == entry.size else None
    except (OSError, KeyError, ValidationError):
        return None


def _write_chunk_folder(final: Path, table: pa.Table, writer: dict[str, str]) -> CompletionMarker:
    """Write a chunk under a temporary name, marker last, and rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        pq.write_table(table, temporary / PREDICTIONS_FILE)
        _fsync(temporary / PREDICTIONS_FILE)
        marker = CompletionMarker(files=describe_folder(temporary), completed_at=_now(), writer=writer)
        (temporary / MARKER_FILE).write_text(marker.model_dump_json(indent=2), encoding="utf-8")
        _fsync(temporary / MARKER_FILE)
        if final.exists():  # an incomplete leftover under the final name: never read, replaced
            shutil.rmtree(final)
        os.rename(temporary, final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return marker


def _now() -> str:
    return datetime.now(UTC).isoformat()


class PredictionStore:
    """The chunks and the output of one run, snapshot and model."""

    def __init__(
        self, local: ArtifactStore, objects: ObjectStore | None, run_id: str, snapshot_id: str, model: str
    ) -> None:
        """Address one scoring's folder.

        Args:
            local: The artifact folder (the local copy with an object-store root).
            objects: The object store behind it, or None for a local root.
            run_id: The run whose model scores.
            snapshot_id: The scoring snapshot.
            model: The model's digest (:func:`model_digest`).
        """
        self.folder = local.run_dir(run_id) / PREDICTIONS_DIR / snapshot_id
        self.key = f"{local.relative(local.run_dir(run_id))}/{PREDICTIONS_DIR}/{snapshot_id}"
        self.objects = objects
        self.model = model
        self.chunks_key = f"{self.key}/chunks-{model}"
        self._writer = {"role": "gpu", "host": socket.gethostname(), "model": model}

    @property
    def output_relative(self) -> str:
        """The output's path relative to the artifact root."""
        return f"{self.key}/{PREDICTIONS_FILE}"

    def _chunk_dir(self, name: str) -> Path:
        return self.folder / f"chunks-{self.model}" / name

    def output_finished(self) -> bool:
        """Whether this model's complete output exists (in the store, with an object-store root)."""
        if self.objects is not None:
            marker = self.objects.read_marker(self.key)
            return (
                marker is not None
                and PREDICTIONS_FILE in marker.files
                and marker.writer.get("model") == self.model
            )
        try:
            metadata = pq.read_schema(self.folder / PREDICTIONS_FILE).metadata or {}
        except (OSError, pa.ArrowInvalid):
            return False
        return metadata.get(MODEL_METADATA_KEY) == self.model.encode()

    def chunk_complete(self, name: str) -> bool:
        """Whether a chunk is stored complete (in the store, with an object-store root).

        Args:
            name: The chunk's folder name.

        Returns:
            True only for a chunk whose completion marker was written.
        """
        if self.objects is not None:
            return self.objects.is_complete(f"{self.chunks_key}/{name}")
        return _complete_marker(self._chunk_dir(name)) is not None

    def save_chunk(self, name: str, table: pa.Table) -> None:
        """Store a scored chunk complete-or-not (and upload it, marker last, to an object store).

        Args:
            name: The chunk's folder name.
            table: Its predictions.
        """
        folder = self._chunk_dir(name)
        marker = _write_chunk_folder(folder, table, self._writer)
        if self.objects is not None:
            self.objects.upload_folder(
                folder, f"{self.chunks_key}/{name}", writer=self._writer, files=marker.files
            )

    def read_chunk(self, name: str) -> pa.Table:
        """Read a complete chunk, downloading it (verified) when this machine has no complete copy.

        Args:
            name: The chunk's folder name.

        Returns:
            Its predictions.
        """
        folder = self._chunk_dir(name)
        if self.objects is not None and _complete_marker(folder) is None:
            self.objects.download_folder(f"{self.chunks_key}/{name}", folder)
        return pq.read_table(folder / PREDICTIONS_FILE)

    def publish_output(self, write: Callable[[Path], None]) -> None:
        """Write the output under a temporary name, rename it into place, and upload it (marker last).

        Args:
            write: Writes the output Parquet to the path it is given.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".tmp-{uuid.uuid4().hex[:8]}-{PREDICTIONS_FILE}"
        try:
            write(temporary)
            _fsync(temporary)
            os.replace(temporary, self.folder / PREDICTIONS_FILE)
        finally:
            temporary.unlink(missing_ok=True)
        if self.objects is not None:
            # The marker of the predictions prefix lists the output alone; chunk folders have their own.
            output = self.folder / PREDICTIONS_FILE
            files = {PREDICTIONS_FILE: StoredFile(size=output.stat().st_size, sha256=sha256_of(output))}
            self.objects.upload_folder(self.folder, self.key, writer=self._writer, files=files)

    def drop_chunks(self) -> None:
        """Delete the chunks once the output holds them all (locally, and in the store)."""
        shutil.rmtree(self.folder / f"chunks-{self.model}", ignore_errors=True)
        if self.objects is not None:
            self.objects.delete_prefix(self.chunks_key)
