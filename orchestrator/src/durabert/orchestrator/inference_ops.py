"""Sending one online inference request and explaining its failure (``durabert infer`` and the demo).

Two routes, chosen by ``DURABERT_INFERENCE__ROUTE``:

- ``activity`` (default): the client starts ``run_bert_inference`` itself on the inference queue, a
  standalone activity (Temporal Server 1.31 or newer). No workflow task runs and no orchestrator
  worker is involved: measured on the 2-core test machine, twice the requests per second of a
  workflow per request at 20 concurrent clients (docs/benchmarks.md).
- ``workflow``: a ``BertInferenceWorkflow`` per request, for servers without standalone activities.

Either way the request waits at most ``queue_timeout_seconds`` for a GPU worker to take it (the
activity's schedule-to-start timeout) and ``timeout_seconds`` for the answer once taken, and a
failure comes back as :class:`InferenceFailedError` with a message that says what to check.
"""

from datetime import timedelta

from temporalio.client import ActivityFailureError, Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import TimeoutError, TimeoutType
from temporalio.service import RPCError, RPCStatusCode

from durabert.orchestrator.client_ops import failure_chain, failure_message
from durabert.orchestrator.run_ids import inference_workflow_id
from durabert.orchestrator.workflows import inference_retry_policy
from durabert.shared import names
from durabert.shared.models import BertInferenceRequest, BertInferenceResult
from durabert.shared.settings import DurabertSettings


class InferenceFailedError(Exception):
    """An inference request failed; the message says why and what to check."""


async def run_inference(
    client: Client, settings: DurabertSettings, request: BertInferenceRequest
) -> BertInferenceResult:
    """Send one inference request by the configured route and wait for its predictions.

    Args:
        client: A connected client.
        settings: durabert settings (route, queues).
        request: The validated request (its timeouts bound the wait); a request that does not set
            ``queue_timeout_seconds`` gets ``DURABERT_INFERENCE__QUEUE_TIMEOUT_SECONDS``.

    Returns:
        The predictions.

    Raises:
        InferenceFailedError: No GPU worker took the request in time, it timed out, or it failed
            (unknown run, bad model, ...); the message names the cause.
    """
    if "queue_timeout_seconds" not in request.model_fields_set:
        wait = settings.inference.queue_timeout_seconds
        request = request.model_copy(update={"queue_timeout_seconds": wait})
    try:
        if settings.inference.route == "activity":
            return await _by_activity(client, settings, request)
        return await _by_workflow(client, settings, request)
    except (ActivityFailureError, WorkflowFailureError) as exc:
        raise InferenceFailedError(explain_failure(exc, settings, request)) from exc
    except RPCError as exc:
        if settings.inference.route == "activity" and exc.status == RPCStatusCode.UNIMPLEMENTED:
            raise InferenceFailedError(
                "this Temporal server cannot start standalone activities (Temporal Server 1.31 or newer "
                "can): set DURABERT_INFERENCE__ROUTE=workflow to send requests through a workflow"
            ) from exc
        raise


async def _by_activity(
    client: Client, settings: DurabertSettings, request: BertInferenceRequest
) -> BertInferenceResult:
    result: BertInferenceResult = await client.execute_activity(
        names.RUN_BERT_INFERENCE,
        request,
        id=inference_workflow_id(request.run_id),
        task_queue=settings.queues.inference,
        result_type=BertInferenceResult,
        schedule_to_start_timeout=timedelta(seconds=request.queue_timeout_seconds),
        start_to_close_timeout=timedelta(seconds=request.timeout_seconds),
        retry_policy=inference_retry_policy(),
    )
    return result


async def _by_workflow(
    client: Client, settings: DurabertSettings, request: BertInferenceRequest
) -> BertInferenceResult:
    result: BertInferenceResult = await client.execute_workflow(
        names.INFERENCE_WORKFLOW,
        request,
        id=inference_workflow_id(request.run_id),
        task_queue=settings.queues.orchestrator,
        result_type=BertInferenceResult,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        memo=settings.queue_memo(),
        # Nothing else bounds the wait for an orchestrator worker to run the workflow at all.
        execution_timeout=timedelta(seconds=workflow_timeout_seconds(request)),
    )
    return result


def workflow_timeout_seconds(request: BertInferenceRequest) -> float:
    """Most time the inference workflow may run: a wait in each queue, then one answer.

    Args:
        request: The request.

    Returns:
        Seconds.
    """
    return 2 * request.queue_timeout_seconds + request.timeout_seconds


def explain_failure(
    error: ActivityFailureError | WorkflowFailureError,
    settings: DurabertSettings,
    request: BertInferenceRequest,
) -> str:
    """Say why an inference request failed, naming the queue, setting or worker to check.

    Args:
        error: The client's failure.
        settings: durabert settings (queue names for the message).
        request: The request (its timeouts for the message).

    Returns:
        One message for people.
    """
    if isinstance(error, WorkflowFailureError) and isinstance(error.cause, TimeoutError):
        # The workflow's own timeout: it never got as far as timing an activity.
        return (
            f"the inference workflow did not finish within {workflow_timeout_seconds(request):g} s: "
            f"is an orchestrator worker polling task queue {settings.queues.orchestrator!r}?"
        )
    timeouts = [node.type for node in failure_chain(error) if isinstance(node, TimeoutError)]
    if TimeoutType.SCHEDULE_TO_START in timeouts:
        return (
            f"no GPU worker took the request from task queue {settings.queues.inference!r} within "
            f"{request.queue_timeout_seconds:g} s: is a GPU worker running and polling that queue? "
            "(DURABERT_QUEUES__INFERENCE names it; DURABERT_INFERENCE__QUEUE_TIMEOUT_SECONDS waits longer)"
        )
    if TimeoutType.START_TO_CLOSE in timeouts:
        return (
            f"a GPU worker took the request but gave no answer within timeout_seconds="
            f"{request.timeout_seconds} s, on every try"
        )
    return failure_message(error)
