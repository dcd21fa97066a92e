"""Artifact roots on an object store (S3 and S3-compatible stores, GCS, Azure) through fsspec.

An object store has no rename, so a folder-shaped artifact (a snapshot, a checkpoint, a model)
is uploaded file by file and then *completed* by one marker object, written last, that lists
every file with its size and SHA-256. Readers look at the marker first: no marker, no artifact.
Downloads land in a temporary sibling folder, are verified against the marker and renamed into
place, so a local cache holds only whole, verified copies.

Nothing here knows about training or snapshots; the workers decide what to upload and when.
"""

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import ValidationError

from durabert.shared.errors import ErrorType, configuration_error, retryable_error
from durabert.shared.logging import get_logger
from durabert.shared.object_store_backends import (
    BACKEND_PACKAGES,
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    TEST_SCHEMES,
    is_object_store_url,
    modified_time,
    open_filesystem,
    url_scheme,
)
from durabert.shared.object_store_errors import (
    Fault,
    call_with_backoff,
    credentials_error,
    first_line,
    missing_root_error,
    unavailable_error,
)
from durabert.shared.object_store_local import (
    MARKER_FILE,
    CompletionMarker,
    StoredFile,
    describe_folder,
    key_problem,
    replace_folder,
    sha256_of,
    verify_file,
)
from durabert.shared.redaction import redact

__all__ = [
    "BACKEND_PACKAGES",
    "CONNECT_TIMEOUT_SECONDS",
    "MARKER_FILE",
    "READ_TIMEOUT_SECONDS",
    "TEST_SCHEMES",
    "CompletionMarker",
    "ObjectStore",
    "StoredFile",
    "describe_folder",
    "is_object_store_url",
    "open_object_store",
    "sha256_of",
    "url_scheme",
]

log = get_logger(__name__)

ResultT = TypeVar("ResultT")


_UPLOAD_GUARD: Final = ".durabert-uploading"
"""Object written when an upload starts and deleted when its marker is written: it keeps the
newest object of a prefix being re-uploaded fresh, so :meth:`ObjectStore.remove_incomplete`
never takes a running re-upload of an old artifact for an old leftover."""


