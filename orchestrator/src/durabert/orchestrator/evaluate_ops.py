"""What ``durabert eval`` asks of Temporal: read its config, start an evaluation, wait for its result.

An evaluation runs as a ``BertEvaluationWorkflow`` whose id is ``eval-<run_id>-<8 hex>`` (the run
id itself names the training workflow). :func:`evaluation_tables` is the table the CLI prints:
the summary and, per label, precision, recall, F1 and support, then the confusion matrix.
"""

import secrets
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from durabert.orchestrator.client_ops import failure_message, failure_type, status_name
from durabert.shared import names
from durabert.shared.models import BertEvaluationRequest, BertEvaluationResult
from durabert.shared.settings import DurabertSettings


def evaluation_workflow_id(run_id: str, token: str | None = None) -> str:
    """Name one evaluation's workflow: ``eval-<run_id>-<8 hex>``.

    Args:
        run_id: The run whose model is evaluated.
        token: Eight hex digits; random when None, so two evaluations never collide.

    Returns:
        The workflow id.
    """
    return f"eval-{run_id}-{token if token is not None else secrets.token_hex(4)}"


@dataclass
class EvaluationOutcome:
    """How an evaluation ended."""

    workflow_id: str
    """The evaluation workflow's id."""
    status: str
    """Final lowercase status."""
    result: BertEvaluationResult | None = None
    """The result, when it completed."""
    error: str | None = None
    """Why it did not complete, otherwise."""
    error_type: str | None = None
    """Type of the innermost application error (``ArtifactNotFoundError`` for an unknown run)."""


async def run_evaluation(
    client: Client, settings: DurabertSettings, request: BertEvaluationRequest
) -> EvaluationOutcome:
    """Start an evaluation workflow and wait until it closes.

    Args:
        client: A connected client.
        settings: durabert settings (orchestrator queue; the activity queues go in the memo).
        request: The validated request.

    Returns:
        The result, or why there is none.
    """
    handle: WorkflowHandle[Any, BertEvaluationResult] = await client.start_workflow(
        names.EVALUATION_WORKFLOW,
        request,
        id=evaluation_workflow_id(request.run_id),
        task_queue=settings.queues.orchestrator,
        result_type=BertEvaluationResult,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        memo=settings.queue_memo(),
    )
    try:
        return EvaluationOutcome(handle.id, "completed", result=await handle.result())
    except WorkflowFailureError as exc:
        status = status_name((await handle.describe()).status)
        return EvaluationOutcome(handle.id, status, error=failure_message(exc), error_type=failure_type(exc))


def _summary(result: BertEvaluationResult) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in (
        ("run id", result.run_id),
        ("snapshot", f"{result.snapshot_id} (split {result.split})"),
        ("rows", f"{result.num_samples:,}"),
        ("accuracy", f"{result.accuracy:.4f}"),
        ("macro F1", f"{result.macro_f1:.4f}"),
        ("device", result.device),
        ("report", f"{result.report_path} (under the artifact root)"),
    ):
        table.add_row(label, Text(value))
    return table


def _per_class(result: BertEvaluationResult) -> Table:
    table = Table("label", "precision", "recall", "F1", "support", title="per label")
    for metrics in result.per_class:
        table.add_row(
            Text(metrics.label),
            f"{metrics.precision:.4f}",
            f"{metrics.recall:.4f}",
            f"{metrics.f1:.4f}",
            f"{metrics.support:,}",
        )
    return table


def _confusion(result: BertEvaluationResult) -> Table:
    table = Table(title="confusion matrix (rows true, columns predicted)")
    table.add_column("true label")
    for name in result.label_names:
        table.add_column(Text(name), justify="right")  # a label name is text, never markup
    for name, row in zip(result.label_names, result.confusion_matrix, strict=True):
        table.add_row(Text(name), *(f"{count:,}" for count in row))
    return table


def evaluation_tables(result: BertEvaluationResult) -> list[Table]:
    """Build the tables ``durabert eval`` prints: summary, per-label metrics, confusion matrix.

    Args:
        result: The evaluation workflow's result.

    Returns:
        The tables, in printing order.
    """
    return [_summary(result), _per_class(result), _confusion(result)]
