"""What a client asks of Temporal: start, describe, follow, cancel, list, infer.

The ``durabert`` CLI and ``make demo`` are two clients of these functions. Workflows are
addressed by their type *names* from :mod:`durabert.shared.names`, never by importing the
workflow classes, so a client stays a thin, ML-free process. These functions return data;
:mod:`durabert.orchestrator.progress` and :mod:`durabert.orchestrator.cli` decide how to show it.

Progress has two sources. The training workflow's ``get_progress`` query gives the durable
view (stage, attempts, preemptions, failures, the newest checkpoint as of the last attempt
end): the workflow receives no per-step signals, which keeps its history bounded. The live
figures (step, loss, phase, newest checkpoint) are the heartbeat details of the pending
``fine_tune_bert`` activity, read with ``describe``: they cost no history and need no
orchestrator worker. :func:`live_progress` merges the two.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from durabert.shared import names
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneResult,
    TrainingHeartbeat,
    TrainingProgress,
)
from durabert.shared.settings import DurabertSettings

QUERY_TIMEOUT = timedelta(seconds=5)
"""How long one progress query may wait: with no worker polling, Temporal would hold it long."""

DEV_SERVER_UI_PORT = 8233
"""Port of the Web UI of ``temporal server start-dev``, used when no UI URL is configured."""

TEMPORAL_CLOUD_DOMAIN = ".tmprl.cloud"
"""Frontend addresses of Temporal Cloud end with this."""
TEMPORAL_CLOUD_UI = "https://cloud.temporal.io"
"""Web UI of Temporal Cloud (workflows under ``/namespaces/<namespace>/workflows/<id>``)."""


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


def run_id_ways_on(run_id: str) -> str:
    """Say how to go on when a run id already names an earlier run.

    Args:
        run_id: The refused run id.

    Returns:
        One sentence naming both ways: a new run id, or ``--continue`` (``continue_run``).
    """
    return (
        "start a new run with another --run-id (or none, for a fresh id), or extend the earlier "
        f"run with `durabert train CONFIG --run-id {run_id} --continue` (continue_run: true), "
        "e.g. to a larger max_steps"
    )


class RunIdInUseError(RuntimeError):
    """The run id names an earlier, closed run and ``continue_run`` was not asked for.

    The client refuses this itself when Temporal still remembers the earlier execution; the
    workflow's ``claim_run`` activity refuses it with the same error type when only the run's
    artifacts remain.
    """

    def __init__(self, run_id: str, status: str) -> None:
        """Remember the run id and how its earlier run ended.

        Args:
            run_id: The refused run id.
            status: Lowercase status of the earlier execution (``completed``, ``failed``, ...).
        """
        super().__init__(
            f"run_id {run_id} is in use: an earlier run with this id is {status}, and starting it "
            f"again would resume or overwrite it. Either {run_id_ways_on(run_id)}."
        )
        self.run_id = run_id
        self.status = status


class RunNotRunningError(RuntimeError):
    """The run has closed, so there is nothing to cancel."""


@dataclass(frozen=True)
class LiveProgress:
    """A training run's progress as of now: the workflow's view merged with the live heartbeat."""

    progress: TrainingProgress | None
    """The merged progress; None when the workflow did not answer and no attempt is running."""
    answered: bool
    """Whether the workflow answered ``get_progress`` (False: no orchestrator worker in time)."""
    live: bool
    """Whether a running attempt's heartbeat was merged in."""
    device: str | None = None
    """Device the running attempt trains on (its heartbeat's), so a CPU fallback shows; None when
    no attempt runs or it has not said yet."""


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
    live: LiveProgress | None = None
    """Progress, when it is a training run (see :func:`live_progress`)."""
    result: BertFineTuneResult | None = None
    """The result, when completed."""
    error: str | None = None
    """Why it did not complete, when it failed, was cancelled, terminated or timed out."""
    error_type: str | None = None
    """Type of the innermost application error, e.g. ``RunIdInUseError``."""

    @property
    def device(self) -> str | None:
        """The device the run trains on: the running attempt's, else the result's; None if unknown."""
        if self.live is not None and self.live.device is not None:
            return self.live.device
        return self.result.device if self.result is not None else None

    def to_json(self) -> dict[str, Any]:
        """Render for ``--json`` output.

        Returns:
            A JSON-serialisable dict.
        """
        progress = self.live.progress if self.live else None
        return {
            "run_id": self.run_id,
            "status": self.status,
            "workflow_type": self.workflow_type,
            "start_time": self.start_time.isoformat() if self.start_time else None,
            "close_time": self.close_time.isoformat() if self.close_time else None,
            "progress": progress.model_dump(mode="json") if progress else None,
            "workflow_answered": self.live.answered if self.live else None,
            "device": self.device,
            "result": self.result.model_dump(mode="json") if self.result else None,
            "error": self.error,
            "error_type": self.error_type,
        }