class ObjectStore:
    """An artifact store at an fsspec URL, with verified folder uploads and downloads.

    Keys are POSIX paths relative to the root URL (``snapshots/<id>/manifest.json``), the same
    layout as a local artifact root. An instance may be used from a forked or spawned child
    process: the child opens its own client on first use (fsspec's async clients are bound to
    the parent's event loop thread).
    """

    def __init__(
        self,
        url: str,
        *,
        retry_seconds: float = 60.0,
        filesystem: Any = None,
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        """Open the store at ``url``.

        Args:
            url: ``s3://bucket/prefix``, ``gs://...``, ``az://...`` (or ``memory://``/``file://`` in tests).
            retry_seconds: How long a transient failure (connection refused, timeout, 5xx) is
                retried with exponential backoff before it is raised as a retryable
                ``ArtifactStoreError``.
            filesystem: An fsspec filesystem to use instead of one built from the URL (tests).
            connect_timeout_seconds: Limit on opening one connection (S3 only; see
                :data:`CONNECT_TIMEOUT_SECONDS`).
            read_timeout_seconds: Limit on waiting for one response (S3 only).

        Raises:
            ApplicationError: ``ConfigurationError`` naming the package and extra to install
                when the URL's fsspec backend is missing, or for an unsupported scheme.
        """
        scheme = url_scheme(url)
        if scheme is None:
            raise configuration_error(f"DURABERT_ARTIFACT_ROOT: {redact(url)!r} is not an object-store URL")
        self.scheme = scheme
        self.url = url.rstrip("/")
        self.retry_seconds = retry_seconds
        self._timeouts = (connect_timeout_seconds, read_timeout_seconds)
        self._owns_filesystem = filesystem is None
        self._filesystem = filesystem if filesystem is not None else self._open()
        self._root = self._filesystem._strip_protocol(self.url).rstrip("/")

    def __repr__(self) -> str:
        """The store's URL, credentials removed."""
        return f"ObjectStore({redact(self.url)!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without an owned client: a spawned child opens its own."""
        state = dict(self.__dict__)
        if self._owns_filesystem:
            state["_filesystem"] = None
        return state

    @property
    def _fs(self) -> Any:
        """The fsspec filesystem, reopened in a child process (a client is not fork-safe)."""
        if self._owns_filesystem and (self._filesystem is None or self._opened_in != os.getpid()):
            self._filesystem = self._open()
        return self._filesystem

    def _open(self) -> Any:
        self._opened_in = os.getpid()
        return open_filesystem(self.scheme, *self._timeouts)

    def _path(self, key: str) -> str:
        key = key.strip("/")
        if key and (problem := key_problem(key)):
            raise configuration_error(f"artifact key {key!r} is not usable: {problem}")
        return f"{self._root}/{key}" if key else self._root

    def url_of(self, key: str) -> str:
        """The full URL of a key (for messages and logs; it carries no credentials)."""
        return redact(f"{self.url}/{key.strip('/')}")

    # -- single objects -------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes | None:
        """Read one object, or None when it does not exist."""
        path = self._path(key)
        try:
            data: bytes = self._retrying(f"read {key}", lambda: self._fs.cat_file(path))
        except FileNotFoundError:
            return None
        return data

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object whole (object stores make a single PUT atomic)."""
        path = self._path(key)
        self._retrying(f"write {key}", lambda: self._fs.pipe_file(path, data))

    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""
        path = self._path(key)
        return bool(self._retrying(f"look up {key}", lambda: self._fs.exists(path)))

    def list_children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix/`` (objects and pseudo-folders), sorted; [] when none."""
        path = self._path(prefix)
        try:
            entries = self._retrying(f"list {prefix}", lambda: self._fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        names = {str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries}
        return sorted(name for name in names if f"{path}/{name}".strip("/") != path.strip("/"))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix/``; nothing happens when there is none.

        The marker goes first, so a half-deleted artifact is never taken as complete.

        Raises:
            ValueError: for an empty prefix (that would be the whole artifact root).
        """
        prefix = prefix.strip("/")
        if not prefix:
            raise ValueError("delete_prefix needs a prefix; refusing to delete the whole artifact root")
        self._delete_missing_ok(f"{prefix}/{MARKER_FILE}", lambda path: self._fs.rm_file(path))
        self._delete_missing_ok(prefix, lambda path: self._fs.rm(path, recursive=True))

    # -- folder artifacts -------------------------------------------------------------------

    def read_marker(self, prefix: str) -> CompletionMarker | None:
        """The completion marker of the artifact at ``prefix``, or None when it is not complete."""
        raw = self.read_bytes(f"{prefix.strip('/')}/{MARKER_FILE}")
        if raw is None:
            return None
        try:
            return CompletionMarker.model_validate_json(raw)
        except ValidationError:
            return None  # a foreign or damaged marker: not an artifact we can trust

    def is_complete(self, prefix: str) -> bool:
        """Whether the artifact at ``prefix`` has a valid completion marker."""
        return self.read_marker(prefix) is not None

    def upload_folder(
        self,
        folder: Path,
        prefix: str,
        *,
        writer: dict[str, Any] | None = None,
        files: Mapping[str, StoredFile] | None = None,
    ) -> CompletionMarker:
        """Upload a local folder's files, then its completion marker (last).

        An earlier marker at ``prefix`` is deleted first, so a reader never pairs an old marker
        with new files. Hidden files (``.``-prefixed names at any depth) are not uploaded, and
        neither is a local copy of the marker. Objects already under ``prefix`` that the folder
        does not have are left alone: the marker lists exactly the files of this upload.

        Args:
            folder: The local folder.
            prefix: Its key in the store (``runs/r1/checkpoints/checkpoint-8``).
            writer: Identity of the uploader, stored in the marker.
            files: The folder's files with their sizes and checksums when the caller has them
                already (a checkpoint's own marker): spares hashing every file a second time.
                Sizes are checked against the disk; a mismatch means the description is stale.

        Returns:
            The marker written.

        Raises:
            ValueError: ``files`` does not describe the folder (a file missing or of another size).
        """
        prefix = prefix.strip("/")
        started = time.monotonic()
        if files is None:
            files = {name: entry for name, entry in describe_folder(folder).items() if name != MARKER_FILE}
        else:
            _check_sizes(folder, files)
        self._delete_missing_ok(f"{prefix}/{MARKER_FILE}", lambda path: self._fs.rm_file(path))
        self.write_bytes(f"{prefix}/{_UPLOAD_GUARD}", _now().encode())
        for name in files:
            target = self._path(f"{prefix}/{name}")
            self._retrying(f"upload {prefix}/{name}", partial(self._fs.put_file, str(folder / name), target))
        marker = CompletionMarker(files=dict(files), completed_at=_now(), writer=writer or {})
        self.write_bytes(f"{prefix}/{MARKER_FILE}", marker.model_dump_json(indent=2).encode())
        self._delete_missing_ok(f"{prefix}/{_UPLOAD_GUARD}", lambda path: self._fs.rm_file(path))
        log.info(
            "artifact uploaded",
            store=self.url_of(prefix),
            files=len(files),
            bytes=sum(entry.size for entry in files.values()),
            seconds=round(time.monotonic() - started, 3),
        )
        return marker

    def download_folder(self, prefix: str, folder: Path) -> CompletionMarker | None:
        """Download a complete artifact into ``folder``, verified, replacing what is there.

        The files go to a hidden temporary sibling first; each is checked against the marker's
        size and SHA-256, the marker is kept beside them, and the folder takes the place of
        any older copy (in one exchange on Linux). On failure the older copy is left as it was
        and nothing partial stays behind.

        Args:
            prefix: The artifact's key.
            folder: Where the copy goes (its parent is created).

        Returns:
            The marker, or None when the artifact is not complete in the store.

        Raises:
            ApplicationError: a retryable ``ArtifactStoreError`` when a file does not match its
                marker or has gone (a concurrent re-upload or a damaged object).
        """
        prefix = prefix.strip("/")
        marker = self.read_marker(prefix)
        if marker is None:
            return None
        started = time.monotonic()
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".download-{folder.name}-", dir=folder.parent))
        try:
            self._download_files(prefix, marker, staging)
            (staging / MARKER_FILE).write_text(marker.model_dump_json(indent=2), encoding="utf-8")
            replace_folder(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "artifact downloaded",
            store=self.url_of(prefix),
            files=len(marker.files),
            seconds=round(time.monotonic() - started, 3),
        )
        return marker

    def remove_incomplete(self, parent: str, *, older_than_seconds: float) -> list[str]:
        """Delete children of ``parent`` that have no completion marker and are old enough.

        A killed upload leaves files without a marker; a running one looks the same, so only
        leftovers whose newest object is older than ``older_than_seconds`` are removed.
        Complete artifacts, hidden names and plain objects directly under ``parent`` are kept.

        Args:
            parent: The key whose children are artifacts (``runs/r1/checkpoints``).
            older_than_seconds: Minimum age of the newest object of a leftover.

        Returns:
            The keys removed.
        """
        removed = []
        for name in self.list_children(parent):
            prefix = f"{parent.strip('/')}/{name}".strip("/")
            if name.startswith(".") or self.is_complete(prefix) or not self._is_folder(prefix):
                continue
            if self._age_seconds(prefix) >= older_than_seconds:
                self.delete_prefix(prefix)
                removed.append(prefix)
        if removed:
            log.info("incomplete artifacts removed", store=self.url_of(parent), removed=removed)
        return removed

    def check_access(self) -> None:
        """Fail fast, at worker start, when the store cannot be used as configured.

        Lists the root and writes and deletes a probe object.

        Raises:
            ApplicationError: ``ConfigurationError`` naming the credential variables when the
                store refuses them, or ``DURABERT_ARTIFACT_ROOT`` when the bucket does not exist;
                a retryable ``ArtifactStoreError`` when the store stays unreachable.
        """
        self.list_children("")
        probe = f".durabert-access-check-{uuid.uuid4().hex[:12]}"
        self.write_bytes(probe, b"ok")
        self._delete_missing_ok(probe, lambda path: self._fs.rm_file(path))

    # -- plumbing -----------------------------------------------------------------------------

    def _download_files(self, prefix: str, marker: CompletionMarker, staging: Path) -> None:
        for name, expected in marker.files.items():
            local = staging / name
            local.parent.mkdir(parents=True, exist_ok=True)
            remote = self._path(f"{prefix}/{name}")
            try:
                self._retrying(f"download {prefix}/{name}", partial(self._fs.get_file, remote, str(local)))
            except FileNotFoundError:
                raise retryable_error(
                    ErrorType.ARTIFACT_STORE,
                    f"artifact store: {self.url_of(f'{prefix}/{name}')} is listed by its completion marker "
                    "but missing; it may be being replaced",
                ) from None
            verify_file(local, expected, self.url_of(f"{prefix}/{name}"))

    def _delete_missing_ok(self, key: str, delete: Callable[[str], object]) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):  # already gone: deleting is idempotent
            self._retrying(f"delete {key}", lambda: delete(path))

    def _is_folder(self, prefix: str) -> bool:
        path = self._path(prefix)
        return bool(self._retrying(f"look up {prefix}", lambda: self._fs.isdir(path)))

    def _age_seconds(self, prefix: str) -> float:
        path = self._path(prefix)

        def newest() -> float:
            details = self._fs.find(path, detail=True)
            stamps = [modified_time(info) for info in details.values()]
            return max((stamp for stamp in stamps if stamp is not None), default=0.0)

        return time.time() - self._retrying(f"inspect {prefix}", newest)

    def _retrying(self, what: str, call: Callable[[], ResultT]) -> ResultT:
        """Run one store call, retrying transient faults with backoff until ``retry_seconds``.

        A missing object (``FileNotFoundError``) and our own errors are raised as they are;
        refused credentials and a missing bucket become ``ConfigurationError`` at once.
        """

        def refused(fault: Fault, exc: Exception) -> Exception:
            if fault is Fault.MISSING_ROOT:
                return missing_root_error(self.url, exc)
            return credentials_error(self.url, self.scheme, what, exc)

        def retrying(delay: float, exc: Exception) -> None:
            log.warning(
                "artifact store call failed; retrying",
                store=redact(self.url),
                operation=what,
                retry_in_seconds=delay,
                error=redact(first_line(exc)),
            )

        return call_with_backoff(
            call,
            retry_seconds=self.retry_seconds,
            refused=refused,
            exhausted=lambda exc: unavailable_error(self.url, what, self.retry_seconds, exc),
            retrying=retrying,
        )


def open_object_store(root: str, *, retry_seconds: float = 60.0) -> ObjectStore | None:
    """Open the object store an artifact root names, or None for a local folder.

    Args:
        root: ``DURABERT_ARTIFACT_ROOT`` as given.
        retry_seconds: See :class:`ObjectStore`.

    Returns:
        The store, or None when ``root`` is a local path.
    """
    return ObjectStore(root, retry_seconds=retry_seconds) if is_object_store_url(root) else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_sizes(folder: Path, files: Mapping[str, StoredFile]) -> None:
    """Refuse a precomputed description that no longer matches the folder on disk."""
    for name, entry in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry.size:
            raise ValueError(f"{path} does not match the description given for its upload")
