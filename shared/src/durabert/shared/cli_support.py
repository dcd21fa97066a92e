"""Entry-point helpers shared by the console scripts (the workers, the ``durabert`` CLI, the demo)."""

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from durabert.shared.client import TemporalUnreachableError
from durabert.shared.logging import configure_logging, get_logger
from durabert.shared.runner import WorkerSpec, run_worker
from durabert.shared.settings import DurabertSettings, load_settings


def run_worker_main(build_spec: Callable[[DurabertSettings], WorkerSpec]) -> None:
    """Load settings, configure logging, run a worker and exit with its code.

    Args:
        build_spec: Builds the worker's spec from the settings.
    """
    settings = load_settings(DurabertSettings)
    configure_logging(settings.log_format, settings.log_level)
    spec = build_spec(settings)
    try:
        code = asyncio.run(run_worker(settings, spec))
    except TemporalUnreachableError as exc:
        get_logger(__name__).error("cannot start worker", role=spec.role, error=str(exc))
        code = 1
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End a process that used the Temporal SDK: flush logs and streams, then exit at once.

    The SDK's native threads can crash a normal interpreter exit (sdk-python issue 300,
    rc 134) after the work is done. Every console script (the workers, ``durabert``, the
    demo) ends here instead, with everything flushed, skipping the finalizers.

    Args:
        code: The exit code.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
