"""Entry-point helper shared by the worker console scripts."""

import asyncio
import logging
import os
import sys
from collections.abc import Callable

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
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The SDK's native threads can crash a normal interpreter exit (sdk-python issue 300,
    # rc 134) after the drain is done; the work is flushed, so leave without finalizers.
    os._exit(code)
