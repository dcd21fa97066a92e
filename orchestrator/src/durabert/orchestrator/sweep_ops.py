"""What ``durabert sweep`` asks of Temporal: read a sweep file, start the sweep, read its state.

A sweep's workflow id is its sweep id, and its trials are the runs ``<sweep_id>-<nn>``. Its state is
the workflow's ``get_progress`` query (trials, rung, best so far), or its result once it completed.
These functions return data; :mod:`~durabert.orchestrator.progress` draws the table.
"""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from durabert.orchestrator.client_ops import (
    QUERY_TIMEOUT,
    RunNotFoundError,
    failure_message,
    status_name,
)
from durabert.orchestrator.config_file import UserInputError, read_config_mapping
from durabert.shared import names
from durabert.shared.errors import describe_validation_error
from durabert.shared.models import BertSweepConfig, BertSweepResult, SweepProgress
from durabert.shared.settings import DurabertSettings

REPORT_FILES = ("trials.json", "metric.png")
"""Files ``record_sweep`` writes under ``sweeps/<sweep_id>/``."""


class SweepIdInUseError(RuntimeError):
    """A sweep with this id was started before (running or closed)."""

    def __init__(self, sweep_id: str) -> None:
        """Remember the refused id.

        Args:
            sweep_id: The sweep id in use.
        """
        super().__init__(
            f"sweep_id {sweep_id} is in use by an earlier sweep (see `durabert sweep status {sweep_id}`); "
            "its trials' run ids are taken: give the sweep another sweep_id (or none, for a fresh one)"
        )
        self.sweep_id = sweep_id


def generate_sweep_id(now: datetime | None = None, token: str | None = None) -> str:
    """Make a fresh sweep id such as ``sweep-20260101-120000-a1b2``.

    Args:
        now: Time to stamp (UTC); the current time when None.
        token: Four lowercase hex digits; random when None.

    Returns:
        A valid sweep id.
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    return f"sweep-{stamp}-{token if token is not None else secrets.token_hex(2)}"


def load_sweep_config(path: Path) -> BertSweepConfig:
    """Read and validate a sweep file before Temporal is contacted; a missing ``sweep_id`` is made up.

    Args:
        path: A ``.yaml``, ``.yml`` or ``.json`` file of ``BertSweepConfig`` fields.

    Returns:
        The validated config with ``sweep_id`` set.

    Raises:
        UserInputError: Each bad field on its own line, as ``FILE: field: why (got value)``.
    """
    data = read_config_mapping(path)
    try:
        config = BertSweepConfig.model_validate(data)
    except ValidationError as exc:
        lines = describe_validation_error(exc).splitlines()
        raise UserInputError("\n".join(f"{path}: {line}" for line in lines)) from None
    return config.model_copy(update={"sweep_id": config.sweep_id or generate_sweep_id()})


async def start_sweep(
    client: Client, settings: DurabertSettings, config: BertSweepConfig
) -> WorkflowHandle[Any, BertSweepResult]:
    """Start a sweep whose workflow id is its sweep id.

    Args:
        client: A connected client.
        settings: durabert settings (orchestrator queue; the activity queues go in the memo).
        config: The validated config, ``sweep_id`` set.

    Returns:
        The new workflow's handle.

    Raises:
        SweepIdInUseError: A sweep with this id exists, running or closed: its trials' run ids are taken.
    """
    assert config.sweep_id is not None, "load_sweep_config always settles the sweep id"
    try:
        handle: WorkflowHandle[Any, BertSweepResult] = await client.start_workflow(
            names.SWEEP_WORKFLOW,
            config,
            id=config.sweep_id,
            task_queue=settings.queues.orchestrator,
            result_type=BertSweepResult,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            # Never reused: a second sweep with this id would take over the first one's trial runs.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            memo=settings.queue_memo(),
        )
    except WorkflowAlreadyStartedError:
        raise SweepIdInUseError(config.sweep_id) from None
    return handle


@dataclass
class SweepStatus:
    """A sweep's state as ``durabert sweep status`` shows it."""

    sweep_id: str
    """The sweep's id."""
    status: str
    """Lowercase workflow status (``running``, ``completed``, ``failed``, ...)."""
    progress: SweepProgress | None
    """Trials and best so far; None when no orchestrator worker answered."""
    error: str | None = None
    """Why the sweep failed, when it did."""

    def to_json(self) -> dict[str, Any]:
        """The status as plain JSON (``--json``)."""
        progress = self.progress.model_dump(mode="json") if self.progress is not None else None
        return {"sweep_id": self.sweep_id, "status": self.status, "progress": progress, "error": self.error}


async def _query(handle: WorkflowHandle[Any, BertSweepResult]) -> SweepProgress | None:
    try:
        answer: SweepProgress = await handle.query(
            names.GET_PROGRESS_QUERY, result_type=SweepProgress, rpc_timeout=QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None  # no orchestrator worker answered in time: the status alone shows
    return answer


async def sweep_status(client: Client, sweep_id: str) -> SweepStatus:
    """Read a sweep's status, trials and best trial.

    Args:
        client: A connected client.
        sweep_id: The sweep's id.

    Returns:
        The status; a completed sweep's trials come from its result (no worker needed).

    Raises:
        RunNotFoundError: No sweep has this id.
    """
    handle = client.get_workflow_handle(sweep_id, result_type=BertSweepResult)
    try:
        description = await handle.describe()
    except RPCError:
        raise RunNotFoundError(sweep_id) from None
    if description.workflow_type != names.SWEEP_WORKFLOW:
        raise RunNotFoundError(sweep_id)
    state = SweepStatus(sweep_id, status_name(description.status), None)
    if description.status == WorkflowExecutionStatus.COMPLETED:
        state.progress = SweepProgress(stage="completed", sweep=await handle.result())
        return state
    if description.status != WorkflowExecutionStatus.RUNNING:
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            state.error = failure_message(exc)
    state.progress = await _query(handle)
    return state


def report_location(settings: DurabertSettings, report_path: str) -> str:
    """Where a sweep's plot is, for the person at the terminal: a local path or an object-store URL.

    Args:
        settings: durabert settings (the artifact root).
        report_path: The result's ``report_path`` (``sweeps/<sweep_id>``).

    Returns:
        The location of ``metric.png``.
    """
    url = settings.artifact_url
    if url is not None:
        return f"{url}/{report_path}/{REPORT_FILES[1]}"
    return str(settings.artifact_dir / report_path / REPORT_FILES[1])
