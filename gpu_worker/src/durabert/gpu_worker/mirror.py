"""The GPU worker's local copy of an object-store artifact root, and the points where it syncs.

With ``DURABERT_ARTIFACT_ROOT`` an object-store URL, the worker trains and serves from its
private local copy (``settings.artifact_dir``) exactly as it would from a shared folder, and
moves whole artifacts between the copy and the store at a few points (*local-first with a
mirror*):

==========================  ============================  =========================================
sync point                  where it runs                 what moves
==========================  ============================  =========================================
attempt start (fail fast)   activity (parent)             nothing: the snapshot's marker is read
prepare                     training child                ``snapshots/<id>`` down (cached by id),
                                                          ``history.jsonl`` down, the newest
                                                          complete checkpoint and the requested
                                                          one down
each published checkpoint   child's uploader thread       ``checkpoint-<step>`` up, then history
                                                          up, then rotation and leftovers in store
final model                 training child (publishing)   ``model/`` up (marker last), history up
inference                   activity (thread)             ``model/`` down when missing or newer
==========================  ============================  =========================================

With a local root there is no mirror (:func:`open_mirror` returns None) and none of this runs.

Checkpoints carry their own completion marker (:mod:`~durabert.gpu_worker.checkpoints`) under
the same name as the store's marker (:data:`~durabert.shared.object_store.MARKER_FILE`), and
both list every file with its size and SHA-256 (and the attempt that wrote it). An upload
leaves the local marker out, and the store's marker, which a download keeps in the copy,
serves as the checkpoint's marker there: a downloaded checkpoint is verified on resume exactly
like one written on this machine.
"""

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from durabert.gpu_worker import checkpoints, history
from durabert.shared.artifacts import ArtifactStore, write_json_atomic
from durabert.shared.errors import not_found
from durabert.shared.logging import get_logger
from durabert.shared.models import DatasetSnapshotResult
from durabert.shared.object_store import MARKER_FILE, CompletionMarker, ObjectStore, open_object_store
from durabert.shared.settings import DurabertSettings, StoreSettings
from durabert.shared.snapshot_layout import read_manifest

log = get_logger(__name__)

UNSHARED_RUN_FILES = frozenset({"run.json", "fence.json"})
"""Run-folder files the store owns (the run record, the fence): never uploaded from the copy."""


def open_mirror(settings: DurabertSettings, local: ArtifactStore) -> "RunMirror | None":
    """The mirror of an object-store artifact root, or None for a local folder.

    Args:
        settings: The worker's settings (artifact root, store knobs).
        local: The worker's artifact folder (``settings.artifact_dir``).

    Returns:
        The mirror, or None when the artifact root is a local folder.
    """
    objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
    return None if objects is None else RunMirror(objects, local, settings.store)


