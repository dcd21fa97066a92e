"""Batch scoring of a whole dataset in stored chunks, as plain functions (no Temporal here).

The rows come from a scoring snapshot (``rows.parquet``: ``row_index``, ``text``, in input
order). They are cut into chunks of ``chunk_rows``; each chunk is scored with the run's warm
model (:func:`~durabert.gpu_worker.inference.classify_texts`, the forward pass online inference
uses, so both give the same labels) in passes of ``batch_size`` texts sorted by length (less
padding), put back in input order, and stored complete-or-not (:mod:`.scoring_store`). A chunk
already stored complete is skipped, so an attempt after a killed one resumes at the first
missing chunk. The output joins the chunks in order, each row index checked, into one Parquet
file written complete-or-not; an existing output of the same model is returned at once.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from durabert.gpu_worker.batching import Prediction
from durabert.gpu_worker.inference import LoadedModel, classify_texts
from durabert.gpu_worker.scoring_store import MODEL_METADATA_KEY, PredictionStore
from durabert.shared.errors import ErrorType, retryable_error
from durabert.shared.models import (
    BertBatchInferenceRequest,
    BertBatchInferenceResult,
    ScoringHeartbeat,
    ScoringSnapshotResult,
)

OUTPUT_SCHEMA = pa.schema(
    [
        ("row_index", pa.int64()),
        ("text", pa.large_string()),
        ("label", pa.int64()),
        ("label_name", pa.large_string()),
        ("confidence", pa.float64()),
    ]
)
"""Columns of every chunk and of the output."""


@dataclass(frozen=True)
class Chunk:
    """A slice of the rows, stored as one unit."""

    start: int
    """First row index."""
    stop: int
    """One past the last row index."""

    @property
    def name(self) -> str:
        """The chunk's folder name; the row range keeps a chunk of another size from being taken for it."""
        return f"chunk-{self.start:012d}-{self.stop:012d}"


def plan_chunks(num_rows: int, chunk_rows: int) -> list[Chunk]:
    """Cut ``num_rows`` rows into chunks of ``chunk_rows`` (the last may be shorter).

    Args:
        num_rows: Rows to score.
        chunk_rows: Rows per chunk.

    Returns:
        The chunks, in row order.
    """
    return [Chunk(start, min(start + chunk_rows, num_rows)) for start in range(0, num_rows, chunk_rows)]


@dataclass
class ScoringState:
    """Progress of a scoring attempt, written by the scoring thread and read by the heartbeat."""

    chunks: int = 0
    """Chunks in all."""
    num_rows: int = 0
    """Rows in all."""
    chunks_done: int = 0
    """Chunks stored complete."""
    rows_done: int = 0
    """Rows in those chunks."""
    resumed_chunks: int = 0
    """Chunks found complete and skipped."""
    device: str | None = None
    """Device scoring runs on."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set to stop at the next forward pass (the activity was cancelled)."""

    def heartbeat(self) -> ScoringHeartbeat:
        """The heartbeat details of this state.

        Returns:
            Chunks and rows done, resumed chunks, device and the time.
        """
        return ScoringHeartbeat(
            chunks_done=self.chunks_done,
            chunks=self.chunks,
            rows_done=self.rows_done,
            num_rows=self.num_rows,
            resumed_chunks=self.resumed_chunks,
            device=self.device,
            updated_at=datetime.now(UTC).isoformat(),
        )


class ScoringStopped(Exception):
    """Scoring stopped between forward passes because it was asked to (cancellation)."""


def predict_texts(
    loaded: LoadedModel, texts: list[str], max_seq_length: int, batch_size: int, stop: threading.Event
) -> list[Prediction]:
    """Classify texts in passes of similar length, returning the predictions in input order.

    Args:
        loaded: The warm model.
        texts: The texts, in input order.
        max_seq_length: Tokens per text after truncation.
        batch_size: Texts per forward pass.
        stop: Checked before each pass.

    Returns:
        One prediction per text, in input order.

    Raises:
        ScoringStopped: ``stop`` was set.
    """
    # Sorting by length pads each pass only to its own longest text.
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    predictions: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        if stop.is_set():
            raise ScoringStopped("scoring stopped")
        batch = order[start : start + batch_size]
        for index, prediction in zip(
            batch, classify_texts(loaded, [texts[i] for i in batch], max_seq_length), strict=True
        ):
            predictions[index] = prediction
    return [prediction for prediction in predictions if prediction is not None]


