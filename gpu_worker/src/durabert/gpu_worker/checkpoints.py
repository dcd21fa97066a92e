"""Complete-checkpoint bookkeeping: a marker written last, numeric ordering, publishing, rotation.

The Trainer writes a ``checkpoint-<step>`` folder file by file into the attempt's private
staging folder; a process killed in the middle leaves a folder that looks like a checkpoint
but is not one. Once the Trainer's ``on_save`` fires (every file written), durabert writes
:data:`COMPLETE_MARKER` atomically into the folder and then renames the whole folder into the
run's ``checkpoints/`` (:func:`publish`): readers there only ever see whole checkpoints, and
two attempts can never mix their files in one folder. The marker names the attempt that
wrote it and lists every file with its size and SHA-256: a resume verifies the content, so a
folder whose files were truncated, replaced or mixed afterwards is not complete, and the
resume falls back to the next older checkpoint instead of crashing on a torn ``optimizer.pt``.
"""

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from durabert.shared.artifacts import write_json_atomic
from durabert.shared.logging import get_logger
from durabert.shared.object_store import StoredFile

COMPLETE_MARKER = "durabert-complete.json"
"""File whose presence makes a checkpoint folder complete; written last, atomically."""
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

log = get_logger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder and its optimizer step."""

    step: int
    """Global optimizer step the checkpoint was saved at."""
    path: Path
    """The checkpoint folder."""

    @property
    def complete(self) -> bool:
        """Whether the completion marker exists and every file it lists has its recorded size."""
        return is_complete(self.path)


def checkpoint_step(path: Path) -> int | None:
    """Read the step from a ``checkpoint-<step>`` folder name.

    Args:
        path: A folder path.

    Returns:
        The step, or None when the name is not a checkpoint's.
    """
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _own_files(path: Path) -> list[Path]:
    """The checkpoint's own files (not the marker, not temporary files)."""
    return [
        child
        for child in sorted(path.iterdir())
        if child.is_file() and child.name != COMPLETE_MARKER and not child.name.startswith(".")
    ]


def _problem(path: Path, name: str, entry: Any, content: bool) -> str | None:
    """What is wrong with one listed file (size always, SHA-256 when ``content``), if anything."""
    # Markers written before content checks list a bare size.
    size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (entry, None)
    try:
        actual = (path / name).stat().st_size
    except OSError:
        return f"{name} is missing"
    if actual == 0 or actual != size:
        return f"{name} has {actual} bytes, {size} were written"
    if content and digest is not None and _sha256(path / name) != digest:
        return f"{name} has other content than was written (SHA-256 differs)"
    return None


def damage(path: Path, *, content: bool = False) -> str | None:
    """Say what is wrong with a marked checkpoint's files, if anything.

    Args:
        path: A checkpoint folder with a completion marker.
        content: Also compare every file's SHA-256 with the marker's (reads every byte:
            done for the checkpoint a resume is about to load).

    Returns:
        None when every file the marker lists is intact, else a short description of the
        first problem found.
    """
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable completion marker"
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict):
        return None  # a marker from before file lists: trust it as before
    if not files:
        return "the marker lists no files"
    for name, entry in files.items():
        problem = _problem(path, name, entry, content)
        if problem is not None:
            return problem
    return None


def is_complete(path: Path, *, content: bool = False) -> bool:
    """Whether a checkpoint folder carries the completion marker and its files are intact.

    Args:
        path: A checkpoint folder.
        content: Verify file contents (SHA-256), not only sizes.

    Returns:
        True when the folder is a complete checkpoint.
    """
    return (path / COMPLETE_MARKER).is_file() and damage(path, content=content) is None


def writer_of(path: Path) -> dict[str, Any] | None:
    """The attempt that wrote a complete checkpoint, as its marker records it.

    Args:
        path: A checkpoint folder.

    Returns:
        The marker's ``writer`` (fence fields and attempt), or None when unrecorded.
    """
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    writer = marker.get("writer") if isinstance(marker, dict) else None
    return writer if isinstance(writer, dict) else None


