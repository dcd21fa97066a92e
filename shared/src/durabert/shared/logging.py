"""Structured logging: structlog configured once, stdlib records (Temporal's) through the same chain.

A terminal gets readable console lines, anything else JSON. Every line carries ``run_id``
(``None`` outside a run): bind it with :func:`bind_run_id` or pass it as a field.
"""

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, Literal

import structlog

LogFormat = Literal["auto", "console", "json"]
"""Accepted values of the log format setting."""


def _add_run_id(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Make ``run_id`` present on every line, taking it from Temporal's context when there is one."""
    if event_dict.get("run_id") is None:
        for key in ("temporal_activity", "temporal_workflow"):
            context = event_dict.get(key)
            if isinstance(context, dict) and context.get("run_id"):
                event_dict["run_id"] = context["run_id"]
                break
        else:
            event_dict.setdefault("run_id", None)
    return event_dict


QUIET_LIBRARIES: Final = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "boto3", "s3transfer")
"""Object-store client libraries whose DEBUG logging is never passed on, even at DEBUG."""


def configure_logging(log_format: LogFormat = "auto", level: str = "INFO") -> None:
    """Configure structlog and route the standard library's loggers through it.

    Args:
        log_format: ``console``, ``json``, or ``auto`` (console on a terminal, else JSON).
        level: Lowest level to log.
    """
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _add_run_id,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True) if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if not use_console else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        # Their DEBUG lines dump whole requests (signed headers with the access key id, bodies):
        # noise at best, credentials at worst. Warnings and errors still come through.
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))


def _identity(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger for a module.

    Args:
        name: Usually ``__name__``.

    Returns:
        A bound logger that renders through the configured chain.
    """
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def bind_run_id(run_id: str | None) -> None:
    """Attach ``run_id`` to every line logged from the current context (task or thread).

    Args:
        run_id: The run to attach, or None to clear it.
    """
    structlog.contextvars.bind_contextvars(run_id=run_id)
