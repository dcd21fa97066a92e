"""The ``score_dataset`` activity: a thin Temporal shell around :mod:`.scoring`, on the training queue.

Scoring a dataset is long, heavy GPU work like training, so it takes a training slot, not an
inference one. It runs in a thread with the GPU worker's warm model cache (the model online
inference serves is the model that scores); the event loop heartbeats the thread's progress
(:class:`~durabert.shared.models.ScoringHeartbeat`: chunks and rows done, shown by
``durabert watch``). A retried attempt resumes at the first chunk not stored complete; a
cancelled one stops before its next forward pass, its stored chunks kept.
"""

import asyncio
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from temporalio import activity

from durabert.gpu_worker.device import select_device
from durabert.gpu_worker.inference import ModelCache
from durabert.gpu_worker.scoring import ScoringJob, ScoringState, score_dataset
from durabert.gpu_worker.scoring_store import PredictionStore, model_digest
from durabert.shared import names
from durabert.shared.errors import not_found
from durabert.shared.logging import bind_run_id, get_logger
from durabert.shared.models import (
    SCORING_ROWS_FILE,
    BatchScoringRequest,
    BertBatchInferenceResult,
    ScoringSnapshotResult,
)
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 10.0
"""Heartbeat period when the caller set no heartbeat timeout."""


def heartbeat_interval_seconds(timeout: timedelta | None) -> float:
    """Seconds between heartbeats of a long activity that beats from its event loop.

    Args:
        timeout: The activity's heartbeat timeout, if any.

    Returns:
        A quarter of the timeout (one lost heartbeat never times the attempt out), or the default.
    """
    return DEFAULT_HEARTBEAT_SECONDS if timeout is None else max(0.1, timeout.total_seconds() / 4)


class ScoringActivities:
    """Batch scoring on the GPU worker, sharing its settings and warm model cache."""

    def __init__(self, settings: DurabertSettings, cache: ModelCache) -> None:
        """Bind the activity to the worker's settings and model cache.

        Args:
            settings: durabert settings (device policy).
            cache: The GPU worker's model cache (``GpuActivities(settings).cache``): its artifact
                folder and object-store mirror are the ones scoring reads and writes.
        """
        self.settings = settings
        self.cache = cache

    @activity.defn(name=names.SCORE_DATASET)
    async def score_dataset(self, request: BatchScoringRequest) -> BertBatchInferenceResult:
        """Score a scoring snapshot in stored chunks, resuming at the first missing one.

        Args:
            request: The workflow's request and the scoring snapshot.

        Returns:
            Where the output is, with the chunk counts.

        Raises:
            ApplicationError: ``ArtifactNotFoundError`` (not retried) when the run has no finished
                model or the snapshot is gone.
            asyncio.CancelledError: Once the scoring thread has stopped, when the activity is cancelled.
        """
        run_id = request.request.run_id
        bind_run_id(run_id)
        state = ScoringState()
        work = asyncio.ensure_future(asyncio.to_thread(self._score, request, state))
        interval = heartbeat_interval_seconds(activity.info().heartbeat_timeout)
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=interval)
                activity.heartbeat(state.heartbeat())
        except asyncio.CancelledError:
            state.stop.set()  # the thread stops before its next forward pass; its chunks stay
            await asyncio.wait({work})
            raise
        result = work.result()
        log.info(
            "dataset scored",
            rows=result.num_rows,
            chunks=result.chunks,
            resumed_chunks=result.resumed_chunks,
            output_path=result.output_path,
        )
        return result

    def _score(self, request: BatchScoringRequest, state: ScoringState) -> BertBatchInferenceResult:
        """Load model and rows, then score (blocking: runs in a thread)."""
        wanted = request.request
        device = select_device(wanted.use_gpu, self.settings.gpu.device)
        loaded = self.cache.get(wanted.run_id, device)
        store = self.cache.store
        mirror = self.cache.mirror
        predictions = PredictionStore(
            store,
            mirror.objects if mirror is not None else None,
            wanted.run_id,
            request.snapshot.snapshot_id,
            model_digest(store.model_dir(wanted.run_id)),
        )
        job = ScoringJob(wanted, request.snapshot, self._rows(request.snapshot), loaded, predictions)
        log.info("scoring started", snapshot_id=request.snapshot.snapshot_id, rows=request.snapshot.num_rows)
        return score_dataset(job, state)

    def _rows(self, snapshot: ScoringSnapshotResult) -> pa.Table:
        """The snapshot's rows, downloaded (verified) into the local copy first with an object-store root."""
        folder = self.cache.store.resolve(snapshot.snapshot_path)
        mirror = self.cache.mirror
        pulled = mirror is None or (folder / SCORING_ROWS_FILE).is_file()
        if (
            not pulled
            and mirror is not None
            and mirror.objects.download_folder(snapshot.snapshot_path, folder) is None
        ):
            raise not_found(f"scoring snapshot {snapshot.snapshot_id} is not complete in the store")
        try:
            rows = pq.read_table(folder / SCORING_ROWS_FILE, columns=["row_index", "text"])
        except FileNotFoundError:
            raise not_found(f"scoring snapshot {snapshot.snapshot_id} has no rows at {folder}") from None
        if rows.num_rows != snapshot.num_rows:
            raise not_found(
                f"scoring snapshot {snapshot.snapshot_id} holds {rows.num_rows} rows, not {snapshot.num_rows}"
            )
        return rows
