"""Writing a snapshot folder so that it is either absent or complete.

Layout of ``<artifact_root>/snapshots/<snapshot_id>/``: ``train.parquet``, ``eval.parquet``
(text column(s) by their names, label ids as int64) and ``manifest.json``. The folder is
built under ``snapshots/.tmp-<id>-<random>/`` and renamed into place in one step, so a
worker killed mid-write leaves only a temporary folder that no reader looks at; a folder is
complete only when its manifest names the expected hash and its files exist.
"""

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import configuration_error

MANIFEST_FILE: Final = "manifest.json"
"""The snapshot's manifest; the folder is renamed into place only after it is written."""
SPLIT_FILES: Final = {"train": "train.parquet", "eval": "eval.parquet"}
"""Split name to its file in a snapshot folder."""
TEMP_PREFIX: Final = ".tmp-"
"""Prefix of folders still being written (never a valid snapshot id)."""


def read_complete_manifest(folder: Path, data_hash: str) -> dict[str, Any] | None:
    """Return a snapshot folder's manifest when the folder is complete for ``data_hash``.

    Args:
        folder: A snapshot folder.
        data_hash: The hash the snapshot must have.

    Returns:
        The manifest, or None when the folder, its manifest or a split file is missing, the
        manifest is unreadable, or it names another hash.
    """
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("data_hash") != data_hash:
        return None
    if not all((folder / name).is_file() for name in SPLIT_FILES.values()):
        return None
    return manifest


def _refuse_collision(folder: Path, snapshot_id: str, data_hash: str) -> None:
    """Refuse to replace a complete snapshot of other content that shares the id's 64 bits."""
    try:
        other = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8")).get("data_hash")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(other, str) and other != data_hash:
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


def _write_folder(folder: Path, splits: Mapping[str, pa.Table], manifest: Mapping[str, Any]) -> None:
    """Write the split files, then the manifest, and flush them to disk."""
    for split, table in splits.items():
        path = folder / SPLIT_FILES[split]
        pq.write_table(table, path, compression="zstd")
        _fsync(path)
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _fsync(path)


def _rename_into_place(temporary: Path, final: Path) -> None:
    """Publish the finished folder in one step (its own function so tests can fail it)."""
    os.rename(temporary, final)
    _fsync(final.parent)


def publish_snapshot(
    store: ArtifactStore,
    snapshot_id: str,
    splits: Mapping[str, pa.Table],
    manifest: Mapping[str, Any],
    progress: Callable[[str], None],
) -> tuple[dict[str, Any], bool]:
    """Write a snapshot under a temporary name and rename it into place, unless it exists.

    Args:
        store: The artifact store.
        snapshot_id: The snapshot id (the folder name).
        splits: ``train`` and ``eval`` tables to store.
        manifest: The manifest to write; must hold ``data_hash``.
        progress: Called between files.

    Returns:
        The manifest of the published snapshot (another worker's, if it won a race) and
        whether an existing snapshot was reused.
    """
    final = store.snapshot_dir(snapshot_id)
    data_hash = str(manifest["data_hash"])
    existing = read_complete_manifest(final, data_hash)
    if existing is not None:
        return existing, True
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{snapshot_id}-", dir=final.parent))
    try:
        _write_folder(temporary, splits, manifest)
        progress("written")
        if final.exists():
            _refuse_collision(final, snapshot_id, data_hash)
            # Incomplete leftovers (a manual copy, a foreign writer): move them out of the way
            # in one rename so no reader sees a mix, then delete them.
            stale = final.parent / f"{TEMP_PREFIX}stale-{snapshot_id}-{uuid.uuid4().hex[:8]}"
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
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
    return dict(manifest), False
