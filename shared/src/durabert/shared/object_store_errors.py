"""What an object-store fault means for durabert: retry it, or stop and tell the operator.

fsspec backends raise whatever their client raises: s3fs turns S3 error codes into Python
``OSError`` subclasses (``PermissionError`` for ``InvalidAccessKeyId``, ``FileNotFoundError`` for
``NoSuchKey`` and ``NoSuchBucket``), lets botocore's own exceptions through for connection
faults and keeps the code in the message otherwise. So faults are sorted by type first and by
the well-known codes in their text second; anything not recognised as a configuration fault
or a bug counts as transient, because a store that is briefly away is the common case.
"""

import time
from collections.abc import Callable
from enum import Enum
from typing import Final, TypeVar

from temporalio.exceptions import ApplicationError

from durabert.shared.errors import ErrorType, configuration_error, retryable_error
from durabert.shared.redaction import redact


class Fault(Enum):
    """How one failed store call is handled."""

    MISSING = "missing"
    """The object or prefix does not exist: the caller decides (often ``None`` or ``[]``)."""
    CREDENTIALS = "credentials"
    """The store refused the credentials: never retried, the operator must fix them."""
    MISSING_ROOT = "missing_root"
    """The bucket or container of the artifact root does not exist or is not a valid name."""
    FATAL = "fatal"
    """Our own error or a bug: raised as it is, at once."""
    TRANSIENT = "transient"
    """Unreachable, timed out, throttled, 5xx: retried with backoff."""


CREDENTIAL_HINTS: Final[dict[str, str]] = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible store)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS",
    "az": "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_CONNECTION_STRING)",
    "abfs": "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_CONNECTION_STRING)",
}
"""Scheme of an object-store URL to the environment variables that hold its credentials."""

_CREDENTIAL_CODES: Final = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "NoCredentialsError",
    "Unable to locate credentials",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "AuthenticationFailed",
    "AuthorizationFailure",
    "Forbidden",
)
_MISSING_ROOT_CODES: Final = (
    "NoSuchBucket",
    "bucket does not exist",
    "InvalidBucketName",
    "ContainerNotFound",
    "container does not exist",
)
# Exceptions that no retry can fix: a bug in durabert or in the backend, never the network.
_BUG_TYPES: Final = (TypeError, AttributeError, NameError, AssertionError, NotImplementedError, ImportError)


def classify(exc: BaseException) -> Fault:
    """Sort a failed store call into one of the :class:`Fault` kinds.

    Args:
        exc: What the fsspec call raised.

    Returns:
        How the call is to be handled.
    """
    text = f"{type(exc).__name__} {exc}"
    if isinstance(exc, (ApplicationError, *_BUG_TYPES)):
        return Fault.FATAL
    if any(code in text for code in _MISSING_ROOT_CODES):
        return Fault.MISSING_ROOT
    if isinstance(exc, FileNotFoundError):
        return Fault.MISSING
    if isinstance(exc, PermissionError) or any(code in text for code in _CREDENTIAL_CODES):
        return Fault.CREDENTIALS
    return Fault.TRANSIENT


def credentials_error(url: str, scheme: str, what: str, exc: BaseException) -> ApplicationError:
    """The non-retryable error of a store that refused this worker's credentials.

    Args:
        url: The artifact root URL.
        scheme: Its scheme (``s3``), which says which variables hold the credentials.
        what: The operation refused (``read runs/r1/run.json``).
        exc: The backend's exception (its first line is quoted, credentials removed).

    Returns:
        A ``ConfigurationError`` naming the credential variables to check.
    """
    hint = CREDENTIAL_HINTS.get(scheme, "the store's credential variables")
    return configuration_error(
        f"artifact store {redact(url)} refused to {what}: {redact(first_line(exc))}. Check {hint}"
    )


def missing_root_error(url: str, exc: BaseException) -> ApplicationError:
    """The non-retryable error of an artifact root whose bucket or container does not exist.

    Args:
        url: The artifact root URL.
        exc: The backend's exception.

    Returns:
        A ``ConfigurationError`` naming ``DURABERT_ARTIFACT_ROOT``.
    """
    return configuration_error(
        f"DURABERT_ARTIFACT_ROOT: {redact(url)} does not exist or is not a valid bucket "
        f"({redact(first_line(exc))}); create the bucket or container first"
    )


def unavailable_error(url: str, what: str, retry_seconds: float, exc: BaseException) -> ApplicationError:
    """The retryable error of a store that stayed unreachable for the whole retry window.

    Args:
        url: The artifact root URL.
        what: The operation that kept failing.
        retry_seconds: How long it was retried.
        exc: The last exception.

    Returns:
        An ``ArtifactStoreError`` (retryable: the activity's next attempt tries again).
    """
    return retryable_error(
        ErrorType.ARTIFACT_STORE,
        f"artifact store {redact(url)}: cannot {what} after {retry_seconds:g} s of retries: "
        f"{redact(first_line(exc))}",
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


FIRST_DELAY_SECONDS: Final = 0.25
"""First backoff wait after a transient store fault; it doubles after each retry."""
MAX_DELAY_SECONDS: Final = 5.0
"""Longest wait between two tries, so a store that comes back is used within seconds."""

ResultT = TypeVar("ResultT")


def call_with_backoff(
    call: Callable[[], ResultT],
    *,
    retry_seconds: float,
    refused: Callable[[Fault, Exception], Exception],
    exhausted: Callable[[Exception], Exception],
    retrying: Callable[[float, Exception], None],
) -> ResultT:
    """Run one store call, retrying transient faults with exponential backoff.

    A missing object and our own errors (:attr:`Fault.MISSING`, :attr:`Fault.FATAL`) are raised
    as they are; refused credentials and a missing root are never retried.

    Args:
        call: The store call.
        retry_seconds: How long transient faults are retried.
        refused: Builds the error raised at once for :attr:`Fault.CREDENTIALS` and
            :attr:`Fault.MISSING_ROOT`.
        exhausted: Builds the error raised when the fault outlasts ``retry_seconds``.
        retrying: Told of each retry (the wait, the fault) before the wait, to log it.

    Returns:
        What the call returned.
    """
    deadline = time.monotonic() + retry_seconds
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            return call()
        except Exception as exc:
            fault = classify(exc)
            if fault in (Fault.MISSING, Fault.FATAL):
                raise
            if fault is not Fault.TRANSIENT:
                raise refused(fault, exc) from None
            if time.monotonic() + delay > deadline:
                raise exhausted(exc) from None
            retrying(delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_SECONDS)
