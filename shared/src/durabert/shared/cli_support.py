"""Entry-point helpers shared by the console scripts (the workers, the ``durabert`` CLI, the demo)."""

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from temporalio.exceptions import ApplicationError

from durabert.shared.client import TemporalUnreachableError
from durabert.shared.errors import ErrorType
from durabert.shared.logging import configure_logging, get_logger
from durabert.shared.runner import WorkerSpec, run_worker
from durabert.shared.settings import DurabertSettings, load_settings

log = get_logger(__name__)


def run_worker_main(
    build_spec: Callable[[DurabertSettings], WorkerSpec], *, uses_artifacts: bool = False
) -> None:
    """Load settings, configure logging, run a worker and exit with its code.

    Args:
        build_spec: Builds the worker's spec from the settings.
        uses_artifacts: The worker reads and writes the artifact store: an object-store root is
            checked before anything else (:func:`check_artifact_store`).
    """
    settings = load_settings(DurabertSettings)
    configure_logging(settings.log_format, settings.log_level)
    if uses_artifacts:
        check_artifact_store(settings)
    spec = build_spec(settings)
    try:
        code = asyncio.run(run_worker(settings, spec))
    except TemporalUnreachableError as exc:
        get_logger(__name__).error("cannot start worker", role=spec.role, error=str(exc))
        code = 1
    exit_now(code)


def check_artifact_store(settings: DurabertSettings) -> None:
    """Fail at start, before polling, when an object-store artifact root cannot be used.

    Without this a worker with missing or wrong credentials would poll, accept work and fail
    every task it takes. A local root is not checked (nothing changes for it).

    Args:
        settings: durabert settings.

    Raises:
        SystemExit: 2 when the store refuses this worker's configuration (the message names the
            credential variables or ``DURABERT_ARTIFACT_ROOT``), as a bad setting does; 1 when the
            store stayed unreachable for ``DURABERT_STORE__RETRY_SECONDS`` (a restart may help).
    """
    # Imported here: the orchestrator and the CLI never touch the artifact store.
    from durabert.shared.object_store import open_object_store

    objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
    if objects is None:
        return
    try:
        objects.check_access()
    except ApplicationError as exc:
        log.error("cannot start worker: artifact store not usable", error_type=exc.type, error=exc.message)
        print(f"{Path(sys.argv[0]).name}: cannot start: {exc.message}", file=sys.stderr)
        raise SystemExit(2 if exc.type == ErrorType.CONFIGURATION else 1) from None
    log.info("artifact store reachable", store=objects.url_of(""))


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
