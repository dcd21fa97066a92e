"""Folder artifacts on the local side: the completion marker, describing, verifying, swapping in.

A download is verified in a hidden temporary folder and then takes the place of the older
copy. On Linux the two folders are exchanged in one ``renameat2(RENAME_EXCHANGE)`` call, so a
reader of the path always sees a whole copy, old or new; elsewhere (or on a file system without
it) the old copy is renamed aside first, which leaves the path empty for a moment.
"""

import ctypes
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from pydantic import Field, field_validator

from durabert.shared.errors import ErrorType, retryable_error
from durabert.shared.models import ContractModel

MARKER_FILE: Final = "durabert-complete.json"
"""Completion marker of a folder artifact in the store; written last, after every file it lists."""

_CHUNK: Final = 1 << 20
# renameat2(2): ``AT_FDCWD`` makes both paths relative to the working folder (ours are absolute).
_AT_FDCWD: Final = -100
_RENAME_EXCHANGE: Final = 2


class StoredFile(ContractModel):
    """One file of a completed artifact, as its marker lists it."""

    size: int = Field(ge=0)
    """Size in bytes."""
    sha256: str
    """Hex SHA-256 of the content."""


class CompletionMarker(ContractModel):
    """Contents of :data:`MARKER_FILE`: the artifact is exactly these files."""

    files: dict[str, StoredFile]
    """POSIX path relative to the artifact's folder to its size and checksum."""
    completed_at: str
    """ISO 8601 time the upload finished."""
    writer: dict[str, Any] = Field(default_factory=dict)
    """Who uploaded it (worker identity, attempt fence), for operators."""

    @field_validator("files")
    @classmethod
    def _plain_relative_names(cls, files: dict[str, StoredFile]) -> dict[str, StoredFile]:
        """Refuse names that would land outside the artifact's folder when downloaded."""
        for name in files:
            if key_problem(name) or name == MARKER_FILE:
                raise ValueError(f"{name!r} is not a plain relative file name")
        return files


def key_problem(key: str) -> str | None:
    """Why a key is not a plain relative POSIX path (``a/b/c``), or None when it is.

    Args:
        key: A key relative to the artifact root, or a file name from a marker.

    Returns:
        A short reason (``..`` parts, empty parts, absolute), or None.
    """
    if key.startswith("/") or "\\" in key:
        return "it must be a relative POSIX path"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return "it must not have empty, '.' or '..' parts"
    return None


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_files(folder: Path) -> Iterator[Path]:
    """Every file under ``folder`` except hidden names (temporaries, locks, staging folders)."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


def describe_folder(folder: Path) -> dict[str, StoredFile]:
    """List a local folder the way its completion marker will.

    Args:
        folder: The folder to upload.

    Returns:
        POSIX relative path to size and checksum, for every non-hidden file.
    """
    return {
        path.relative_to(folder).as_posix(): StoredFile(size=path.stat().st_size, sha256=sha256_of(path))
        for path in local_files(folder)
    }


def verify_file(path: Path, expected: StoredFile, where: str) -> None:
    """Check a downloaded file against its marker entry.

    Args:
        path: The downloaded file.
        expected: Its size and checksum from the completion marker.
        where: The object's URL, for the message.

    Raises:
        ApplicationError: a retryable ``ArtifactStoreError`` when size or checksum differ (a
            concurrent re-upload or a damaged object).
    """
    size = path.stat().st_size
    if size != expected.size or sha256_of(path) != expected.sha256:
        raise retryable_error(
            ErrorType.ARTIFACT_STORE,
            f"artifact store: {where} does not match its completion marker ({size} bytes, expected "
            f"{expected.size}, or a different checksum); it may be being replaced",
        )


def replace_folder(staging: Path, folder: Path) -> None:
    """Put a verified download in place of ``folder`` (which may not exist yet).

    Args:
        staging: The complete new copy, a sibling of ``folder`` on the same file system.
        folder: Where it goes; an older copy there is removed.
    """
    if not folder.exists():
        os.rename(staging, folder)
        return
    if _exchange(staging, folder):
        shutil.rmtree(staging, ignore_errors=True)  # ``staging`` holds the old copy now
        return
    aside = folder.parent / f".replaced-{folder.name}-{uuid.uuid4().hex[:8]}"
    os.rename(folder, aside)
    os.rename(staging, folder)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one system call; False where the system cannot (then nothing moved)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # a kernel or file system without RENAME_EXCHANGE: fall back to two renames
    raise OSError(code, os.strerror(code), str(second))


def _renameat2() -> Any:
    """Glibc's ``renameat2``, or None where the C library has none (macOS, musl before 1.2.5)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = getattr(libc, "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
    return function
