"""Typed declarations of the activities, for callers that must not import the workers.

The orchestrator passes these stubs to ``workflow.execute_activity`` so calls are
type-checked without importing torch or datasets; each worker registers its real
implementation under the same name.
"""

from temporalio import activity

from durabert.shared import names
from durabert.shared.models import (
    BatchScoringRequest,
    BertBatchInferenceResult,
    BertEvaluationResult,
    BertFineTuneRequest,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    EvaluateBertRequest,
    RunClaimRequest,
    RunClaimResult,
    ScoringSnapshotRequest,
    ScoringSnapshotResult,
    SweepReportRequest,
    SweepReportResult,
)


@activity.defn(name=names.CLAIM_RUN)
async def claim_run(request: RunClaimRequest) -> RunClaimResult:
    """Claim ``runs/<run_id>`` for a workflow chain, or refuse an id in use (runs on the data worker)."""
    raise NotImplementedError("declaration only: the data worker implements this activity")


@activity.defn(name=names.CREATE_DATASET_SNAPSHOT)
async def create_dataset_snapshot(request: DatasetSnapshotRequest) -> DatasetSnapshotResult:
    """Freeze a dataset into a content-addressed snapshot (runs on the data worker)."""
    raise NotImplementedError("declaration only: the data worker implements this activity")


@activity.defn(name=names.FINE_TUNE_BERT)
async def fine_tune_bert(request: BertFineTuneRequest) -> BertFineTuneResult:
    """Fine-tune with checkpoints and resume (runs on the GPU worker)."""
    raise NotImplementedError("declaration only: the GPU worker implements this activity")


@activity.defn(name=names.RUN_BERT_INFERENCE)
async def run_bert_inference(request: BertInferenceRequest) -> BertInferenceResult:
    """Classify texts with a finished run's model (runs on the GPU worker)."""
    raise NotImplementedError("declaration only: the GPU worker implements this activity")


@activity.defn(name=names.CREATE_SCORING_SNAPSHOT)
async def create_scoring_snapshot(request: ScoringSnapshotRequest) -> ScoringSnapshotResult:
    """Freeze a dataset to score, unlabelled and in input order (runs on the data worker)."""
    raise NotImplementedError("declaration only: the data worker implements this activity")


@activity.defn(name=names.SCORE_DATASET)
async def score_dataset(request: BatchScoringRequest) -> BertBatchInferenceResult:
    """Score a scoring snapshot in stored chunks, resuming at the first missing one (GPU worker)."""
    raise NotImplementedError("declaration only: the GPU worker implements this activity")


@activity.defn(name=names.EVALUATE_BERT)
async def evaluate_bert(request: EvaluateBertRequest) -> BertEvaluationResult:
    """Score a labelled snapshot with a finished run's model and store its metrics report (GPU worker)."""
    raise NotImplementedError("declaration only: the GPU worker implements this activity")


@activity.defn(name=names.RECORD_SWEEP)
async def record_sweep(request: SweepReportRequest) -> SweepReportResult:
    """Write a sweep's trials table and metric plot under ``sweeps/<sweep_id>/`` (GPU worker)."""
    raise NotImplementedError("declaration only: the GPU worker implements this activity")