def _local_marker(folder: Path) -> CompletionMarker | None:
    """The store marker a download left in a local copy, or None (never downloaded, or foreign)."""
    try:
        return CompletionMarker.model_validate_json((folder / MARKER_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def _whole_lines(data: bytes) -> bytes:
    """``data`` up to its last newline: a history line being appended is left for the next upload."""
    end = data.rfind(b"\n")
    return data[: end + 1] if end >= 0 else b""


class RunMirror:
    """Moves whole artifacts between this worker's local copy and the object store."""

    def __init__(self, objects: ObjectStore, local: ArtifactStore, store_settings: StoreSettings) -> None:
        """Pair a store with the local copy.

        Args:
            objects: The object store at the artifact root's URL.
            local: The local copy (``settings.artifact_dir``).
            store_settings: Transfer knobs (the age of an upload's leftovers).
        """
        self.objects = objects
        self.local = local
        self.store_settings = store_settings

    def key_of(self, path: Path) -> str:
        """The store key of a path in the local copy (the layouts are the same)."""
        return self.local.relative(path)

    # -- snapshots --------------------------------------------------------------------------

    def check_snapshot(self, snapshot: DatasetSnapshotResult) -> None:
        """Refuse a snapshot that is not complete in the store (one small read, no download).

        Raises:
            ApplicationError: ``ArtifactNotFoundError`` when the store has no complete snapshot.
        """
        if not self.objects.is_complete(snapshot.snapshot_path):
            raise self._missing_snapshot(snapshot)

    def pull_snapshot(self, snapshot: DatasetSnapshotResult) -> None:
        """Make the snapshot's files available in the local copy, downloading them once per id.

        A local copy that a download completed (it holds the store's marker) and whose manifest
        names the requested content is reused without asking the store: a snapshot id never
        changes content.

        Raises:
            ApplicationError: ``ArtifactNotFoundError`` when the store has no complete snapshot.
        """
        folder = self.local.resolve(snapshot.snapshot_path)
        if _local_marker(folder) is not None and _holds(folder, snapshot):
            log.info("snapshot already in the local copy", snapshot_id=snapshot.snapshot_id)
            return
        log.info("downloading snapshot", snapshot_id=snapshot.snapshot_id, key=snapshot.snapshot_path)
        if self.objects.download_folder(snapshot.snapshot_path, folder) is None:
            raise self._missing_snapshot(snapshot)

    def _missing_snapshot(self, snapshot: DatasetSnapshotResult) -> Exception:
        return not_found(
            f"dataset_snapshot.snapshot_path: snapshot {snapshot.snapshot_id!r} is not complete at "
            f"{self.objects.url_of(snapshot.snapshot_path)} (was it written to this artifact store?)"
        )

    # -- checkpoints ------------------------------------------------------------------------

    def complete_checkpoints(self, run_id: str) -> list[tuple[int, str]]:
        """The run's checkpoints that are complete in the store, as ``(step, name)``, oldest first."""
        parent = self.key_of(self.local.checkpoints_dir(run_id))
        found = []
        for name in self.objects.list_children(parent):
            step = checkpoints.checkpoint_step(Path(name))
            if step is not None and self.objects.is_complete(f"{parent}/{name}"):
                found.append((step, name))
        return sorted(found)

    def pull_checkpoints(self, run_id: str, requested: str | None) -> Path | None:
        """Make the local copy's checkpoints those the store holds complete, with the newest present.

        Local checkpoints the store does not hold complete (an upload that never finished) are
        removed, so an attempt resumes only from, and reports only, checkpoints in the store.
        The newest complete one is downloaded unless the copy has it, and so is the requested
        one (the checkpoint the workflow knows of, maybe older or newer): both are candidates
        to resume from, as they are on a shared folder. Call it under the fence.

        Args:
            run_id: The run.
            requested: ``request.resume_from_checkpoint`` (a key), if any.

        Returns:
            The requested checkpoint's folder in the local copy when it is complete there now;
            None without a request, or when the store does not hold it complete (logged: not in
            the store, or incomplete there).
        """
        complete = self.complete_checkpoints(run_id)
        in_store = {name for _, name in complete}
        directory = self.local.checkpoints_dir(run_id)
        for checkpoint in checkpoints.list_checkpoints(directory):
            if checkpoint.path.name not in in_store:
                log.warning("dropping local checkpoint the store does not hold", step=checkpoint.step)
                shutil.rmtree(checkpoint.path, ignore_errors=True)
        if complete:
            newest = self.key_of(directory / complete[-1][1])
            if not self._pull_checkpoint(newest, directory / complete[-1][1]):
                log.warning("checkpoint is not complete in the store; not resuming from it", key=newest)
        return None if requested is None else self._pull_requested(requested)

    def _pull_requested(self, requested: str) -> Path | None:
        """Bring the requested checkpoint into the local copy; None, and why logged, if the store lacks it."""
        folder = self.local.resolve(requested)
        key = self.key_of(folder)
        if checkpoints.checkpoint_step(folder) is None or self._pull_checkpoint(key, folder):
            return folder  # complete here now; or no checkpoint's name at all, which the resume says
        # A download needs the store's marker: without it, files under the key are an upload
        # that never finished, and no files at all a checkpoint the store never held (or rotated).
        where = "incomplete in the store" if self.objects.list_children(key) else "not in the store"
        log.warning(f"ignoring requested checkpoint: {where}", key=key, store=self.objects.url_of(key))
        return None

    def _pull_checkpoint(self, key: str, folder: Path) -> bool:
        """Download a checkpoint unless the copy has it complete; whether it is complete here now."""
        if checkpoints.is_complete(folder):
            return True
        log.info("downloading checkpoint", key=key)
        return self.objects.download_folder(key, folder) is not None

    def push_checkpoint(self, run_id: str, folder: Path, writer: dict[str, Any], keep: int) -> None:
        """Upload a published checkpoint (marker last), the history, then rotate the store.

        A checkpoint of that step already complete in the store is not uploaded again (an
        earlier attempt reached the same step; the content is the same, and re-uploading would
        hide it from readers while its marker is rewritten).

        Args:
            run_id: The run.
            folder: The published checkpoint in the local copy.
            writer: The attempt that wrote it, recorded in the store's marker.
            keep: ``save_total_limit``: most complete checkpoints kept in the store.
        """
        key = self.key_of(folder)
        if not self.objects.is_complete(key):
            # upload_folder leaves the local marker out and writes the store's marker last; the
            # local marker's checksums are reused (hashing 260 MB again costs the training CPU).
            self.objects.upload_folder(folder, key, writer=writer, files=checkpoints.described_files(folder))
            log.info("checkpoint uploaded", key=key)
        self.push_run_files(run_id)
        self.rotate(run_id, keep)
        parent = self.key_of(self.local.checkpoints_dir(run_id))
        self.objects.remove_incomplete(parent, older_than_seconds=self.store_settings.leftover_age_seconds)

    def rotate(self, run_id: str, keep: int) -> list[str]:
        """Delete the store's oldest complete checkpoints beyond ``keep``; never the newest one.

        Returns:
            The deleted keys.
        """
        complete = self.complete_checkpoints(run_id)
        parent = self.key_of(self.local.checkpoints_dir(run_id))
        doomed = [f"{parent}/{name}" for _, name in complete[: max(0, len(complete) - max(1, keep))]]
        for key in doomed:
            self.objects.delete_prefix(key)
        return doomed

    # -- run files and the final model ------------------------------------------------------

    def pull_history(self, run_id: str) -> None:
        """Replace the local copy's ``history.jsonl`` with the store's, when the store has one.

        The store's history is the run's, over every attempt on every worker; a local one is at
        best this worker's part of it. Call it under the fence.
        """
        run_dir = self.local.run_dir(run_id)
        data = self.objects.read_bytes(self.key_of(run_dir / history.HISTORY_FILE))
        if data is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        temporary = run_dir / f".{history.HISTORY_FILE}.{uuid.uuid4().hex[:8]}"
        temporary.write_bytes(data)
        os.replace(temporary, run_dir / history.HISTORY_FILE)

    def push_run_files(self, run_id: str) -> None:
        """Upload the run folder's ``history.jsonl`` and JSON manifests (not the record or the fence)."""
        run_dir = self.local.run_dir(run_id)
        for path in sorted(run_dir.glob("*")) if run_dir.is_dir() else []:
            shared = path.name == history.HISTORY_FILE or path.suffix == ".json"
            if not path.is_file() or not shared or path.name in UNSHARED_RUN_FILES:
                continue
            data = path.read_bytes()
            if path.name == history.HISTORY_FILE:
                data = _whole_lines(data)
            self.objects.write_bytes(self.key_of(path), data)

    def push_model(self, run_id: str, writer: dict[str, Any]) -> None:
        """Upload the final model folder (marker last) and the run's files.

        The store's marker is then written into the local model folder too, so inference on
        this worker finds the copy in step with the store.
        """
        folder = self.local.model_dir(run_id)
        marker = self.objects.upload_folder(folder, self.key_of(folder), writer=writer)
        write_json_atomic(folder / MARKER_FILE, marker.model_dump(mode="json"))
        self.push_run_files(run_id)
        log.info("final model uploaded", key=self.key_of(folder))

    def pull_model(self, run_id: str) -> None:
        """Bring the run's final model into the local copy when it is missing or the store's is newer.

        Raises:
            ApplicationError: ``ArtifactNotFoundError`` when the store has no complete model.
        """
        folder = self.local.model_dir(run_id)
        key = self.key_of(folder)
        marker = self.objects.read_marker(key)
        if marker is not None and _local_marker(folder) == marker:
            return
        if marker is None or self.objects.download_folder(key, folder) is None:
            raise not_found(
                f"run_id: run {run_id!r} has no finished model at {self.objects.url_of(key)} "
                "(is it still training, or was it never trained on this artifact store?)"
            )
        log.info("downloaded model", run_id=run_id, key=key)


def _holds(folder: Path, snapshot: DatasetSnapshotResult) -> bool:
    """Whether a local snapshot folder's manifest names the requested content."""
    try:
        return read_manifest(folder).data_hash == snapshot.data_hash
    except (OSError, ValidationError):
        return False