def chunk_table(rows: pa.Table, predictions: list[Prediction], label_names: list[str]) -> pa.Table:
    """Build a chunk's stored table: the rows beside their predictions.

    Args:
        rows: The chunk's ``row_index`` and ``text``.
        predictions: One per row, in order.
        label_names: The model's class names.

    Returns:
        A table of :data:`OUTPUT_SCHEMA`.
    """
    labels = [prediction.label for prediction in predictions]
    return pa.table(
        {
            "row_index": rows.column("row_index").cast(pa.int64()),
            "text": rows.column("text").cast(pa.large_string()),
            "label": pa.array(labels, pa.int64()),
            "label_name": pa.array([label_names[label] for label in labels], pa.large_string()),
            "confidence": pa.array([prediction.confidence for prediction in predictions], pa.float64()),
        },
        schema=OUTPUT_SCHEMA,
    )


@dataclass
class ScoringJob:
    """Everything one scoring attempt needs."""

    request: BertBatchInferenceRequest
    """The workflow's request (sizes)."""
    snapshot: ScoringSnapshotResult
    """The scoring snapshot."""
    rows: pa.Table
    """Its rows (``row_index``, ``text``), in input order."""
    loaded: LoadedModel
    """The run's warm model."""
    store: PredictionStore
    """Where chunks and output go."""


def _score_chunk(job: ScoringJob, chunk: Chunk, stop: threading.Event) -> None:
    rows = job.rows.slice(chunk.start, chunk.stop - chunk.start)
    texts = rows.column("text").to_pylist()
    request = job.request
    predictions = predict_texts(job.loaded, texts, request.max_seq_length, request.batch_size, stop)
    job.store.save_chunk(chunk.name, chunk_table(rows, predictions, job.loaded.label_names))


def _check_rows(table: pa.Table, chunk: Chunk) -> None:
    """Refuse a chunk whose row indices are not exactly its range, in order."""
    expected = pa.array(range(chunk.start, chunk.stop), pa.int64())
    if not table.column("row_index").combine_chunks().equals(expected):
        raise retryable_error(
            ErrorType.ARTIFACT_STORE,
            f"stored chunk {chunk.name} does not hold rows {chunk.start}..{chunk.stop - 1} in order; "
            "it is damaged: remove it so the next attempt scores it again",
        )


def assemble_output(store: PredictionStore, chunks: list[Chunk]) -> Callable[[Path], None]:
    """A writer of the output: every chunk in order, its rows checked, the model digest in the metadata.

    Args:
        store: Where the chunks are.
        chunks: All chunks, in row order.

    Returns:
        A function writing the output Parquet to the path it is given.
    """
    schema = OUTPUT_SCHEMA.with_metadata({MODEL_METADATA_KEY: store.model.encode()})

    def write(path: Path) -> None:
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for chunk in chunks:
                table = store.read_chunk(chunk.name)
                _check_rows(table, chunk)
                writer.write_table(table.cast(schema))

    return write


def _result(job: ScoringJob, chunks: int, resumed: int) -> BertBatchInferenceResult:
    return BertBatchInferenceResult(
        run_id=job.request.run_id,
        snapshot_id=job.snapshot.snapshot_id,
        num_rows=job.snapshot.num_rows,
        output_path=job.store.output_relative,
        chunks=chunks,
        resumed_chunks=resumed,
        label_names=job.loaded.label_names,
        device=job.loaded.device,
    )


def score_dataset(job: ScoringJob, state: ScoringState) -> BertBatchInferenceResult:
    """Score every chunk not stored complete, then write the output (or reuse a finished one).

    Args:
        job: What to score, with which model, stored where.
        state: Progress, updated after each chunk (the activity heartbeats it).

    Returns:
        The result; ``resumed_chunks`` counts chunks found complete (all of them for a reused output).

    Raises:
        ScoringStopped: ``state.stop`` was set; the chunks stored so far stay for the next attempt.
    """
    chunks = plan_chunks(job.snapshot.num_rows, job.request.chunk_rows)
    state.chunks, state.num_rows, state.device = len(chunks), job.snapshot.num_rows, job.loaded.device
    if job.store.output_finished():
        state.chunks_done, state.rows_done, state.resumed_chunks = len(chunks), state.num_rows, len(chunks)
        return _result(job, len(chunks), len(chunks))
    for chunk in chunks:
        if job.store.chunk_complete(chunk.name):
            state.resumed_chunks += 1
        else:
            _score_chunk(job, chunk, state.stop)
        state.chunks_done += 1
        state.rows_done += chunk.stop - chunk.start
    job.store.publish_output(assemble_output(job.store, chunks))
    job.store.drop_chunks()
    return _result(job, len(chunks), state.resumed_chunks)
