"""What ``durabert predict`` asks of Temporal and the artifact store: start, follow, fetch the output.

Batch scoring runs as a ``BertBatchInferenceWorkflow`` whose id is ``predict-<run_id>-<8 hex>``
(the run id itself names the training workflow). Progress has the training run's two sources:
the workflow's ``get_progress`` query (stage, snapshot, result) and the pending ``score_dataset``
activity's heartbeat (chunks and rows done), read with ``describe``. These functions return data;
:mod:`~durabert.orchestrator.progress` shows it and :mod:`~durabert.orchestrator.cli` prints.
"""

import asyncio
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from durabert.orchestrator.client_ops import (
    QUERY_TIMEOUT,
    RunNotFoundError,
    failure_message,
    failure_type,
    status_name,
)
from durabert.shared import names
from durabert.shared.models import (
    BatchInferenceProgress,
    BertBatchInferenceRequest,
    BertBatchInferenceResult,
    ScoringHeartbeat,
)
from durabert.shared.object_store import open_object_store
from durabert.shared.settings import DurabertSettings


def batch_workflow_id(run_id: str, token: str | None = None) -> str:
    """Name one batch scoring's workflow: ``predict-<run_id>-<8 hex>``.

    Args:
        run_id: The run whose model scores.
        token: Eight hex digits; random when None, so two scorings never collide.

    Returns:
        The workflow id.
    """
    return f"predict-{run_id}-{token if token is not None else secrets.token_hex(4)}"


async def start_predict(
    client: Client, settings: DurabertSettings, request: BertBatchInferenceRequest
) -> WorkflowHandle[Any, BertBatchInferenceResult]:
    """Start a batch scoring workflow.

    Args:
        client: A connected client.
        settings: durabert settings (orchestrator queue; the activity queues go in the memo).
        request: The validated request.

    Returns:
        The new workflow's handle.
    """
    handle: WorkflowHandle[Any, BertBatchInferenceResult] = await client.start_workflow(
        names.BATCH_INFERENCE_WORKFLOW,
        request,
        id=batch_workflow_id(request.run_id),
        task_queue=settings.queues.orchestrator,
        result_type=BertBatchInferenceResult,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        memo=settings.queue_memo(),
    )
    return handle


async def is_batch_scoring(client: Client, workflow_id: str) -> bool:
    """Whether a workflow id names a batch scoring workflow (so ``durabert watch`` shows it as one).

    Args:
        client: A connected client.
        workflow_id: The id given to ``watch``.

    Returns:
        True for a ``BertBatchInferenceWorkflow``; False for any other type or an unknown id (the
        training path reports an unknown id itself).
    """
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return False
    return description.workflow_type == names.BATCH_INFERENCE_WORKFLOW


async def _heartbeat(handle: WorkflowHandle[Any, Any], client: Client) -> ScoringHeartbeat | None:
    try:
        description = await handle.describe()
    except RPCError:
        raise RunNotFoundError(handle.id) from None
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name != names.SCORE_DATASET or not pending.heartbeat_details.payloads:
            continue
        values = await client.data_converter.decode(pending.heartbeat_details.payloads)
        try:
            return ScoringHeartbeat.model_validate(values[0])
        except ValidationError:
            return None  # another contract version's figures: the durable view still shows
    return None


async def scoring_progress(client: Client, workflow_id: str) -> BatchInferenceProgress | None:
    """Read a batch scoring's progress: the workflow's view merged with the running attempt's heartbeat.

    Args:
        client: A connected client.
        workflow_id: The scoring workflow's id.

    Returns:
        The progress; None when the workflow did not answer and no attempt heartbeats.

    Raises:
        RunNotFoundError: No workflow has this id.
    """
    handle = client.get_workflow_handle(workflow_id)
    heartbeat = await _heartbeat(handle, client)
    try:
        answer: BatchInferenceProgress | None = await handle.query(
            names.GET_PROGRESS_QUERY, result_type=BatchInferenceProgress, rpc_timeout=QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        # No orchestrator worker answered in time: the heartbeat alone still shows.
        answer = None
    if heartbeat is None:
        return answer
    return (answer or BatchInferenceProgress(stage="scoring")).with_heartbeat(heartbeat)


@dataclass
class PredictOutcome:
    """How following a batch scoring ended."""

    detached: bool
    """True when the watcher left (Ctrl-C) while scoring went on."""
    status: str = "running"
    """Final lowercase status (``running`` when detached)."""
    result: BertBatchInferenceResult | None = None
    """The result, when it completed."""
    error: str | None = None
    """Why it did not complete, otherwise."""
    error_type: str | None = None
    """Type of the innermost application error (``ArtifactNotFoundError`` for an unknown run)."""


async def _settle(handle: WorkflowHandle[Any, BertBatchInferenceResult]) -> PredictOutcome:
    outcome = PredictOutcome(detached=False)
    try:
        outcome.result = await handle.result()
        outcome.status = "completed"
    except WorkflowFailureError as exc:
        outcome.error, outcome.error_type = failure_message(exc), failure_type(exc)
        outcome.status = status_name((await handle.describe()).status)
    return outcome


async def watch_predict(
    client: Client,
    workflow_id: str,
    *,
    interval: float,
    detach: asyncio.Event,
    on_progress: Callable[[BatchInferenceProgress | None], None],
) -> PredictOutcome:
    """Follow a batch scoring, handing each progress reading to ``on_progress``, until it closes.

    Args:
        client: A connected client.
        workflow_id: The scoring workflow's id.
        interval: Seconds between progress reads.
        detach: Set (by Ctrl-C) to stop following; scoring goes on.
        on_progress: Called with every reading (None while nothing answers).

    Returns:
        How following ended.

    Raises:
        RunNotFoundError: No workflow has this id.
    """
    handle = client.get_workflow_handle(workflow_id, result_type=BertBatchInferenceResult)
    result = asyncio.ensure_future(handle.result())
    stop = asyncio.ensure_future(detach.wait())
    try:
        while True:
            finished = result.done()
            on_progress(await scoring_progress(client, workflow_id))
            if finished:
                break
            await asyncio.wait({result, stop}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            if stop.done() and not result.done():
                return PredictOutcome(detached=True)
    finally:
        for task in (result, stop):
            task.cancel()
    return await _settle(handle)


def copy_output(settings: DurabertSettings, output_path: str, target: Path) -> Path:
    """Copy a finished scoring's Parquet from the artifact store to a local file.

    Args:
        settings: durabert settings (the artifact root: a folder, or an object-store URL).
        output_path: The result's ``output_path``, relative to the artifact root.
        target: The file to write (its folder is created).

    Returns:
        ``target``.

    Raises:
        FileNotFoundError: The output is not in the store (a root this client cannot see).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
    if objects is None:
        shutil.copyfile(settings.artifact_dir / output_path, target)
        return target
    data = objects.read_bytes(output_path)
    if data is None:
        raise FileNotFoundError(f"{objects.url_of(output_path)} does not exist")
    target.write_bytes(data)
    return target
