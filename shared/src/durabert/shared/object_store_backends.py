"""Which fsspec backend serves an artifact-root URL, and how it is opened.

Each scheme maps to the fsspec package (and durabert extra) that reads it. Clients are opened
per store, uncached, with the backend's own retries reduced to one try, so that durabert's
backoff loop (``DURABERT_STORE__RETRY_SECONDS``) alone decides how long a fault is retried.
"""

from datetime import datetime
from typing import Any, Final

from durabert.shared.errors import configuration_error

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

CONNECT_TIMEOUT_SECONDS: Final = 5.0
"""Default limit on opening one connection to the store: short, so that an unreachable store
fails each try fast and :attr:`ObjectStore.retry_seconds` (the backoff loop) governs."""
READ_TIMEOUT_SECONDS: Final = 60.0
"""Default limit on waiting for one response: long enough for the store to take a 50 MB part."""


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


def open_filesystem(scheme: str, connect_timeout: float, read_timeout: float) -> Any:
    """Open an uncached fsspec filesystem for ``scheme`` with one try per call.

    Args:
        scheme: The artifact root's scheme (``s3``, ``gs``, ``az``, ``memory``, ``file``).
        connect_timeout: Limit on opening one connection (S3).
        read_timeout: Limit on waiting for one response (S3).

    Returns:
        The filesystem.

    Raises:
        ApplicationError: ``ConfigurationError`` for an unsupported scheme or a missing backend package.
    """
    import fsspec  # only workers with an object-store root pay for importing it

    if scheme not in BACKEND_PACKAGES and scheme not in TEST_SCHEMES:
        known = ", ".join(sorted(BACKEND_PACKAGES))
        raise configuration_error(
            f"DURABERT_ARTIFACT_ROOT: {scheme}:// is not supported (use one of {known})"
        )
    # Listing caches would hide objects written by other workers; instance caching would hand
    # a child process its parent's client (bound to the parent's event loop thread).
    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if scheme == "s3":
        # One try per call, with short timeouts: botocore's and s3fs's own retry loops would
        # otherwise multiply (5 x 5 tries, seconds each) inside every try of ours, and
        # ``retry_seconds`` would stop meaning anything. The endpoint, region and credentials
        # come from botocore's usual sources (AWS_ENDPOINT_URL, AWS_* variables, profiles).
        options["config_kwargs"] = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"total_max_attempts": 1},
        }
    if scheme == "file":
        options["auto_mkdir"] = True  # as an object store does: a key's "folders" need no creating
    try:
        filesystem = fsspec.filesystem(scheme, **options)
    except ImportError:
        package, extra = BACKEND_PACKAGES[scheme]
        raise configuration_error(
            f"DURABERT_ARTIFACT_ROOT: {scheme}:// needs the {package} package; install the worker with "
            f"its [{extra}] extra"
        ) from None
    if scheme == "s3":
        filesystem.retries = 1  # s3fs's own loop around each request (see above)
    return filesystem


def modified_time(info: dict[str, Any]) -> float | None:
    """The modification time (epoch seconds) in an fsspec ``info`` entry, or None when it has none."""
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
