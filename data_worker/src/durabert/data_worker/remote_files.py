"""Object-store data files read with the data worker's own credentials: globs expanded, files fetched.

The ``datasets`` library refuses every URL in offline mode (``HF_HUB_OFFLINE=1``), although an
object store (S3 over a VPC endpoint, MinIO in the cluster) is not the Hugging Face Hub. So the
data worker lists and downloads ``s3://``/``gs://``/``az://`` data files itself, through fsspec,
with the credentials of its environment (the ``AWS_*`` variables for S3, as for the artifact
store), and hands ``datasets`` local files only (:mod:`.staging`).

Every store call is sorted as the artifact store sorts its faults
(:func:`durabert.shared.object_store_errors.classify`): refused or missing credentials and a
missing bucket stop at once with a ``ConfigurationError`` naming the variables (no retry fixes
them); a store that is briefly away is retried with backoff for ``DURABERT_STORE__RETRY_SECONDS``
and then reported as retryable, so the activity's next attempt tries again.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from durabert.shared.errors import ErrorType, configuration_error, invalid_input, retryable_error
from durabert.shared.logging import get_logger
from durabert.shared.object_store_backends import (
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    open_filesystem,
)
from durabert.shared.object_store_errors import CREDENTIAL_HINTS, Fault, call_with_backoff, first_line
from durabert.shared.redaction import redact

log = get_logger(__name__)

ResultT = TypeVar("ResultT")

GLOB_CHARS: Final = frozenset("*?[")
"""Characters that make a data URL a pattern (as for local paths)."""

FILESYSTEM_SCHEMES: Final = {"s3a": "s3", "abfss": "abfs"}
"""Data URL schemes read by another scheme's fsspec backend (the rest are their own)."""


@dataclass(frozen=True)
class RemoteFile:
    """One object-store file that a ``data_files`` entry names."""

    url: str
    """Its URL, in the scheme the request used (``s3://bucket/data/a.jsonl``)."""
    path: str
    """Its path for the fsspec backend (``bucket/data/a.jsonl``)."""
    scheme: str
    """The fsspec backend's scheme (``s3``)."""


def split_url(url: str) -> tuple[str, str]:
    """The request's scheme and the rest of a data URL (``("s3", "bucket/data/a.jsonl")``)."""
    scheme, _, rest = url.partition("://")
    return scheme.lower(), rest.strip("/")


class RemoteFiles:
    """Lists and downloads object-store data files, one fsspec client per scheme."""

    def __init__(self, retry_seconds: float) -> None:
        """Prepare a reader; clients are opened on first use.

        Args:
            retry_seconds: How long a transient store fault is retried before it is raised as a
                retryable error (``DURABERT_STORE__RETRY_SECONDS``).
        """
        self.retry_seconds = retry_seconds
        self._filesystems: dict[str, Any] = {}

    def _filesystem(self, scheme: str) -> Any:
        backend = FILESYSTEM_SCHEMES.get(scheme, scheme)
        if backend not in self._filesystems:
            # Uncached, one try per call: this class's backoff alone decides how long a fault lasts.
            self._filesystems[backend] = open_filesystem(
                backend, CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS
            )
        return self._filesystems[backend]

    def expand(self, url: str) -> list[RemoteFile]:
        """The files a data URL names: itself, or every file its glob matches (sorted).

        Args:
            url: An object-store ``data_files`` entry (already confined as given).

        Returns:
            The files, in sorted order; empty when the URL names no object.

        Raises:
            ApplicationError: ``InvalidInputError`` naming ``data_files`` for a URL naming a
                folder; ``ConfigurationError`` for refused credentials or a missing bucket;
                a retryable ``ArtifactStoreError`` when the store stays unreachable.
        """
        scheme = split_url(url)[0]
        filesystem = self._filesystem(scheme)
        path = filesystem._strip_protocol(url).rstrip("/")
        if GLOB_CHARS & set(path):
            found = self._call(url, "list", lambda: filesystem.glob(path, detail=True))
            paths = sorted(name for name, info in found.items() if info.get("type") == "file")
        else:
            paths = [path] if self._is_file(url, path, filesystem) else []
        return [
            RemoteFile(url=f"{scheme}://{found_path}", path=found_path, scheme=scheme) for found_path in paths
        ]

    def _is_file(self, url: str, path: str, filesystem: Any) -> bool:
        try:
            info = self._call(url, "look up", lambda: filesystem.info(path))
        except FileNotFoundError:
            return False
        if info.get("type") != "file":
            raise invalid_input(
                f"{redact(url)!r} is a folder, not a file; name its files with a glob such as "
                f"{redact(url.rstrip('/'))}/*.jsonl",
                field="data_files",
            )
        return True

    def download(self, remote: RemoteFile, target: Path) -> None:
        """Download one file (a retry starts it over).

        Args:
            remote: The file, as :meth:`expand` found it.
            target: The local file to write; its folder is created.

        Raises:
            ApplicationError: As :meth:`expand`; ``InvalidInputError`` when the object went
                away after it was listed.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        filesystem = self._filesystem(remote.scheme)
        try:
            self._call(remote.url, "download", lambda: filesystem.get_file(remote.path, str(target)))
        except FileNotFoundError:
            raise invalid_input(
                f"{redact(remote.url)!r} was deleted while it was read", field="data_files"
            ) from None

    def _call(self, url: str, what: str, call: Callable[[], ResultT]) -> ResultT:
        """Run one store call, retrying transient faults with backoff until ``retry_seconds``.

        A missing object (``FileNotFoundError``) and our own errors are raised as they are.
        """

        def retrying(delay: float, exc: Exception) -> None:
            log.warning(
                "data store call failed; retrying",
                url=redact(url),
                operation=what,
                retry_in_seconds=delay,
                error=redact(first_line(exc)),
            )

        return call_with_backoff(
            call,
            retry_seconds=self.retry_seconds,
            refused=lambda fault, exc: _configuration_fault(url, what, fault, exc),
            exhausted=lambda exc: _unavailable(url, what, self.retry_seconds, exc),
            retrying=retrying,
        )


def _hint(scheme: str) -> str:
    return CREDENTIAL_HINTS.get(FILESYSTEM_SCHEMES.get(scheme, scheme), "the store's credential variables")


def _configuration_fault(url: str, what: str, fault: Fault, exc: BaseException) -> Exception:
    """The non-retryable error of refused credentials or a missing bucket, naming the variables."""
    scheme = split_url(url)[0]
    reason = redact(first_line(exc))
    if fault is Fault.MISSING_ROOT:
        problem = f"its bucket or container does not exist ({reason})"
    else:
        problem = f"the store refused to {what} it ({reason})"
    return configuration_error(
        f"data_files: cannot read {redact(url)!r}: {problem}. Check the URL and the data worker's "
        f"{_hint(scheme)}"
    )


def _unavailable(url: str, what: str, retry_seconds: float, exc: BaseException) -> Exception:
    """The retryable error of a data store that stayed unreachable for the whole retry window."""
    return retryable_error(
        ErrorType.ARTIFACT_STORE,
        f"data_files: cannot {what} {redact(url)!r} after {retry_seconds:g} s of retries: "
        f"{redact(first_line(exc))}",
    )
