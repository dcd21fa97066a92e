"""Failures as they leave the data worker: without the credentials a data URL may carry.

An error raised while reading a source can quote the URL (``datasets`` and fsspec put it in
their messages), and Temporal stores an activity failure's message, its details and its
chain of causes in the workflow history. So every failure is rebuilt with its message and
details redacted, and without its causes (their messages are out of our hands).
"""

from temporalio.exceptions import ApplicationError

from durabert.shared.redaction import redact, redact_value


def redacted_failure(error: BaseException) -> ApplicationError:
    """Rebuild an error as an ``ApplicationError`` that holds no URL credentials.

    Raise the result ``from None``, so the original (unredacted) error is not sent as its cause.

    Args:
        error: An ``ApplicationError`` (type, retryability and details are kept) or any other
            exception (retried as before: its type name becomes the failure's type).

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
    return ApplicationError(redact(str(error) or type(error).__name__), type=type(error).__name__)
