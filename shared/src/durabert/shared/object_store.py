"""Artifact roots on an object store (S3 and S3-compatible stores, GCS, Azure) through fsspec.

An object store has no rename, so a folder-shaped artifact (a snapshot, a checkpoint, a model)
is uploaded file by file and then *completed* by one marker object, written last, that lists
every file with its size and SHA-256. Readers look at the marker first: no marker, no artifact.
Downloads land in a temporary sibling folder, are verified against the marker and renamed into
place, so a local cache holds only whole, verified copies.

Nothing here knows about training or snapshots; the workers decide what to upload and when.
"""

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import Field, ValidationError

from durabert.shared.errors import ErrorType, configuration_error, retryable_error
from durabert.shared.models import ContractModel
from durabert.shared.redaction import redact

MARKER_FILE: Final = "durabert-complete.json"
"""Completion marker of a folder artifact in the store; written last, after every file it lists."""

BACKEND_PACKAGES: Final[dict[str, tuple[str, str]]] = {
    "s3": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
}
"""Scheme of an object-store URL to (the fsspec package that reads it, the durabert extra)."""

TEST_SCHEMES: Final = frozenset({"memory", "file"})
"""fsspec schemes accepted as artifact roots for tests and single-machine trials."""

_CREDENTIAL_HINTS: Final[dict[str, str]] = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible store)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS",
    "az": "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_CONNECTION_STRING)",
    "abfs": "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_CONNECTION_STRING)",
}

_CHUNK: Final = 1 << 20
ResultT = TypeVar("ResultT")


def url_scheme(root: str) -> str | None:
    """The scheme of an object-store URL, or None for a local path.

    Args:
        root: ``DURABERT_ARTIFACT_ROOT`` as given.

    Returns:
        ``"s3"`` for ``s3://bucket/prefix``; None for ``/srv/artifacts`` or ``~/artifacts``.
    """
    scheme, separator, _ = root.partition("://")
    return scheme.lower() if separator and scheme.isalnum() else None


def is_object_store_url(root: str) -> bool:
    """Whether an artifact root names an object store (rather than a local folder)."""
    return url_scheme(root) is not None


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


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _local_files(folder: Path) -> Iterator[Path]:
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
        for path in _local_files(folder)
    }


