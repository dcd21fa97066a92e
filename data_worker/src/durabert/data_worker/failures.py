"""Failures as they leave the data worker: without the credentials a data URL may carry.

An error raised while reading a source can quote the URL (``datasets`` and fsspec put it in
their messages), and Temporal stores an activity failure's message, its details and its
chain of causes in the workflow history. So every failure is rebuilt with its message and
details redacted, and without its causes (their messages are out of our hands).

A refusal of offline mode (``huggingface_hub``'s ``OfflineModeIsEnabled``, raised by ``datasets``
for any URL or uncached hub dataset when ``HF_HUB_OFFLINE=1``) is a ``ConnectionError``, which
would be retried as a network fault; it leaves as a non-retryable ``ConfigurationError`` instead,
because only the worker's configuration or the request can change it.
"""

from typing import Final

from temporalio.exceptions import ApplicationError

from durabert.shared.errors import configuration_error
from durabert.shared.redaction import redact, redact_value

OFFLINE_ERROR_NAME: Final = "OfflineModeIsEnabled"
"""Class name of ``huggingface_hub``'s offline-mode refusal (matched by name: no import needed)."""
OFFLINE_MESSAGES: Final = (OFFLINE_ERROR_NAME, "Offline mode is enabled")
"""Texts by which ``datasets`` quotes that refusal when it re-raises it as another error."""


def offline_refusal(error: BaseException) -> bool:
    """Whether an error is, or was caused by, a refusal of offline mode.

    Args:
        error: Any exception; its causes and contexts are followed.

    Returns:
        True when the error or one in its chain is ``OfflineModeIsEnabled`` or quotes it.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        named = any(cls.__name__ == OFFLINE_ERROR_NAME for cls in type(current).__mro__)
        if named or any(text in str(current) for text in OFFLINE_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


def offline_error(error: BaseException, source: str | None = None) -> ApplicationError:
    """The non-retryable error of a source that offline mode keeps ``datasets`` from reading.

    Args:
        error: The refusal as it reached us (its first line is quoted, credentials removed).
        source: The source as :func:`~.sources.describe_source` names it, when known.

    Returns:
        A ``ConfigurationError`` saying why and what to do.
    """
    what = f"cannot load {source}" if source else "cannot load the dataset"
    reason = (str(error).strip() or type(error).__name__).splitlines()[0]
    return configuration_error(
        f"{what} ({redact(reason)}): this data worker runs in offline mode (HF_HUB_OFFLINE=1 or "
        "HF_DATASETS_OFFLINE=1), in which datasets reaches no URL and no hub dataset it has not "
        "cached. Put the data in an allowed data root, or in an object store as s3://, gs:// or "
        "az:// data_files (the worker fetches those itself, offline too), or run the data worker "
        "with HF_HUB_OFFLINE=0 where it may reach the network"
    )


def redacted_failure(error: BaseException) -> ApplicationError:
    """Rebuild an error as an ``ApplicationError`` that holds no URL credentials.

    Raise the result ``from None``, so the original (unredacted) error is not sent as its cause.

    Args:
        error: An ``ApplicationError`` (type, retryability and details are kept), a refusal of
            offline mode (a non-retryable ``ConfigurationError``), or any other exception
            (retried as before: its type name becomes the failure's type).

    Returns:
        The error to raise.
    """
    if isinstance(error, ApplicationError):
        return ApplicationError(
            redact(error.message),
            *(redact_value(detail) for detail in error.details),
            type=error.type,
            non_retryable=error.non_retryable,
            next_retry_delay=error.next_retry_delay,
        )
    if offline_refusal(error):
        return offline_error(error)
    return ApplicationError(redact(str(error) or type(error).__name__), type=type(error).__name__)
