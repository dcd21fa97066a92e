"""The ``evaluate_bert`` activity: a thin Temporal shell around :mod:`.evaluation`, on the training queue.

Evaluating a test set is heavy GPU work like batch scoring, so it takes a training slot, not an
inference one. It runs in a thread with the GPU worker's warm model cache (the model online
inference serves is the model evaluated, through the same forward pass); the event loop
heartbeats while it runs. A cancelled attempt stops before its next forward pass. A retried one
(the worker was preempted) starts again: the snapshot is cached by content, the report is
rewritten whole.
"""

import asyncio
import threading
from typing import Any

from temporalio import activity

from durabert.gpu_worker.data import locate_snapshot, read_snapshot_manifest
from durabert.gpu_worker.device import select_device
from durabert.gpu_worker.evaluation import Metrics, evaluate_rows, read_rows
from durabert.gpu_worker.evaluation_report import REPORT_FILE, report_key, store_report
from durabert.gpu_worker.inference import ModelCache
from durabert.gpu_worker.scoring_activities import heartbeat_interval_seconds
from durabert.gpu_worker.scoring_store import model_digest
from durabert.shared import names
from durabert.shared.logging import bind_run_id, get_logger
from durabert.shared.models import BertEvaluationResult, EvaluateBertRequest
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)


class EvaluationActivities:
    """Evaluation on the GPU worker, sharing its settings and warm model cache."""

    def __init__(self, settings: DurabertSettings, cache: ModelCache) -> None:
        """Bind the activity to the worker's settings and model cache.

        Args:
            settings: durabert settings (device policy).
            cache: The GPU worker's model cache (``GpuActivities(settings).cache``): its artifact
                folder and object-store mirror are the ones evaluation reads and writes.
        """
        self.settings = settings
        self.cache = cache

    @activity.defn(name=names.EVALUATE_BERT)
    async def evaluate_bert(self, request: EvaluateBertRequest) -> BertEvaluationResult:
        """Score a labelled snapshot with a finished run's model and store the metrics report.

        Args:
            request: The workflow's request and the labelled snapshot.

        Returns:
            The metrics and where the report is.

        Raises:
            ApplicationError: ``InvalidInputError`` (not retried) for a label the model does not
                know or a split the source lacks; ``ArtifactNotFoundError`` (not retried) when the
                run has no finished model or the snapshot is gone.
            asyncio.CancelledError: Once the evaluating thread has stopped, when the activity is cancelled.
        """
        bind_run_id(request.request.run_id)
        halt = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self._evaluate, request, halt))
        interval = heartbeat_interval_seconds(activity.info().heartbeat_timeout)
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=interval)
                activity.heartbeat("evaluating")
        except asyncio.CancelledError:
            halt.set()  # the thread stops before its next forward pass
            await asyncio.wait({work})
            raise
        result = work.result()
        log.info(
            "model evaluated",
            snapshot_id=result.snapshot_id,
            rows=result.num_samples,
            accuracy=round(result.accuracy, 4),
            macro_f1=round(result.macro_f1, 4),
            report_path=result.report_path,
        )
        return result

    def _evaluate(self, request: EvaluateBertRequest, halt: threading.Event) -> BertEvaluationResult:
        """Load model and rows, evaluate, store the report (blocking: runs in a thread)."""
        wanted, snapshot = request.request, request.snapshot
        device = select_device(wanted.use_gpu, self.settings.gpu.device)
        loaded = self.cache.get(wanted.run_id, device)
        store, mirror = self.cache.store, self.cache.mirror
        if mirror is not None:
            mirror.pull_snapshot(snapshot)
        files = locate_snapshot(store, snapshot)
        manifest = read_snapshot_manifest(files.folder, snapshot)
        rows = read_rows(files, manifest, wanted)
        log.info("evaluation started", snapshot_id=snapshot.snapshot_id, rows=len(rows.texts), device=device)
        metrics = evaluate_rows(loaded, rows, wanted, halt)
        report_path = f"{report_key(store, wanted.run_id, snapshot.snapshot_id)}/{REPORT_FILE}"
        result = _result(request, metrics, report_path, str(device))
        provenance: dict[str, Any] = {
            "model_digest": model_digest(store.model_dir(wanted.run_id)),
            "dataset": manifest.source.model_dump(mode="json"),
        }
        store_report(store, mirror.objects if mirror is not None else None, result, provenance)
        return result


def _result(
    request: EvaluateBertRequest, metrics: Metrics, report_path: str, device: str
) -> BertEvaluationResult:
    return BertEvaluationResult(
        run_id=request.request.run_id,
        snapshot_id=request.snapshot.snapshot_id,
        split=request.request.split,
        num_samples=sum(item.support for item in metrics.per_class),  # every row has a model label
        label_names=[item.label for item in metrics.per_class],
        accuracy=metrics.accuracy,
        macro_f1=metrics.macro_f1,
        per_class=metrics.per_class,
        confusion_matrix=metrics.confusion_matrix,
        report_path=report_path,
        device=device,
    )
