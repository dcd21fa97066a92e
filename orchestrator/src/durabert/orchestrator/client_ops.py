"""What the CLI asks of Temporal: start, describe, watch, cancel, list, infer.

Workflows are addressed by their type *names* from :mod:`durabert.shared.names`, never by
importing the workflow classes, so the client stays a thin, ML-free process. These functions
return data; :mod:`durabert.orchestrator.cli` decides how to print it.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from durabert.orchestrator.progress import ProgressView
from durabert.orchestrator.run_ids import inference_workflow_id
from durabert.shared import names
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    TrainingProgress,
)
from durabert.shared.settings import DurabertSettings

QUERY_TIMEOUT = timedelta(seconds=5)
"""How long one progress query may wait: with no worker polling, Temporal would hold it long."""

DEV_SERVER_UI_PORT = 8233
"""Port of the Web UI of ``temporal server start-dev``, used when no UI URL is configured."""


class RunNotFoundError(LookupError):
    """No workflow has the given run id."""

    def __init__(self, run_id: str) -> None:
        """Remember the id that was looked for.

        Args:
            run_id: The unknown run id.
        """
        super().__init__(f"no run named {run_id}")
        self.run_id = run_id


class RunAlreadyRunningError(RuntimeError):
    """A training workflow with this run id is running already."""

    def __init__(self, run_id: str) -> None:
        """Remember the run that is in the way.

        Args:
            run_id: The running run's id.
        """
        super().__init__(f"run {run_id} is already running; watch it with `durabert watch {run_id}`")
        self.run_id = run_id


class RunNotRunningError(RuntimeError):
    """The run has closed, so there is nothing to cancel."""


@dataclass
class RunStatus:
    """A training run as ``durabert status`` shows it."""

    run_id: str
    """The run (and workflow) id."""
    status: str
    """Lowercase Temporal status: ``running``, ``completed``, ``failed``, ``canceled``, ..."""
    workflow_type: str
    """Temporal workflow type name."""
    start_time: datetime | None = None
    """When the workflow started."""
    close_time: datetime | None = None
    """When it closed, if it has."""
    progress: TrainingProgress | None = None
    """Answer of ``get_progress`` (None when no worker answered)."""
    result: BertFineTuneResult | None = None
    """The result, when completed."""
    error: str | None = None
    """Why it did not complete, when it failed, was cancelled, terminated or timed out."""

    def to_json(self) -> dict[str, Any]:
        """Render for ``--json`` output.

        Returns:
            A JSON-serialisable dict.
        """
        return {
            "run_id": self.run_id,
            "status": self.status,
            "workflow_type": self.workflow_type,
            "start_time": self.start_time.isoformat() if self.start_time else None,
            "close_time": self.close_time.isoformat() if self.close_time else None,
            "progress": self.progress.model_dump(mode="json") if self.progress else None,
            "result": self.result.model_dump(mode="json") if self.result else None,
            "error": self.error,
        }


@dataclass
class WatchOutcome:
    """How watching a run ended."""

    detached: bool
    """True when the watcher left (Ctrl-C) while the run went on."""
    status: str = "running"
    """Final lowercase status (``running`` when detached)."""
    result: BertFineTuneResult | None = None
    """The result when the run completed."""
    error: str | None = None
    """Why it did not complete, otherwise."""
    progress: TrainingProgress | None = field(default=None)
    """Last progress seen."""


def status_name(status: WorkflowExecutionStatus | None) -> str:
    """Name a workflow status the way the CLI prints it.

    Args:
        status: The SDK's status (None when the server sent none).

    Returns:
        ``running``, ``completed``, ``failed``, ``canceled``, ``terminated``, ``timed_out``, ...
    """
    return status.name.lower() if status is not None else "unknown"


def failure_message(error: BaseException) -> str:
    """Find the most telling message in a Temporal failure chain.

    A workflow failure wraps an activity error wrapping the worker's ``ApplicationError``;
    the innermost message is the one that names the bad field or the real cause.

    Args:
        error: Usually a ``WorkflowFailureError``.

    Returns:
        The innermost non-empty message, prefixed with the error type when it has one.
    """
    best = str(error)
    node: BaseException | None = error.__cause__
    while node is not None:
        text = node.message if isinstance(node, ApplicationError) else str(node)
        if text:
            best = f"{node.type}: {text}" if isinstance(node, ApplicationError) and node.type else text
        node = node.__cause__
    return best


def web_ui_url(settings: DurabertSettings, workflow_id: str) -> str:
    """Link to a workflow in the Temporal Web UI.

    Args:
        settings: durabert settings (``temporal.ui_url``, address and namespace).
        workflow_id: The workflow to link to.

    Returns:
        ``<ui>/namespaces/<namespace>/workflows/<id>``.
    """
    temporal = settings.temporal
    base = temporal.ui_url or f"http://{temporal.address.rpartition(':')[0]}:{DEV_SERVER_UI_PORT}"
    return f"{base.rstrip('/')}/namespaces/{temporal.namespace}/workflows/{workflow_id}"


def _not_found(error: RPCError) -> bool:
    return error.status == RPCStatusCode.NOT_FOUND


async def start_training(
    client: Client, settings: DurabertSettings, config: BertFineTuneConfig
) -> WorkflowHandle[Any, BertFineTuneResult]:
    """Start a training workflow whose id is the config's run id.

    Args:
        client: A connected client.
        settings: durabert settings (orchestrator queue, activity queues for the memo).
        config: The validated config, ``run_id`` set.

    Returns:
        The new workflow's handle.

    Raises:
        RunAlreadyRunningError: A workflow with this id is running.
    """
    assert config.run_id is not None, "load_config always settles the run id"
    try:
        handle: WorkflowHandle[Any, BertFineTuneResult] = await client.start_workflow(
            names.TRAINING_WORKFLOW,
            config,
            id=config.run_id,
            task_queue=settings.queues.orchestrator,
            result_type=BertFineTuneResult,
            # FAIL: a second start must never attach to (or replace) a run in progress.
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            # ALLOW_DUPLICATE: a finished run id may be trained again; it resumes nothing.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            memo=settings.queue_memo(),
        )
    except WorkflowAlreadyStartedError:
        raise RunAlreadyRunningError(config.run_id) from None
    return handle


def training_handle(client: Client, run_id: str) -> WorkflowHandle[Any, BertFineTuneResult]:
    """Get the handle of a training run (its workflow id is the run id).

    Args:
        client: A connected client.
        run_id: The run id.

    Returns:
        A handle on the latest execution with that id.
    """
    return client.get_workflow_handle(run_id, result_type=BertFineTuneResult)


async def query_progress(
    handle: WorkflowHandle[Any, Any], timeout: timedelta | None = None
) -> TrainingProgress | None:
    """Ask a training workflow for its progress.

    Args:
        handle: The run's handle.
        timeout: How long to wait for a worker to answer (:data:`QUERY_TIMEOUT` when None).

    Returns:
        The progress, or None when no worker answered in time.

    Raises:
        RunNotFoundError: The workflow does not exist.
    """
    try:
        progress: TrainingProgress = await handle.query(
            names.GET_PROGRESS_QUERY, result_type=TrainingProgress, rpc_timeout=timeout or QUERY_TIMEOUT
        )
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFoundError(handle.id) from None
        return None
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None
    return progress


async def describe_run(client: Client, run_id: str, *, with_progress: bool = True) -> RunStatus:
    """Gather a run's status, and its progress, result or failure.

    Args:
        client: A connected client.
        run_id: The run id.
        with_progress: Also query progress (needs an orchestrator worker; skipped on timeout).

    Returns:
        The run's status.

    Raises:
        RunNotFoundError: No workflow has this id.
    """
    handle = training_handle(client, run_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFoundError(run_id) from None
        raise
    state = RunStatus(
        run_id=run_id,
        status=status_name(description.status),
        workflow_type=description.workflow_type,
        start_time=description.start_time,
        close_time=description.close_time,
    )
    if description.workflow_type != names.TRAINING_WORKFLOW:
        return state
    if with_progress:
        state.progress = await query_progress(handle)
    if description.status == WorkflowExecutionStatus.COMPLETED:
        state.result = await handle.result()
    elif description.status not in (WorkflowExecutionStatus.RUNNING, None):
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            state.error = failure_message(exc)
    return state


async def watch_run(
    handle: WorkflowHandle[Any, BertFineTuneResult],
    view: ProgressView,
    *,
    interval: float,
    detach: asyncio.Event,
) -> WatchOutcome:
    """Show a run's progress until it closes or the watcher detaches.

    The result is awaited by a long poll next to the progress queries, so the end of the
    run is noticed at once, not at the next poll.

    Args:
        handle: The run's handle.
        view: Where progress is shown.
        interval: Seconds between progress queries.
        detach: Set (by Ctrl-C) to stop watching; the run is not touched.

    Returns:
        How watching ended.

    Raises:
        RunNotFoundError: The workflow does not exist.
    """
    result_task = asyncio.ensure_future(handle.result())
    detach_task = asyncio.ensure_future(detach.wait())
    outcome = WatchOutcome(detached=False)
    try:
        with view:
            while True:
                # A query can wait seconds for a worker; Ctrl-C must not wait for it.
                query_task = asyncio.ensure_future(query_progress(handle))
                await asyncio.wait({query_task, detach_task}, return_when=asyncio.FIRST_COMPLETED)
                if not query_task.done():
                    query_task.cancel()
                    outcome.detached = True
                    return outcome
                outcome.progress = query_task.result() or outcome.progress
                view.update(outcome.progress)
                done, _ = await asyncio.wait(
                    {result_task, detach_task}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                )
                if result_task in done:
                    break
                if detach_task in done:
                    outcome.detached = True
                    return outcome
            # One last answer so the bar ends on the final step, not the last poll's.
            outcome.progress = await query_progress(handle) or outcome.progress
            view.update(outcome.progress)
    finally:
        for task in (result_task, detach_task):
            task.cancel()
    try:
        outcome.result = result_task.result()
        outcome.status = "completed"
    except WorkflowFailureError as exc:
        outcome.error = failure_message(exc)
        outcome.status = status_name((await handle.describe()).status)
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFoundError(handle.id) from None
        raise
    return outcome


async def cancel_run(client: Client, run_id: str, *, wait: bool) -> str:
    """Request cancellation of a running training run.

    Args:
        client: A connected client.
        run_id: The run id.
        wait: Wait until the workflow has closed (the GPU work has stopped).

    Returns:
        The status after the request: ``running`` (cancel requested) or the final one.

    Raises:
        RunNotFoundError: No workflow has this id.
        RunNotRunningError: The run has already closed.
    """
    handle = training_handle(client, run_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFoundError(run_id) from None
        raise
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise RunNotRunningError(
            f"run {run_id} is already {status_name(description.status)}; nothing to cancel"
        )
    await handle.cancel()
    if not wait:
        return "running"
    with contextlib.suppress(WorkflowFailureError):  # the expected end of a cancelled run
        await handle.result()
    return status_name((await handle.describe()).status)


@dataclass
class RunSummary:
    """One line of ``durabert runs``."""

    run_id: str
    """The run (and workflow) id."""
    status: str
    """Lowercase Temporal status."""
    start_time: datetime
    """When it started."""
    close_time: datetime | None
    """When it closed, if it has."""

    def to_json(self) -> dict[str, Any]:
        """Render for ``--json`` output.

        Returns:
            A JSON-serialisable dict.
        """
        return {
            "run_id": self.run_id,
            "status": self.status,
            "start_time": self.start_time.isoformat(),
            "close_time": self.close_time.isoformat() if self.close_time else None,
        }


async def list_runs(client: Client, limit: int) -> list[RunSummary]:
    """List the most recent training runs, newest first.

    Args:
        client: A connected client.
        limit: Most runs to return.

    Returns:
        The runs.
    """
    query = f"WorkflowType='{names.TRAINING_WORKFLOW}'"
    return [
        RunSummary(
            run_id=execution.id,
            status=status_name(execution.status),
            start_time=execution.start_time,
            close_time=execution.close_time,
        )
        async for execution in client.list_workflows(query, limit=limit)
    ]


async def run_inference(
    client: Client, settings: DurabertSettings, request: BertInferenceRequest
) -> BertInferenceResult:
    """Run the inference workflow and wait for its predictions.

    Args:
        client: A connected client.
        settings: durabert settings (orchestrator queue, GPU queue for the memo).
        request: The validated request.

    Returns:
        The predictions.

    Raises:
        WorkflowFailureError: The inference failed (unknown run, bad model, ...).
    """
    result: BertInferenceResult = await client.execute_workflow(
        names.INFERENCE_WORKFLOW,
        request,
        id=inference_workflow_id(request.run_id),
        task_queue=settings.queues.orchestrator,
        result_type=BertInferenceResult,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        memo=settings.queue_memo(),
    )
    return result