@dataclass
class WatchOutcome:
    """How following a run ended."""

    detached: bool
    """True when the watcher left (Ctrl-C) while the run went on."""
    status: str = "running"
    """Final lowercase status (``running`` when detached)."""
    result: BertFineTuneResult | None = None
    """The result when the run completed."""
    error: str | None = None
    """Why it did not complete, otherwise."""
    error_type: str | None = None
    """Type of the innermost application error, e.g. ``RunIdInUseError``."""
    progress: TrainingProgress | None = None
    """Last progress seen."""


def status_name(status: WorkflowExecutionStatus | None) -> str:
    """Name a workflow status the way the CLI prints it.

    Args:
        status: The SDK's status (None when the server sent none).

    Returns:
        ``running``, ``completed``, ``failed``, ``canceled``, ``terminated``, ``timed_out``, ...
    """
    return status.name.lower() if status is not None else "unknown"


def failure_chain(error: BaseException) -> list[BaseException]:
    """The causes of a Temporal error, outermost first (the error itself excluded)."""
    chain = []
    node: BaseException | None = error.__cause__
    while node is not None:
        chain.append(node)
        node = node.__cause__
    return chain


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
    for node in failure_chain(error):
        text = node.message if isinstance(node, ApplicationError) else str(node)
        if text:
            best = f"{node.type}: {text}" if isinstance(node, ApplicationError) and node.type else text
    return best


def failure_type(error: BaseException) -> str | None:
    """Find the type of the innermost application error in a Temporal failure chain.

    Args:
        error: Usually a ``WorkflowFailureError``.

    Returns:
        The type (an ``ErrorType`` value such as ``RunIdInUseError``), or None when none has one.
    """
    types = [node.type for node in failure_chain(error) if isinstance(node, ApplicationError) and node.type]
    return types[-1] if types else None


def web_ui_url(settings: DurabertSettings, workflow_id: str) -> str:
    """Link to a workflow in the Temporal Web UI.

    Args:
        settings: durabert settings (``temporal.ui_url``, address and namespace). Without a UI
            URL: Temporal Cloud's UI for a ``*.tmprl.cloud`` address, else the dev server's
            ``http://<address host>:8233``.
        workflow_id: The workflow to link to.

    Returns:
        ``<ui>/namespaces/<namespace>/workflows/<id>``.
    """
    temporal = settings.temporal
    host = temporal.address.rpartition(":")[0]
    if temporal.ui_url:
        base = temporal.ui_url
    elif host.endswith(TEMPORAL_CLOUD_DOMAIN):
        base = TEMPORAL_CLOUD_UI  # Cloud serves no UI on the frontend's host
    else:
        base = f"http://{host}:{DEV_SERVER_UI_PORT}"
    return f"{base.rstrip('/')}/namespaces/{temporal.namespace}/workflows/{workflow_id}"


def _not_found(error: RPCError) -> bool:
    return error.status == RPCStatusCode.NOT_FOUND


