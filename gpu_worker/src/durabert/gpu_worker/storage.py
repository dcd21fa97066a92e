"""Telling a failed write to the artifact store apart from a training bug.

A full or read-only store surfaces from torch's checkpoint writer as a cryptic
``RuntimeError`` (``[enforce fail at inline_container.cc] unexpected pos ...``), not as
``OSError(ENOSPC)``. When saving fails, :func:`diagnose` looks at the store itself (free
space against what a checkpoint needs, then a small probe write) and
:func:`storage_guard` turns the failure into an ``ArtifactStoreError`` that says so: retried
(an operator may free space), with the earlier checkpoints left as they were.
"""

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from durabert.shared.errors import ErrorType, retryable_error

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
"""``OSError`` numbers that always mean the store cannot take the write."""
PROBE_BYTES = 1 << 20
"""Size of the probe write when no earlier checkpoint tells what a save needs."""


def folder_bytes(path: Path) -> int:
    """Total size of the regular files directly in ``path`` (0 when it is missing).

    Args:
        path: A folder.

    Returns:
        Bytes.
    """
    try:
        return sum(child.stat().st_size for child in path.iterdir() if child.is_file())
    except OSError:
        return 0


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def diagnose(directory: Path, needed_bytes: int) -> str | None:
    """Say why ``directory`` cannot take a write of about ``needed_bytes``, if it cannot.

    Args:
        directory: Where the failed write went (its nearest existing parent is examined).
        needed_bytes: What one save needs (the newest complete checkpoint's size).

    Returns:
        A short reason (``full: ...``, ``not writable: ...``), or None when the store
        looks healthy (the failure was something else).
    """
    target = _existing(directory)
    try:
        stats = os.statvfs(target)
    except OSError as exc:
        return f"not reachable: {exc.strerror}"
    free = stats.f_bavail * stats.f_frsize
    if free < needed_bytes:
        return f"full: {free} bytes free at {target}, a checkpoint needs about {needed_bytes}"
    probe = target / f".durabert-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        with probe.open("wb") as handle:
            handle.write(b"\0" * min(max(needed_bytes, 1), PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return f"not writable: {exc.strerror} at {target}"
    finally:
        probe.unlink(missing_ok=True)
    return None


@contextmanager
def storage_guard(directory: Path, needed_bytes: int, what: str) -> Iterator[None]:
    """Re-raise a write failure caused by the store as a clear, retryable ``ArtifactStoreError``.

    Args:
        directory: Where the guarded code writes.
        needed_bytes: What one save needs, for the free-space check.
        what: What was being written (for the message).

    Yields:
        Nothing; exceptions from the body are examined.

    Raises:
        ApplicationError: ``ArtifactStoreError`` (retryable) when the store is full or not
            writable; other exceptions pass through unchanged.
    """
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise  # device memory, not storage: the caller handles it
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            reason: str | None = f"{exc.strerror} ({exc.filename or directory})"
        else:
            reason = diagnose(directory, needed_bytes)
        if reason is None:
            raise
        raise retryable_error(
            ErrorType.ARTIFACT_STORE,
            f"artifact store: cannot write {what} under {directory}: {reason}. Earlier complete "
            "checkpoints are untouched; free space or fix permissions and the retry resumes from "
            "the newest one",
        ) from exc
