"""The GPU worker's activities: ``fine_tune_bert`` (training queue), ``run_bert_inference`` (inference queue).

Only this module and :mod:`~durabert.gpu_worker.attempt` talk to Temporal. ``fine_tune_bert``
is an ``async def`` activity that supervises a training child process from the event loop
(heartbeating from the loop, not a thread, is what the SDK supports); see
:class:`~durabert.gpu_worker.attempt.TrainingAttempt` for how an attempt stops.
"""

import asyncio
from functools import partial
from multiprocessing.context import BaseContext

from temporalio import activity

from durabert.gpu_worker.attempt import POLL_SECONDS, TrainingAttempt
from durabert.gpu_worker.batching import InferenceBatcher
from durabert.gpu_worker.data import locate_snapshot
from durabert.gpu_worker.device import Device, select_device
from durabert.gpu_worker.events import TrainJob
from durabert.gpu_worker.gpu_memory import InferenceMemoryPolicy
from durabert.gpu_worker.inference import LoadedModel, ModelCache, classify_texts, inference_result
from durabert.gpu_worker.mirror import open_mirror
from durabert.gpu_worker.model_source import resolve_model_source
from durabert.gpu_worker.reporting import HeartbeatReporter, StallWatchdog
from durabert.gpu_worker.supervisor import TrainingChild
from durabert.shared import names
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.logging import bind_run_id, get_logger
from durabert.shared.models import (
    BertFineTuneRequest,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
)
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)


class GpuActivities:
    """Activities of the GPU worker, sharing its settings, artifact store and model cache."""

    def __init__(self, settings: DurabertSettings, child_context: BaseContext | None = None) -> None:
        """Create the activities.

        Args:
            settings: durabert settings (artifact root, device, cache size, shutdown timeout).
            child_context: Multiprocessing context for training children; the forkserver by
                default (tests pass ``fork`` to inject faults into the child).
        """
        self.settings = settings
        self.store = ArtifactStore(settings.artifact_dir)
        self.mirror = open_mirror(settings, self.store)
        self.memory = InferenceMemoryPolicy(settings.inference.gpu_memory_fraction)
        """Bounds inference's GPU memory and releases it while training shares the device."""
        self.cache = ModelCache(self.store, settings.gpu.inference_cache_size, self.mirror, self.memory)
        self.batcher = InferenceBatcher(
            settings.inference.max_batch_size, settings.inference.max_wait_ms / 1000
        )
        self.child_context = child_context

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune_bert(self, request: BertFineTuneRequest) -> BertFineTuneResult:
        """Fine-tune in a child process with checkpoints, resuming from the newest complete one.

        Args:
            request: Run id, configuration, snapshot, resume point and the attempt's fence.

        Returns:
            The run's result; the final model is in ``runs/<run_id>/model``.

        Raises:
            ApplicationError: ``ConfigurationError``/``ArtifactNotFoundError`` (not retried) for a
                request that cannot run; ``AttemptSupersededError`` (not retried) when a newer
                attempt owns the run folder; ``WorkerPreemptedError``, ``TrainingStalledError``,
                ``TrainingProcessDied`` and others (retried) for transient failures.
            asyncio.CancelledError: After a checkpoint, when the activity is cancelled.
        """
        bind_run_id(request.run_id)
        # The workflow retries training itself (each call carries its attempt number); a
        # server-side retry of the same call would add to it.
        attempt = request.attempt + activity.info().attempt - 1
        reporter = HeartbeatReporter(request.run_id, attempt)
        # The server times an attempt out on its heartbeats alone, counted from the start: the
        # checks below block for seconds on a fresh worker (torch's first import, a slow store),
        # so they run in a thread while the event loop heartbeats.
        checking = asyncio.ensure_future(asyncio.to_thread(self._check_request, request))
        try:
            device = await reporter.beat_until_done(checking, POLL_SECONDS)
        except asyncio.CancelledError:
            checking.cancel()
            raise
        job = TrainJob(request=request, settings=self.settings, device=device, attempt=attempt)
        log.info("fine-tuning attempt starting", run_id=request.run_id, attempt=attempt, device=device)
        supervised = TrainingAttempt(
            TrainingChild(job, self.child_context),
            reporter,
            StallWatchdog(request.config.stall_timeout_seconds),
            stop_seconds=self.settings.worker.child_stop_seconds,
        )
        # Inference on this GPU gives back its cached memory while the child trains.
        with self.memory.training(device):
            return await supervised.run()

    def _check_request(self, request: BertFineTuneRequest) -> Device:
        """Choose the device and fail fast, before a child starts, on what the parent can check cheaply.

        Blocking: the device probe imports torch (seconds on a fresh worker) and, with an object
        store, the snapshot's marker is read (the child downloads the snapshot, in a phase the
        stall watchdog gives time). Run it off the event loop.

        Args:
            request: The attempt's request.

        Returns:
            The device to train on.

        Raises:
            ApplicationError: ``ConfigurationError``/``ArtifactNotFoundError``/``DeviceUnavailableError``.
        """
        device = select_device(request.config.use_gpu, self.settings.gpu.device)
        if self.mirror is None:
            locate_snapshot(self.store, request.dataset_snapshot)
        else:
            self.mirror.check_snapshot(request.dataset_snapshot)
        resolve_model_source(request.config.model_name, self.store)
        return device

    @activity.defn(name=names.RUN_BERT_INFERENCE)
    async def run_bert_inference(self, request: BertInferenceRequest) -> BertInferenceResult:
        """Classify texts with a finished run's warm model, in forward passes shared with other requests.

        Runs on the inference queue, beside training, never behind it.

        Args:
            request: Run id and texts.

        Returns:
            Predicted labels, names and confidences.

        Raises:
            ApplicationError: ``ArtifactNotFoundError`` (not retried) when the run has no finished model.
        """
        bind_run_id(request.run_id)
        # The device probe (torch's first import), a download and a model load block: off the event
        # loop, which keeps polling and heartbeating other work, a training attempt's included.
        loaded = await asyncio.to_thread(self._warm_model, request)
        predictions = await self.batcher.classify(
            (loaded.key, request.max_seq_length),
            request.texts,
            partial(classify_texts, loaded, max_seq_length=request.max_seq_length),
        )
        return inference_result(request, loaded, predictions)

    def _warm_model(self, request: BertInferenceRequest) -> LoadedModel:
        """Choose the device and return the run's warm model (blocking)."""
        device = select_device(request.use_gpu, self.settings.gpu.device)
        return self.cache.get(request.run_id, device)