ACCESS_DENIED = frozenset({RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED})
"""Statuses meaning the server refused these credentials (API key, client certificate, namespace)."""
CONNECTION_LOST = frozenset({RPCStatusCode.UNAVAILABLE})
"""Status meaning the server could not be reached (any more) during a command."""


def _not_a_missing_answer(error: RPCError) -> bool:
    """Whether a failed query says more than "no worker answered in time" and must be reported."""
    return error.status in ACCESS_DENIED or error.status in CONNECTION_LOST


async def start_training(
    client: Client, settings: DurabertSettings, config: BertFineTuneConfig
) -> WorkflowHandle[Any, BertFineTuneResult]:
    """Start a training workflow whose id is the config's run id.

    Args:
        client: A connected client.
        settings: durabert settings (orchestrator queue, activity queues for the memo).
        config: The validated config, ``run_id`` set; ``continue_run`` allows an id whose
            earlier run has closed.

    Returns:
        The new workflow's handle.

    Raises:
        RunAlreadyRunningError: A workflow with this id is running.
        RunIdInUseError: An earlier, closed workflow has this id and ``continue_run`` is off.
    """
    assert config.run_id is not None, "load_config always settles the run id"
    # REJECT_DUPLICATE lets the server refuse a closed run's id atomically (no describe-then-
    # start race); the workflow's claim_run refuses it again once Temporal has forgotten it.
    reuse = (
        WorkflowIDReusePolicy.ALLOW_DUPLICATE
        if config.continue_run
        else WorkflowIDReusePolicy.REJECT_DUPLICATE
    )
    try:
        handle: WorkflowHandle[Any, BertFineTuneResult] = await client.start_workflow(
            names.TRAINING_WORKFLOW,
            config,
            id=config.run_id,
            task_queue=settings.queues.orchestrator,
            result_type=BertFineTuneResult,
            # FAIL: a second start must never attach to (or replace) a run in progress.
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=reuse,
            memo=settings.queue_memo(),
        )
    except WorkflowAlreadyStartedError:
        raise await _start_refusal(client, config.run_id) from None
    return handle


async def _start_refusal(client: Client, run_id: str) -> Exception:
    """Tell a running run from a closed one after the server refused a start."""
    try:
        description = await training_handle(client, run_id).describe()
    except RPCError:
        return RunIdInUseError(run_id, "unknown")
    if description.status == WorkflowExecutionStatus.RUNNING:
        return RunAlreadyRunningError(run_id)
    return RunIdInUseError(run_id, status_name(description.status))


def training_handle(client: Client, run_id: str) -> WorkflowHandle[Any, BertFineTuneResult]:
    """Get the handle of a training run (its workflow id is the run id).

    Args:
        client: A connected client.
        run_id: The run id.

    Returns:
        A handle on the latest execution with that id (it follows continue-as-new).
    """
    return client.get_workflow_handle(run_id, result_type=BertFineTuneResult)