def list_checkpoints(directory: Path) -> list[Checkpoint]:
    """List checkpoint folders in numeric step order (``checkpoint-500`` before ``checkpoint-1000``).

    Args:
        directory: A run's checkpoints folder (may not exist).

    Returns:
        Every ``checkpoint-<step>`` folder, complete or not, oldest step first.
    """
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        step = checkpoint_step(child)
        if step is not None and child.is_dir():
            found.append(Checkpoint(step, child))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def described_files(path: Path) -> dict[str, StoredFile] | None:
    """The files a complete checkpoint's marker lists, with their sizes and checksums.

    Args:
        path: A checkpoint folder marked complete.

    Returns:
        File name to size and SHA-256, as recorded when the checkpoint was marked; None when the
        folder holds anything else (a subfolder, say), so that the caller describes it afresh.
    """
    marker = json.loads((path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    listed = {name: StoredFile.model_validate(entry) for name, entry in marker["files"].items()}
    present = {c.name for c in path.iterdir() if c.name != COMPLETE_MARKER and not c.name.startswith(".")}
    return listed if present == set(listed) else None


def mark_complete(path: Path, step: int, writer: dict[str, Any]) -> None:
    """Write the completion marker into a fully written checkpoint folder.

    Args:
        path: The checkpoint folder the Trainer has just finished.
        step: Its global step.
        writer: The attempt that wrote it (its fence fields and attempt number).
    """
    write_json_atomic(
        path / COMPLETE_MARKER,
        {
            "step": step,
            "writer": writer,
            "completed_at": datetime.now(UTC).isoformat(),
            # What "complete" means, checked on every resume (see damage()).
            "files": {
                child.name: {"size": child.stat().st_size, "sha256": _sha256(child)}
                for child in _own_files(path)
            },
        },
    )


def publish(staged: Path, directory: Path) -> Path | None:
    """Move a complete, staged checkpoint folder into the run's checkpoints folder in one rename.

    Call it under the run's fence (:meth:`~durabert.gpu_worker.fencing.RunFence.guard`).

    Args:
        staged: A marked ``checkpoint-<step>`` folder in the attempt's staging folder.
        directory: The run's ``checkpoints/`` folder (same file system).

    Returns:
        The published folder, or None when a complete checkpoint of that step was already
        there (an earlier attempt reached the same step): it is kept, the staged copy dropped.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / staged.name
    if is_complete(target):
        shutil.rmtree(staged, ignore_errors=True)
        return None
    if target.exists():
        shutil.rmtree(target)  # a folder of the old layout, never marked: not a checkpoint
    os.replace(staged, target)
    return target


def remove_incomplete(directory: Path) -> list[Path]:
    """Delete checkpoint folders without a marker (a killed writer) or with damaged files, with a warning.

    Args:
        directory: A run's checkpoints folder.

    Returns:
        The removed folders.
    """
    removed = []
    for checkpoint in list_checkpoints(directory):
        if (checkpoint.path / COMPLETE_MARKER).is_file():
            problem = damage(checkpoint.path)
            if problem is None:
                continue
            log.warning(
                "removing damaged checkpoint (marked complete, but its files changed on disk); "
                "resuming from an older one",
                path=str(checkpoint.path),
                step=checkpoint.step,
                problem=problem,
            )
        else:
            log.warning(
                "removing incomplete checkpoint (no completion marker; its writer was interrupted)",
                path=str(checkpoint.path),
                step=checkpoint.step,
            )
        shutil.rmtree(checkpoint.path, ignore_errors=True)
        removed.append(checkpoint.path)
    return removed


def newest_complete(directory: Path) -> Checkpoint | None:
    """Return the complete checkpoint with the highest step.

    Args:
        directory: A run's checkpoints folder.

    Returns:
        The newest complete checkpoint, or None.
    """
    complete = [checkpoint for checkpoint in list_checkpoints(directory) if checkpoint.complete]
    return complete[-1] if complete else None


def requested_problem(requested: Path) -> str | None:
    """Say why a requested checkpoint cannot be resumed from, if it cannot.

    Args:
        requested: The checkpoint folder a request names (in this worker's artifact folder).

    Returns:
        ``not a checkpoint folder``, ``not in the store`` (no such folder), ``incomplete`` (no
        completion marker, or files missing or of another size), or None when it is complete.
    """
    if checkpoint_step(requested) is None:
        return "not a checkpoint folder (checkpoint-<step>)"
    if not requested.is_dir():
        return "not in the store"
    if not is_complete(requested):
        return "incomplete (no completion marker, or files missing or cut short)"
    return None


def choose_resume_checkpoint(directory: Path, requested: Path | None) -> Checkpoint | None:
    """Pick the checkpoint to resume from after clearing out incomplete ones.

    Call it after the attempt took the run folder over, so no other attempt changes it.
    The chosen checkpoint's content is verified (SHA-256 against its marker); a damaged one
    is removed and the next older complete one is tried.

    Args:
        directory: The run's checkpoints folder.
        requested: A checkpoint the caller knows of (the workflow's latest), if any.

    Returns:
        The newest intact checkpoint among the run folder's and the requested one, or None.
    """
    remove_incomplete(directory)
    candidates = [checkpoint for checkpoint in list_checkpoints(directory) if checkpoint.complete]
    if requested is not None:
        step, problem = checkpoint_step(requested), requested_problem(requested)
        if step is None or problem is not None:
            log.warning(f"ignoring requested checkpoint: {problem}", path=str(requested))
        elif requested.resolve() not in {checkpoint.path.resolve() for checkpoint in candidates}:
            candidates.append(Checkpoint(step, requested))
    for checkpoint in sorted(candidates, key=lambda candidate: candidate.step, reverse=True):
        problem = damage(checkpoint.path, content=True)
        if problem is None:
            return checkpoint
        log.warning(
            "removing damaged checkpoint (its content changed after it was written); trying an older one",
            path=str(checkpoint.path),
            step=checkpoint.step,
            problem=problem,
        )
        shutil.rmtree(checkpoint.path, ignore_errors=True)
    return None


def rotate(directory: Path, keep: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep``; never the newest complete one.

    Rotation runs only after the newest checkpoint is marked complete, so a kill during a
    save can never leave a run with no complete checkpoint (the Trainer's own rotation
    deletes older ones before the new one is marked).

    Args:
        directory: The run's checkpoints folder.
        keep: Most complete checkpoints to keep (at least 1).

    Returns:
        The deleted folders.
    """
    complete = [checkpoint for checkpoint in list_checkpoints(directory) if checkpoint.complete]
    doomed = complete[: max(0, len(complete) - max(1, keep))]
    for checkpoint in doomed:
        shutil.rmtree(checkpoint.path, ignore_errors=True)
    return [checkpoint.path for checkpoint in doomed]


def describe(checkpoint: Checkpoint | None) -> dict[str, Any]:
    """Summarise a checkpoint for logs.

    Args:
        checkpoint: A checkpoint or None.

    Returns:
        ``{"step": ..., "path": ...}`` with None values when there is none.
    """
    if checkpoint is None:
        return {"step": None, "path": None}
    return {"step": checkpoint.step, "path": str(checkpoint.path)}
