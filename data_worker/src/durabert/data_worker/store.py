"""Writing a snapshot folder so that it is either absent or complete.

The layout and the manifest are defined in :mod:`durabert.shared.snapshot_layout`. The folder
is built under ``snapshots/.tmp-<id>-<random>/`` and renamed into place in one step, so a
worker killed mid-write leaves only a temporary folder that no reader looks at; a folder is
complete only when its manifest validates, names the expected hash and its files exist.
"""

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from durabert.data_worker.hashing import row_batches, take_rows
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import configuration_error
from durabert.shared.snapshot_layout import MANIFEST_FILE, SnapshotManifest, read_manifest

TEMP_PREFIX: Final = ".tmp-"
"""Prefix of folders still being written (never a valid snapshot id)."""


def _valid_manifest(folder: Path) -> SnapshotManifest | None:
    try:
        return read_manifest(folder)
    except (OSError, ValidationError):
        return None


def read_complete_manifest(folder: Path, data_hash: str) -> SnapshotManifest | None:
    """Return a snapshot folder's manifest when the folder is complete for ``data_hash``.

    Args:
        folder: A snapshot folder.
        data_hash: The hash the snapshot must have.

    Returns:
        The manifest, or None when the folder, its manifest or a split file is missing, the
        manifest is not a valid manifest, or it names another hash.
    """
    manifest = _valid_manifest(folder)
    if manifest is None or manifest.data_hash != data_hash:
        return None
    if not all(manifest.split_path(folder, split).is_file() for split in ("train", "eval")):
        return None
    return manifest


def _refuse_collision(folder: Path, snapshot_id: str, data_hash: str) -> None:
    """Refuse to replace a complete snapshot of other content that shares the id's 64 bits."""
    manifest = _valid_manifest(folder)
    other = None if manifest is None else manifest.data_hash
    if other is not None and other != data_hash:
        raise configuration_error(
            f"snapshot id {snapshot_id} is taken by other content (hash {other}, ours {data_hash}); "
            "remove that folder or report the collision"
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SplitWriter = Callable[[Path, SnapshotManifest], None]
"""Writes a snapshot's split files into a folder, at the names the manifest lists."""


def streaming_writer(
    splits: Mapping[str, tuple[pa.Table, np.ndarray]], columns: Sequence[str]
) -> SplitWriter:
    """A :data:`SplitWriter` that takes the stored rows from their source a batch at a time.

    Each batch becomes a Parquet row group and is dropped once written, so writing never holds
    a copy of the whole dataset (the source itself is memory-mapped).

    Args:
        splits: Split name to ``(source table, row indices in stored order)``.
        columns: The stored columns, in order.

    Returns:
        The writer.
    """

    def write(folder: Path, manifest: SnapshotManifest) -> None:
        for split, (source, rows) in splits.items():
            writer: pq.ParquetWriter | None = None
            # Integer columns (the label ids) are 8 bytes a row: one numpy copy is cheaper than a
            # take per batch and chunk.
            numbers = {
                name: source.column(name).to_numpy()
                for name in columns
                if pa.types.is_integer(source.column(name).type)
            }
            try:
                for batch in row_batches(source, rows, columns):
                    table = pa.table(
                        {
                            name: pa.array(numbers[name][batch], type=source.column(name).type)
                            if name in numbers
                            else take_rows(source.column(name), batch)
                            for name in columns
                        }
                    )
                    if writer is None:
                        writer = pq.ParquetWriter(
                            folder / manifest.files[split], table.schema, compression="zstd"
                        )
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()

    return write


def _write_folder(folder: Path, write_splits: SplitWriter, manifest: SnapshotManifest) -> None:
    """Write the split files, then the manifest, and flush them to disk."""
    write_splits(folder, manifest)
    for name in manifest.files.values():
        _fsync(folder / name)
    path = folder / MANIFEST_FILE
    path.write_text(manifest.to_json(), encoding="utf-8")
    _fsync(path)


def _move_leftovers_away(final: Path, snapshot_id: str, data_hash: str) -> None:
    """Clear the final name of an incomplete folder (never of a complete one of other content)."""
    if not final.exists():
        return
    _refuse_collision(final, snapshot_id, data_hash)
    # Incomplete leftovers (a manual copy, a foreign writer): move them out of the way in one
    # rename so no reader sees a mix, then delete them.
    stale = final.parent / f"{TEMP_PREFIX}stale-{snapshot_id}-{uuid.uuid4().hex[:8]}"
    os.rename(final, stale)
    shutil.rmtree(stale, ignore_errors=True)


def _rename_into_place(temporary: Path, final: Path) -> None:
    """Publish the finished folder in one step (its own function so tests can fail it)."""
    os.rename(temporary, final)
    _fsync(final.parent)


def existing_snapshot(store: ArtifactStore, manifest: SnapshotManifest) -> SnapshotManifest | None:
    """The complete snapshot already stored for this manifest's content, if any.

    Args:
        store: The artifact store.
        manifest: The manifest of the snapshot about to be written.

    Returns:
        The stored snapshot's manifest, or None when none is complete.
    """
    return read_complete_manifest(store.snapshot_dir(manifest.snapshot_id), manifest.data_hash)


def publish_snapshot(
    store: ArtifactStore,
    manifest: SnapshotManifest,
    write_splits: SplitWriter,
    progress: Callable[[str], None],
) -> tuple[SnapshotManifest, bool]:
    """Write a snapshot under a temporary name and rename it into place, unless it exists.

    Args:
        store: The artifact store.
        manifest: The manifest to write (its ``snapshot_id`` names the folder).
        write_splits: Writes the split files into the temporary folder.
        progress: Called between steps.

    Returns:
        The manifest of the published snapshot (another worker's, if it won a race) and
        whether an existing snapshot was reused.
    """
    existing = existing_snapshot(store, manifest)
    if existing is not None:
        return existing, True
    snapshot_id, data_hash = manifest.snapshot_id, manifest.data_hash
    final = store.snapshot_dir(snapshot_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{snapshot_id}-", dir=final.parent))
    try:
        _write_folder(temporary, write_splits, manifest)
        progress("written")
        _move_leftovers_away(final, snapshot_id, data_hash)
        try:
            _rename_into_place(temporary, final)
        except OSError:
            # Another worker renamed the same content into place between our check and rename.
            winner = read_complete_manifest(final, data_hash)
            if winner is None:
                raise
            return winner, True
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return manifest, False