async def _describe(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription:
    try:
        return await handle.describe()
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFoundError(handle.id) from None
        raise


async def query_progress(
    handle: WorkflowHandle[Any, Any], timeout: timedelta | None = None
) -> TrainingProgress | None:
    """Ask a training workflow for its durable progress (no live step: see :func:`live_progress`).

    Args:
        handle: The run's handle.
        timeout: How long to wait for a worker to answer (:data:`QUERY_TIMEOUT` when None).

    Returns:
        The progress, or None when no worker answered in time.

    Raises:
        RunNotFoundError: The workflow does not exist.
        RPCError: Permission refused or connection lost (never passed off as "no worker").
    """
    try:
        progress: TrainingProgress = await handle.query(
            names.GET_PROGRESS_QUERY, result_type=TrainingProgress, rpc_timeout=timeout or QUERY_TIMEOUT
        )
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFoundError(handle.id) from None
        if _not_a_missing_answer(exc):
            raise
        return None
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None
    return progress


async def running_attempt(
    client: Client, description: WorkflowExecutionDescription
) -> TrainingHeartbeat | None:
    """Read the latest heartbeat of a run's pending fine-tuning activity.

    Args:
        client: The client whose data converter decodes the payloads (codecs included).
        description: The run's ``describe`` answer.

    Returns:
        The heartbeat, or None when no attempt is running or it has not heartbeated yet.
    """
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name != names.FINE_TUNE_BERT or not pending.heartbeat_details.payloads:
            continue
        values = await client.data_converter.decode(pending.heartbeat_details.payloads)
        try:
            return TrainingHeartbeat.model_validate(values[0])
        except ValidationError:
            # A worker of another contract version: its figures are unreadable here, and the
            # workflow's durable view still shows; progress must never crash the client.
            return None
    return None


def merge_progress(
    run_id: str, answer: TrainingProgress | None, heartbeat: TrainingHeartbeat | None
) -> LiveProgress:
    """Merge the workflow's answer with the running attempt's heartbeat.

    Args:
        run_id: The run id (named in a progress built from the heartbeat alone).
        answer: The ``get_progress`` answer, None when no worker answered.
        heartbeat: The pending activity's heartbeat, None when there is none.

    Returns:
        The merged progress; with no answer it is built from the heartbeat alone.
    """
    if heartbeat is None:
        return LiveProgress(progress=answer, answered=answer is not None, live=False)
    base = answer or TrainingProgress(run_id=run_id, stage="training", attempt=heartbeat.attempt)
    return LiveProgress(
        progress=base.with_heartbeat(heartbeat),
        answered=answer is not None,
        live=True,
        device=heartbeat.device,
    )


async def _live_from(
    client: Client, handle: WorkflowHandle[Any, Any], description: WorkflowExecutionDescription
) -> LiveProgress:
    heartbeat = await running_attempt(client, description)
    return merge_progress(handle.id, await query_progress(handle), heartbeat)


async def live_progress(client: Client, run_id: str) -> LiveProgress:
    """Read a training run's progress as of now: durable view plus live heartbeat.

    Works on closed runs (no attempt is pending: the durable view alone), and without an
    orchestrator worker (the query times out after :data:`QUERY_TIMEOUT`; the heartbeat,
    read with ``describe``, still gives step, loss and phase).

    Args:
        client: A connected client.
        run_id: The run id.

    Returns:
        The merged progress.

    Raises:
        RunNotFoundError: No workflow has this id.
    """
    handle = training_handle(client, run_id)
    return await _live_from(client, handle, await _describe(handle))


async def describe_run(client: Client, run_id: str) -> RunStatus:
    """Gather a run's status, and its progress, result or failure.

    Args:
        client: A connected client.
        run_id: The run id.

    Returns:
        The run's status.

    Raises:
        RunNotFoundError: No workflow has this id.
    """
    handle = training_handle(client, run_id)
    description = await _describe(handle)
    state = RunStatus(
        run_id=run_id,
        status=status_name(description.status),
        workflow_type=description.workflow_type,
        start_time=description.start_time,
        close_time=description.close_time,
    )
    if description.workflow_type != names.TRAINING_WORKFLOW:
        return state
    state.live = await _live_from(client, handle, description)
    if description.status == WorkflowExecutionStatus.COMPLETED:
        state.result = await handle.result()
    elif description.status not in (WorkflowExecutionStatus.RUNNING, None):
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            state.error, state.error_type = failure_message(exc), failure_type(exc)
    return state


async def _next_reading(
    client: Client, run_id: str, detach_task: "asyncio.Future[Any]"
) -> LiveProgress | None:
    """Read progress once; None when the watcher detached first (a read can wait seconds)."""
    reading_task = asyncio.ensure_future(live_progress(client, run_id))
    await asyncio.wait({reading_task, detach_task}, return_when=asyncio.FIRST_COMPLETED)
    if not reading_task.done():
        reading_task.cancel()
        return None
    return reading_task.result()


async def _settle(
    handle: WorkflowHandle[Any, BertFineTuneResult],
    result_task: "asyncio.Future[BertFineTuneResult]",
    outcome: WatchOutcome,
) -> WatchOutcome:
    """Fill in how a closed run ended."""
    try:
        outcome.result = result_task.result()
        outcome.status = "completed"
    except WorkflowFailureError as exc:
        outcome.error, outcome.error_type = failure_message(exc), failure_type(exc)
        outcome.status = status_name((await handle.describe()).status)
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFoundError(handle.id) from None
        raise
    return outcome


async def watch_run(
    client: Client,
    run_id: str,
    *,
    interval: float,
    detach: asyncio.Event,
    on_progress: Callable[[LiveProgress], None],
) -> WatchOutcome:
    """Follow a run, handing each progress reading to ``on_progress``, until it closes.

    The result is awaited by a long poll next to the progress reads, so the end of the run
    is noticed at once, not at the next poll.

    Args:
        client: A connected client.
        run_id: The run id.
        interval: Seconds between progress reads.
        detach: Set (by Ctrl-C) to stop following; the run is not touched.
        on_progress: Called with every reading (the last known progress kept when a read
            finds none), the final one included.

    Returns:
        How following ended.

    Raises:
        RunNotFoundError: The workflow does not exist.
    """
    handle = training_handle(client, run_id)
    result_task = asyncio.ensure_future(handle.result())
    detach_task = asyncio.ensure_future(detach.wait())
    outcome = WatchOutcome(detached=False)
    try:
        outcome.detached = await _follow(
            client, run_id, interval, (result_task, detach_task), on_progress, outcome
        )
    finally:
        for task in (result_task, detach_task):
            task.cancel()  # a no-op on a finished result
    return outcome if outcome.detached else await _settle(handle, result_task, outcome)


async def _follow(
    client: Client,
    run_id: str,
    interval: float,
    tasks: "tuple[asyncio.Future[BertFineTuneResult], asyncio.Future[Any]]",
    on_progress: Callable[[LiveProgress], None],
    outcome: WatchOutcome,
) -> bool:
    """Read and hand on progress until the run closes (False) or the watcher detaches (True)."""
    result_task, detach_task = tasks
    while True:
        finished = result_task.done()
        reading = await _next_reading(client, run_id, detach_task)
        if reading is None:
            return True
        outcome.progress = reading.progress or outcome.progress
        on_progress(replace(reading, progress=outcome.progress))
        if finished:
            return False  # this reading began after the run closed: it shows the final step
        await asyncio.wait(set(tasks), timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        if detach_task.done() and not result_task.done():
            return True


@dataclass
class CancelOutcome:
    """What a cancellation request came to."""

    status: str
    """``running`` (requested, not waited for) or the run's final lowercase status; only
    ``canceled`` means the cancellation took effect: a run may complete or fail first."""
    error: str | None = None
    """Why the run failed, when it ended failed (or timed out, terminated) instead."""


async def cancel_run(client: Client, run_id: str, *, wait: bool) -> CancelOutcome:
    """Request cancellation of a running training run.

    Args:
        client: A connected client.
        run_id: The run id.
        wait: Wait until the workflow has closed (the GPU work has stopped).

    Returns:
        The status after the request (``running`` when not waiting), and the error of a run that
        ended otherwise than cancelled.

    Raises:
        RunNotFoundError: No workflow has this id.
        RunNotRunningError: The run has already closed.
    """
    handle = training_handle(client, run_id)
    description = await _describe(handle)
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise RunNotRunningError(
            f"run {run_id} is already {status_name(description.status)}; nothing to cancel"
        )
    await handle.cancel()
    if not wait:
        return CancelOutcome(status="running")
    error: str | None = None
    try:
        await handle.result()
    except WorkflowFailureError as exc:
        error = failure_message(exc)
    # The closing event decides: a request is only a request, and the run may have completed or
    # failed before the workflow saw it.
    status = status_name((await handle.describe()).status)
    return CancelOutcome(status=status, error=None if status == "canceled" else error)


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
