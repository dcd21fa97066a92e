"""Error types shared by workers and workflows.

Temporal decides whether to retry from the ``type`` of an ``ApplicationError``; these
names are the contract: the workflow's retry policies list the non-retryable ones.
"""

from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.exceptions import ApplicationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ErrorType(StrEnum):
    """``ApplicationError.type`` values used across durabert."""

    INVALID_INPUT = "InvalidInputError"
    """A request field has a value that is not allowed. Never retried."""
    CONFIGURATION = "ConfigurationError"
    """The request is well-formed but the model, data or worker cannot satisfy it. Never retried."""
    NOT_FOUND = "ArtifactNotFoundError"
    """A referenced run, model or snapshot does not exist. Never retried."""
    ARTIFACT_STORE = "ArtifactStoreError"
    """The artifact store cannot be written (permissions, full disk). Retried: an operator may fix it."""
    PREEMPTED = "WorkerPreemptedError"
    """The worker is shutting down; the work was checkpointed and will resume elsewhere. Retried."""
    PROCESS_DIED = "TrainingProcessDied"
    """The training child exited without a result (killed, out of host memory). Retried."""
    STALLED = "TrainingStalledError"
    """The training child reported no step for ``stall_timeout_seconds`` and was killed. Retried."""
    SUPERSEDED = "AttemptSupersededError"
    """A newer attempt owns the run folder; this one stopped unwritten. Not retried: the newer one runs."""
    RUN_ID_IN_USE = "RunIdInUseError"
    """The run id holds an earlier run's artifacts and ``continue_run`` was not asked for. Never retried."""
    DEVICE_UNAVAILABLE = "DeviceUnavailableError"
    """The requested device is not usable on this worker. Retried (another worker may have one)."""


NON_RETRYABLE_ERROR_TYPES: tuple[str, ...] = (
    ErrorType.INVALID_INPUT.value,
    ErrorType.CONFIGURATION.value,
    ErrorType.NOT_FOUND.value,
    ErrorType.SUPERSEDED.value,
    ErrorType.RUN_ID_IN_USE.value,
)
"""Error types that no retry can fix: they go into every retry policy's ``non_retryable_error_types``."""


def invalid_input(message: str, *, field: str | None = None) -> ApplicationError:
    """Build a non-retryable error for a bad request value.

    Args:
        message: What is wrong and what is allowed.
        field: The offending field, put in front of the message when given.

    Returns:
        An ``ApplicationError`` of type ``InvalidInputError`` to raise.
    """
    text = f"{field}: {message}" if field else message
    return ApplicationError(text, type=ErrorType.INVALID_INPUT, non_retryable=True)


def configuration_error(message: str) -> ApplicationError:
    """Build a non-retryable error for a request the model, data or worker cannot satisfy.

    Args:
        message: What cannot be satisfied and how to fix it.

    Returns:
        An ``ApplicationError`` of type ``ConfigurationError`` to raise.
    """
    return ApplicationError(message, type=ErrorType.CONFIGURATION, non_retryable=True)


def not_found(message: str) -> ApplicationError:
    """Build a non-retryable error for a missing run, model or snapshot.

    Args:
        message: What was looked for and where.

    Returns:
        An ``ApplicationError`` of type ``ArtifactNotFoundError`` to raise.
    """
    return ApplicationError(message, type=ErrorType.NOT_FOUND, non_retryable=True)


def retryable_error(error_type: ErrorType, message: str, details: Any = None) -> ApplicationError:
    """Build a retryable error of one of the retryable types.

    Args:
        error_type: A type that a retry may fix (``PREEMPTED``, ``PROCESS_DIED``, ``STALLED``,
            ``ARTIFACT_STORE``, ``DEVICE_UNAVAILABLE``).
        message: What happened and what the retry will do.
        details: Optional JSON-serialisable details (a training attempt sends its
            ``TrainingHeartbeat``, so the workflow resumes from its newest checkpoint).

    Returns:
        An ``ApplicationError`` to raise.
    """
    if error_type.value in NON_RETRYABLE_ERROR_TYPES:
        raise ValueError(f"{error_type.value} is not retryable; use its own builder")
    return ApplicationError(message, *(() if details is None else (details,)), type=error_type)


def superseded(message: str) -> ApplicationError:
    """Build the error of an attempt fenced off by a newer one (not retried: the newer one runs).

    Args:
        message: Which attempt owns the run folder now.

    Returns:
        An ``ApplicationError`` of type ``AttemptSupersededError`` to raise.
    """
    return ApplicationError(message, type=ErrorType.SUPERSEDED, non_retryable=True)


def run_id_in_use(message: str) -> ApplicationError:
    """Build the error for a run id that already holds an earlier run (never retried).

    Args:
        message: The run id, what holds it, and the two ways on.

    Returns:
        An ``ApplicationError`` of type ``RunIdInUseError`` to raise.
    """
    return ApplicationError(message, type=ErrorType.RUN_ID_IN_USE, non_retryable=True)


def describe_validation_error(error: ValidationError) -> str:
    """Render a Pydantic validation error as one line per field, naming each field.

    Args:
        error: The error raised by ``model_validate``.

    Returns:
        Lines such as ``learning_rate: Input should be greater than 0 (got -1)``.
    """
    lines = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "(input)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; unknown keys are refused, not ignored)"
        got = _short_repr(item.get("input")) if item["type"] != "missing" else None
        lines.append(f"{location}: {message}" + (f" (got {got})" if got is not None else ""))
    return "\n".join(lines)


def parse_input(model: type[ModelT], raw: ModelT | dict[str, Any]) -> ModelT:
    """Validate a workflow or activity input, turning a bad one into a non-retryable error.

    Workflows take ``Model | dict`` so that JSON which fails validation still reaches
    the workflow code (instead of failing the workflow task forever) and can be refused
    with a message that names each bad field.

    Args:
        model: The Pydantic model the input must satisfy.
        raw: The decoded input: already a model, or a plain dict from JSON.

    Returns:
        The validated model.

    Raises:
        ApplicationError: ``InvalidInputError`` naming every bad field.
    """
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid_input(f"invalid {model.__name__}:\n{describe_validation_error(exc)}") from None


def parse_workflow_args(model: type[ModelT], args: tuple[Any, ...]) -> ModelT:
    """Validate a workflow's raw arguments: exactly one JSON object that satisfies ``model``.

    Workflows declare ``*args: Any`` so that *any* input shape (a string, a list, two
    arguments, none) reaches workflow code and fails the workflow with a clear error;
    a typed parameter would instead fail the workflow task on decoding, which Temporal
    retries forever while the workflow looks Running.

    Args:
        model: The Pydantic model of the single argument.
        args: The decoded arguments.

    Returns:
        The validated model.

    Raises:
        ApplicationError: ``InvalidInputError`` for a wrong shape or any bad field.
    """
    if len(args) != 1 or not isinstance(args[0], dict | model):
        shapes = ", ".join(type(arg).__name__ for arg in args) or "nothing"
        raise invalid_input(
            f"expected exactly one JSON object ({model.__name__}), got {len(args)} argument(s): {shapes}",
            field="input",
        )
    return parse_input(model, args[0])


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
