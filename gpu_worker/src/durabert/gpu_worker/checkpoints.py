"""Complete-checkpoint bookkeeping: a marker written last, numeric ordering, rotation.

The Trainer writes a ``checkpoint-<step>`` folder file by file; a process killed in the
middle leaves a folder that looks like a checkpoint but is not one. durabert writes
:data:`COMPLETE_MARKER` atomically into the folder after the Trainer's ``on_save`` (which
fires once every file is written) and treats only marked folders as checkpoints. The
marker lists every file with its size: a marked folder whose files were later truncated or
deleted (a disk fault, a careless copy) is not complete either, so a resume falls back to
the next older checkpoint instead of crashing on a torn ``optimizer.pt``.
"""

import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from durabert.shared.artifacts import write_json_atomic
from durabert.shared.logging import get_logger

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
        """Whether the completion marker exists and every file it lists is intact."""
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


def _file_sizes(path: Path) -> dict[str, int]:
    """Sizes of the checkpoint's own files (not the marker, not temporary files)."""
    return {
        child.name: child.stat().st_size
        for child in sorted(path.iterdir())
        if child.is_file() and child.name != COMPLETE_MARKER and not child.name.startswith(".")
    }


def damage(path: Path) -> str | None:
    """Say what is wrong with a marked checkpoint's files, if anything.

    Args:
        path: A checkpoint folder with a completion marker.

    Returns:
        None when every file the marker lists exists with its recorded size (and is not
        empty), else a short description of the first problem found.
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
    for name, size in files.items():
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual == 0 or actual != size:
            return f"{name} has {actual} bytes, {size} were written"
    return None


def is_complete(path: Path) -> bool:
    """Whether a checkpoint folder carries the completion marker and its files are intact.

    Args:
        path: A checkpoint folder.

    Returns:
        True when the folder is a complete checkpoint.
    """
    return (path / COMPLETE_MARKER).is_file() and damage(path) is None


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


def mark_complete(path: Path, step: int, attempt: int) -> None:
    """Write the completion marker into a fully written checkpoint folder.

    Args:
        path: The checkpoint folder the Trainer has just finished.
        step: Its global step.
        attempt: The activity attempt that wrote it.
    """
    write_json_atomic(
        path / COMPLETE_MARKER,
        {
            "step": step,
            "attempt": attempt,
            "completed_at": datetime.now(UTC).isoformat(),
            # What "complete" means, checked on every resume (see damage()).
            "files": _file_sizes(path),
        },
    )


def unmark(path: Path) -> None:
    """Remove a checkpoint's completion marker before the folder is written again.

    Args:
        path: A checkpoint folder (may not exist).
    """
    (path / COMPLETE_MARKER).unlink(missing_ok=True)


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


def choose_resume_checkpoint(directory: Path, requested: Path | None) -> Checkpoint | None:
    """Pick the checkpoint to resume from after clearing out incomplete ones.

    Args:
        directory: The run's checkpoints folder.
        requested: A checkpoint the caller knows of (the workflow's latest), if any.

    Returns:
        The newest complete checkpoint among the run folder's and the requested one
        (the requested one wins only when complete and at least as new), or None.
    """
    remove_incomplete(directory)
    best = newest_complete(directory)
    if requested is not None:
        step = checkpoint_step(requested)
        if step is None or not requested.is_dir() or not is_complete(requested):
            log.warning("ignoring requested checkpoint: not a complete checkpoint", path=str(requested))
        elif best is None or step > best.step:
            best = Checkpoint(step, requested)
    return best


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