class ObjectStore:
    """An artifact store at an fsspec URL, with verified folder uploads and downloads.

    Keys are POSIX paths relative to the root URL (``snapshots/<id>/manifest.json``), the same
    layout as a local artifact root.
    """

    def __init__(self, url: str, *, retry_seconds: float = 60.0, filesystem: Any = None) -> None:
        """Open the store at ``url``.

        Args:
            url: ``s3://bucket/prefix``, ``gs://...``, ``az://...`` (or ``memory://``/``file://`` in tests).
            retry_seconds: How long a transient failure (connection refused, timeout, 5xx) is
                retried with exponential backoff before it is raised as a retryable
                ``ArtifactStoreError``.
            filesystem: An fsspec filesystem to use instead of one built from the URL (tests).

        Raises:
            ApplicationError: ``ConfigurationError`` naming the package and extra to install
                when the URL's fsspec backend is missing.
        """
        scheme = url_scheme(url)
        if scheme is None:
            raise configuration_error(f"DURABERT_ARTIFACT_ROOT: {url!r} is not an object-store URL")
        self.scheme = scheme
        self.url = url.rstrip("/")
        self.retry_seconds = retry_seconds
        self._fs = filesystem if filesystem is not None else _open_filesystem(scheme)
        self._root = self._fs._strip_protocol(self.url).rstrip("/")

    def __repr__(self) -> str:
        """The store's URL, credentials removed."""
        return f"ObjectStore({redact(self.url)!r})"

    def _path(self, key: str) -> str:
        key = key.strip("/")
        if any(part in ("", ".", "..") for part in key.split("/")) and key:
            raise configuration_error(f"artifact key {key!r} is not a plain relative path")
        return f"{self._root}/{key}" if key else self._root

    def url_of(self, key: str) -> str:
        """The full URL of a key (for messages and logs; it carries no credentials)."""
        return redact(f"{self.url}/{key.strip('/')}")

    # -- single objects -------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes | None:
        """Read one object, or None when it does not exist."""

        def read() -> bytes | None:
            try:
                data: bytes = self._fs.cat_file(self._path(key))
            except FileNotFoundError:
                return None
            return data

        return self._retrying(f"read {key}", read)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object whole (object stores make a single PUT atomic)."""
        self._retrying(f"write {key}", lambda: self._fs.pipe_file(self._path(key), data))

    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""
        return bool(self._retrying(f"look up {key}", lambda: self._fs.exists(self._path(key))))

    def list_children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix/`` (objects and pseudo-folders), sorted; [] when none."""

        def listing() -> list[str]:
            try:
                entries = self._fs.ls(self._path(prefix), detail=False)
            except FileNotFoundError:
                return []
            return sorted({str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries})

        return self._retrying(f"list {prefix}", listing)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix/`` (the marker first, so a half-deleted artifact is
        never taken as complete)."""
        marker = f"{prefix.strip('/')}/{MARKER_FILE}"

        def delete() -> None:
            if self._fs.exists(self._path(marker)):
                self._fs.rm_file(self._path(marker))
            if self._fs.exists(self._path(prefix)):
                self._fs.rm(self._path(prefix), recursive=True)

        self._retrying(f"delete {prefix}", delete)

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

    def upload_folder(self, folder: Path, prefix: str, *, writer: dict[str, Any] | None = None) -> CompletionMarker:
        """Upload a local folder's files, then its completion marker (last).

        An earlier marker at ``prefix`` is deleted first, so a reader never pairs an old marker
        with new files. Hidden files (``.``-prefixed names at any depth) are not uploaded.

        Args:
            folder: The local folder.
            prefix: Its key in the store (``runs/r1/checkpoints/checkpoint-8``).
            writer: Identity of the uploader, stored in the marker.

        Returns:
            The marker written.
        """
        prefix = prefix.strip("/")
        files = describe_folder(folder)
        marker_key = f"{prefix}/{MARKER_FILE}"
        self._retrying(f"clear {marker_key}", lambda: self._fs.rm_file(self._path(marker_key)), missing_ok=True)
        for name in files:
            source, target = folder / name, self._path(f"{prefix}/{name}")
            self._retrying(f"upload {prefix}/{name}", lambda s=source, t=target: self._fs.put_file(str(s), t))
        marker = CompletionMarker(files=files, completed_at=_now(), writer=writer or {})
        self.write_bytes(marker_key, marker.model_dump_json(indent=2).encode())
        return marker

    def download_folder(self, prefix: str, folder: Path) -> CompletionMarker | None:
        """Download a complete artifact into ``folder``, verified, replacing what is there.

        The files go to a hidden temporary sibling first; each is checked against the marker's
        size and SHA-256, the marker is kept beside them, and the folder is renamed into place.

        Args:
            prefix: The artifact's key.
            folder: Where the copy goes (its parent is created).

        Returns:
            The marker, or None when the artifact is not complete in the store.

        Raises:
            ApplicationError: a retryable ``ArtifactStoreError`` when a file does not match its
                marker (a concurrent re-upload or a damaged object).
        """
        marker = self.read_marker(prefix)
        if marker is None:
            return None
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".download-{folder.name}-", dir=folder.parent))
        try:
            for name, expected in marker.files.items():
                local = staging / name
                local.parent.mkdir(parents=True, exist_ok=True)
                remote = self._path(f"{prefix.strip('/')}/{name}")
                self._retrying(f"download {prefix}/{name}", lambda r=remote, d=local: self._fs.get_file(r, str(d)))
                _verify(local, expected, self.url_of(f"{prefix}/{name}"))
            (staging / MARKER_FILE).write_text(marker.model_dump_json(indent=2), encoding="utf-8")
            _replace_folder(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return marker

    def remove_incomplete(self, parent: str, *, older_than_seconds: float) -> list[str]:
        """Delete children of ``parent`` that have no completion marker and are old enough.

        A killed upload leaves files without a marker; a running one looks the same, so only
        leftovers whose newest object is older than ``older_than_seconds`` are removed.

        Args:
            parent: The key whose children are artifacts (``runs/r1/checkpoints``).
            older_than_seconds: Minimum age of the newest object of a leftover.

        Returns:
            The keys removed.
        """
        removed = []
        for name in self.list_children(parent):
            prefix = f"{parent.strip('/')}/{name}"
            if name.startswith(".") or self.is_complete(prefix) or not self._is_folder(prefix):
                continue
            if self._age_seconds(prefix) >= older_than_seconds:
                self.delete_prefix(prefix)
                removed.append(prefix)
        return removed

    def check_access(self) -> None:
        """Fail fast, at worker start, when the store cannot be reached as configured.

        Raises:
            ApplicationError: ``ConfigurationError`` naming the credential variables when the
                store refuses them, or ``DURABERT_ARTIFACT_ROOT`` when the bucket does not exist.
        """
        self.list_children("")
        probe = f".durabert-access-check-{uuid.uuid4().hex[:12]}"
        self.write_bytes(probe, b"ok")
        self._retrying(f"delete {probe}", lambda: self._fs.rm_file(self._path(probe)), missing_ok=True)

    # -- plumbing -----------------------------------------------------------------------------

    def _is_folder(self, prefix: str) -> bool:
        return bool(self._retrying(f"look up {prefix}", lambda: self._fs.isdir(self._path(prefix))))

    def _age_seconds(self, prefix: str) -> float:
        def newest() -> float:
            details = self._fs.find(self._path(prefix), detail=True)
            stamps = [_modified(info) for info in details.values()]
            return max((stamp for stamp in stamps if stamp is not None), default=0.0)

        return time.time() - self._retrying(f"inspect {prefix}", newest)

    def _retrying(
        self, what: str, call: Callable[[], ResultT], *, missing_ok: bool = False
    ) -> ResultT:
        """Run one store call, retrying transient faults with backoff until ``retry_seconds``."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.25
        while True:
            try:
                return call()
            except FileNotFoundError:
                if missing_ok:
                    return None  # type: ignore[return-value]
                raise
            except PermissionError as exc:
                raise self._credentials_error(what, exc) from None
            except Exception as exc:
                if _is_credentials_fault(exc):
                    raise self._credentials_error(what, exc) from None
                if _is_missing_bucket(exc):
                    raise configuration_error(
                        f"DURABERT_ARTIFACT_ROOT: {redact(self.url)} does not exist (create the bucket or "
                        "container first)"
                    ) from None
                if time.monotonic() + delay > deadline:
                    raise retryable_error(
                        ErrorType.ARTIFACT_STORE,
                        f"artifact store {redact(self.url)}: cannot {what} after {self.retry_seconds:.0f} s "
                        f"of retries: {redact(_first_line(exc))}",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _credentials_error(self, what: str, exc: BaseException) -> Exception:
        hint = _CREDENTIAL_HINTS.get(self.scheme, "the store's credential variables")
        return configuration_error(
            f"artifact store {redact(self.url)} refused to {what}: {redact(_first_line(exc))}. "
            f"Check {hint}"
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


def _open_filesystem(scheme: str) -> Any:
    import fsspec  # noqa: PLC0415 - only workers with an object-store root pay for it

    package, extra = BACKEND_PACKAGES.get(scheme, ("", ""))
    if scheme not in BACKEND_PACKAGES and scheme not in TEST_SCHEMES:
        known = ", ".join(sorted(BACKEND_PACKAGES))
        raise configuration_error(f"DURABERT_ARTIFACT_ROOT: {scheme}:// is not supported (use one of {known})")
    try:
        # Listing caches would hide objects written by other workers; instance caching would share
        # one client (and its event loop) across forked processes.
        return fsspec.filesystem(scheme, skip_instance_cache=True, use_listings_cache=False)
    except ImportError:
        raise configuration_error(
            f"DURABERT_ARTIFACT_ROOT: {scheme}:// needs the {package} package; install the worker with "
            f"its [{extra}] extra"
        ) from None


def _verify(path: Path, expected: StoredFile, where: str) -> None:
    size = path.stat().st_size
    if size != expected.size or sha256_of(path) != expected.sha256:
        raise retryable_error(
            ErrorType.ARTIFACT_STORE,
            f"artifact store: {where} does not match its completion marker ({size} bytes, expected "
            f"{expected.size}); it may be being replaced",
        )


def _replace_folder(staging: Path, folder: Path) -> None:
    """Move a verified download into place; an older copy is moved aside in one rename first."""
    if folder.exists():
        aside = folder.parent / f".replaced-{folder.name}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(staging, folder)


def _modified(info: dict[str, Any]) -> float | None:
    for name in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


_CREDENTIAL_CODES: Final = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "NoCredentialsError",
    "Unable to locate credentials",
    "ExpiredToken",
    "InvalidToken",
    "AuthenticationFailed",
    "Forbidden",
)


def _is_credentials_fault(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(code in text for code in _CREDENTIAL_CODES)


def _is_missing_bucket(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return "NoSuchBucket" in text or "ContainerNotFound" in text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
