"""Snapshots on an object-store artifact root: built in the worker's local copy, then uploaded.

With ``DURABERT_ARTIFACT_ROOT=s3://...`` the store is the truth and the worker's folder
(``<work_dir>/artifacts``) is scratch. A request is answered from the store when it already
holds a complete ``snapshots/<id>`` (completion marker present) whose manifest names the same
content hash; otherwise the snapshot is written locally all or nothing, exactly as on a local
root (:mod:`.store`), and uploaded with its completion marker last, so a reader never takes a
killed upload for a snapshot. A complete snapshot of *other* content under the same id is
refused, as on a local root.

After a successful upload the local copy is deleted: the data worker never reads a snapshot
again (the store answers the next request), and its work dir is a pod's scratch volume that
would otherwise grow by one dataset per snapshot. A copy whose upload failed stays, so the
activity's retry uploads it without rewriting it.
"""

import fcntl
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from durabert.data_worker.store import SplitWriter, publish_snapshot
from durabert.shared.artifacts import SNAPSHOTS_DIR, ArtifactStore
from durabert.shared.errors import configuration_error
from durabert.shared.logging import get_logger
from durabert.shared.object_store import CompletionMarker, ObjectStore
from durabert.shared.snapshot_layout import MANIFEST_FILE, SnapshotManifest

log = get_logger(__name__)


def snapshot_key(snapshot_id: str) -> str:
    """The store key of a snapshot: ``snapshots/<snapshot_id>``, as on a local root."""
    return f"{SNAPSHOTS_DIR}/{snapshot_id}"


def _holds_snapshot_files(marker: CompletionMarker, manifest: SnapshotManifest) -> bool:
    """Whether a completed upload lists the manifest and every split file it names."""
    return all(name in marker.files for name in (MANIFEST_FILE, *manifest.files.values()))


def _stored_manifest(objects: ObjectStore, key: str) -> SnapshotManifest | None:
    """The manifest of the complete snapshot at ``key``; None when it is incomplete or damaged."""
    marker = objects.read_marker(key)
    if marker is None:
        return None
    raw = objects.read_bytes(f"{key}/{MANIFEST_FILE}")
    if raw is None:
        return None
    try:
        manifest = SnapshotManifest.model_validate_json(raw)
    except ValidationError:
        return None  # a foreign or damaged upload: replaced like an incomplete one
    return manifest if _holds_snapshot_files(marker, manifest) else None


def stored_snapshot(objects: ObjectStore, manifest: SnapshotManifest) -> SnapshotManifest | None:
    """The complete snapshot the store already holds for this manifest's content, if any.

    Args:
        objects: The object store of the artifact root.
        manifest: The manifest of the snapshot about to be written.

    Returns:
        The stored manifest, or None when the store holds no complete snapshot under the id.

    Raises:
        ApplicationError: ``ConfigurationError`` when a complete snapshot of other content holds
            the id (two hashes sharing the id's 64 bits), which must never be overwritten.
    """
    key = snapshot_key(manifest.snapshot_id)
    stored = _stored_manifest(objects, key)
    if stored is None:
        return None
    if stored.data_hash != manifest.data_hash:
        raise configuration_error(
            f"snapshot id {manifest.snapshot_id} is taken by other content in {objects.url_of(key)} "
            f"(hash {stored.data_hash}, ours {manifest.data_hash}); remove it or report the collision"
        )
    return stored


@contextmanager
def _snapshot_lock(local: ArtifactStore, snapshot_id: str) -> Iterator[None]:
    """Serialise this worker's activities on one snapshot id.

    Two slots snapshotting the same content would share one local copy: one could delete it
    after its upload while the other still uploads from it. The lock makes the second wait
    and find the first one's upload complete in the store.
    """
    folder = local.root / SNAPSHOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f".lock-{snapshot_id}").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clean_leftovers(objects: ObjectStore, leftover_age_seconds: float) -> None:
    """Delete killed uploads (no marker, nothing newer than the age) under ``snapshots/``."""
    removed = objects.remove_incomplete(SNAPSHOTS_DIR, older_than_seconds=leftover_age_seconds)
    if removed:
        log.info("removed incomplete snapshot uploads", keys=removed)


def publish_to_store(
    objects: ObjectStore,
    local: ArtifactStore,
    manifest: SnapshotManifest,
    write_splits: SplitWriter,
    progress: Callable[[str], None],
    *,
    leftover_age_seconds: float,
    writer: dict[str, Any],
) -> tuple[SnapshotManifest, bool]:
    """Answer from the store, or write the snapshot locally and upload it (marker last).

    Args:
        objects: The object store of the artifact root.
        local: This worker's local copy of the artifact root (scratch).
        manifest: The manifest to write (its ``snapshot_id`` names the folder and the key).
        write_splits: Writes the split files into a folder.
        progress: Called between steps; raising from it stops the work.
        leftover_age_seconds: Age after which a markerless upload is a killed one's leftover.
        writer: Who uploads, recorded in the completion marker for operators.

    Returns:
        The published manifest and whether the store already held it (``cache_hit``).
    """
    snapshot_id = manifest.snapshot_id
    with _snapshot_lock(local, snapshot_id):
        stored = stored_snapshot(objects, manifest)
        if stored is not None:
            return stored, True
        published, _ = publish_snapshot(local, manifest, write_splits, progress)
        _clean_leftovers(objects, leftover_age_seconds)
        progress("uploading")
        folder: Path = local.snapshot_dir(snapshot_id)
        objects.upload_folder(folder, snapshot_key(snapshot_id), writer=writer)
        progress("uploaded")
        shutil.rmtree(folder, ignore_errors=True)
    return published, False
