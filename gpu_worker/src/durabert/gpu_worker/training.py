"""Checkpointed, resumable fine-tuning with the Hugging Face ``Trainer``; no Temporal here.

:func:`run_training` is what the training child process runs, in three named steps:
:func:`~durabert.gpu_worker.preparation.prepare` (take the run folder over, load, tokenize,
choose the resume point), :func:`train` (the Trainer, checkpoints published under the fence),
and :func:`~durabert.gpu_worker.publishing.publish_run` (evaluate, write the model folder).
It reports through an ``emit`` callback and stops early (saving a checkpoint first) when
``stop`` is set, so the same code runs in-process in tests and benchmarks.
"""

import gc
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from durabert.gpu_worker import checkpoints, storage
from durabert.gpu_worker.callback import DurabertCallback
from durabert.gpu_worker.events import TrainingStopped, TrainJob
from durabert.gpu_worker.preparation import Emit, PreparedRun, TrainingPlan, prepare, restart_smaller
from durabert.gpu_worker.publishing import publish_run
from durabert.shared.errors import configuration_error
from durabert.shared.logging import bind_run_id, get_logger
from durabert.shared.models import BertFineTuneResult

log = get_logger(__name__)

PROGRESS_UPDATES_PER_CHECKPOINT = 5
"""Loss logs per checkpoint interval (history records and live heartbeat figures)."""


@dataclass(frozen=True)
class Trained:
    """What the training step hands to publishing."""

    trainer: Any
    """The Trainer that trained (a new one when out-of-memory retries rebuilt it)."""
    train_loss: float
    """Mean training loss (the Trainer's, or the last logged one for a finished checkpoint)."""
    seconds: float
    """Wall time of this attempt's training."""


class DurabertTrainingPlan(TrainerCallback, ExportableState):  # type: ignore[misc]
    """Saves the attempt's :class:`TrainingPlan` into every checkpoint's ``trainer_state.json``.

    The Trainer stores the ``state()`` of such callbacks under their class name (the name is
    ``preparation.PLAN_STATE_KEY``); a later attempt reads it back to know the precision the
    checkpoint was trained in and the batch split that fit.
    """

    def __init__(self, precision: str, per_device_batch_size: int, gradient_accumulation_steps: int) -> None:
        """Hold the plan.

        Args:
            precision: Numeric precision.
            per_device_batch_size: Examples per forward pass.
            gradient_accumulation_steps: Forward passes per optimizer step.
        """
        self.plan = {
            "precision": precision,
            "per_device_batch_size": per_device_batch_size,
            "gradient_accumulation_steps": gradient_accumulation_steps,
        }

    def state(self) -> dict[str, Any]:
        """The plan, as the Trainer saves callback states."""
        return {"args": dict(self.plan), "attributes": {}}


class DurabertTrainer(Trainer):  # type: ignore[misc]
    """A ``Trainer`` whose learning-rate schedule may span more steps than the run trains.

    The linear schedule decays to zero over ``max(the run's steps, lr_schedule_steps)``: a run told
    a longer horizon trains its steps exactly as the longer run would. The scheduler's state in a
    checkpoint is its step count only, so a continued run rebuilds the same schedule from it.
    """

    def __init__(self, *args: Any, lr_schedule_steps: int | None = None, **kwargs: Any) -> None:
        """Build the Trainer.

        Args:
            *args: ``Trainer`` arguments.
            lr_schedule_steps: Steps the learning rate decays over (None: the run's own).
            **kwargs: ``Trainer`` keyword arguments.
        """
        super().__init__(*args, **kwargs)
        self.lr_schedule_steps = lr_schedule_steps

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """The Trainer's scheduler over the longer of the run's steps and ``lr_schedule_steps``."""
        horizon = max(num_training_steps, self.lr_schedule_steps or 0)
        return super().create_scheduler(horizon, optimizer)


def _accuracy(prediction: Any) -> dict[str, float]:
    import numpy as np

    logits = (
        prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    )
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def _last_logged_loss(state: dict[str, Any]) -> float:
    """The newest training loss in a Trainer state's log history (0.0 when none was logged)."""
    for entry in reversed(state.get("log_history") or []):
        for key in ("train_loss", "loss"):
            if isinstance(entry.get(key), int | float):
                return float(entry[key])
    return 0.0


def _training_arguments(prepared: PreparedRun) -> Any:
    from transformers import TrainingArguments

    job, config, plan = prepared.job, prepared.job.request.config, prepared.plan
    return TrainingArguments(
        # The Trainer writes into the attempt's private staging folder; the callback
        # publishes each complete checkpoint into checkpoints/ (see checkpoints.publish).
        output_dir=str(prepared.staging),
        per_device_train_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        per_device_eval_batch_size=plan.per_device_batch_size,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps or -1,
        save_strategy="steps",
        save_steps=config.checkpoint_steps,
        # durabert rotates itself, after the new checkpoint is published (see checkpoints.rotate).
        save_total_limit=None,
        logging_strategy="steps",
        logging_steps=max(1, config.checkpoint_steps // PROGRESS_UPDATES_PER_CHECKPOINT),
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=config.seed,
        use_cpu=job.device == "cpu",
        bf16=prepared.precision == "bf16",
        fp16=prepared.precision == "fp16",
        dataloader_pin_memory=job.device == "cuda",
    )


def build_trainer(prepared: PreparedRun, callback: DurabertCallback) -> Any:
    """Build the Trainer of one attempt.

    Args:
        prepared: The prepared run.
        callback: The attempt's callback.

    Returns:
        A ``transformers.Trainer``.
    """
    from transformers import PrinterCallback

    trainer = DurabertTrainer(
        model=prepared.model,
        args=_training_arguments(prepared),
        train_dataset=prepared.train_set,
        eval_dataset=prepared.eval_set,
        processing_class=prepared.tokenizer,
        compute_metrics=_accuracy,
        callbacks=[callback, DurabertTrainingPlan(**prepared.plan.state()["args"])],
        lr_schedule_steps=prepared.job.request.config.lr_schedule_steps,
    )
    # Sequence-classification models take loss kwargs yet return a per-batch mean: told so, the
    # Trainer divides by the accumulation steps, and a batch split after running out of memory
    # gives the gradients (and the logged loss) of the whole batch instead of a multiple.
    trainer.loss_is_scaled_for_ga = False
    # With tqdm disabled the Trainer prints every log dict to stdout; durabert logs them itself.
    trainer.remove_callback(PrinterCallback)
    return trainer


def _train_once(prepared: PreparedRun, trainer: Any, callback: DurabertCallback) -> Trained:
    """One ``trainer.train`` from the resume point (or none for a finished checkpoint)."""
    resume, finished = prepared.resume, prepared.finished
    if finished is not None:
        trainer.state.global_step = int(finished["global_step"])
        trainer.state.max_steps = int(finished["max_steps"])
        return Trained(trainer=trainer, train_loss=_last_logged_loss(finished), seconds=0.0)
    # A save needs about as much room as the newest checkpoint; a fresh run probes with 1 MiB.
    save_bytes = storage.folder_bytes(resume.path) if resume else storage.PROBE_BYTES
    started = time.monotonic()
    try:
        with storage.storage_guard(prepared.checkpoints_dir, save_bytes, "a checkpoint"):
            output = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    except Exception:
        # A newer attempt that took the run over clears the staging folders of older ones, so a
        # superseded attempt's save can fail on a vanished folder (torch and the marker raise
        # different errors for it): report the take-over, not its symptom.
        prepared.fence.check("save a checkpoint")
        raise
    return Trained(
        trainer=trainer, train_loss=float(output.training_loss), seconds=time.monotonic() - started
    )


def _smaller_plan(prepared: PreparedRun, error: BaseException) -> TrainingPlan:
    """The plan to retry with after ``error`` (out of device memory), or the configuration error at 1."""
    config, plan = prepared.job.request.config, prepared.plan
    smaller = plan.smaller()
    if smaller is None:
        raise configuration_error(
            f"config.batch_size: out of {prepared.job.device} memory at batch size 1 per device (batch size "
            f"{config.batch_size}) with max_seq_length {config.max_seq_length}: the model does not fit this "
            "worker; lower max_seq_length or use a smaller model or a bigger device"
        ) from None
    log.warning(
        "out of device memory: training again with a smaller per-device batch and more accumulation steps",
        device=prepared.job.device,
        per_device_batch_size=smaller.per_device_batch_size,
        gradient_accumulation_steps=smaller.gradient_accumulation_steps,
        failed_per_device_batch_size=plan.per_device_batch_size,
        error=str(error)[:200],
    )
    return smaller


def _release_device_memory(device: str) -> None:
    """Return what the failed Trainer held (optimizer state, activations) to the device."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    elif device == "mps":
        torch.mps.empty_cache()


def train(prepared: PreparedRun, trainer: Any, callback: DurabertCallback) -> Trained:
    """Train from the resume point to the planned steps, or stop early on request.

    Out of device memory, the attempt starts over in place with half the per-device batch and
    twice the accumulation steps (the same batch size, so the same result), from the newest
    complete checkpoint, down to one example per pass.

    Args:
        prepared: The prepared run.
        trainer: Its Trainer.
        callback: The Trainer's durabert callback.

    Returns:
        The Trainer, training loss and time.

    Raises:
        TrainingStopped: When a stop request ended training after a checkpoint (with an
            object-store root, once that checkpoint is in the store).
        ApplicationError: ``ConfigurationError`` when the model does not fit at batch size 1; a
            retryable ``ArtifactStoreError`` or ``AttemptSupersededError`` when a checkpoint
            upload failed.
    """
    import torch

    while True:
        try:
            trained = _train_once(prepared, trainer, callback)
            break
        except torch.OutOfMemoryError as exc:
            plan = _smaller_plan(prepared, exc)
        # Outside the handler: the exception's traceback pins the failed step's tensors.
        del trainer
        _release_device_memory(prepared.job.device)
        # The restart resumes from (and reports) the newest checkpoint: it must be in the store.
        callback.finish_uploads()
        restart_smaller(prepared, plan)
        trainer = build_trainer(prepared, callback)
    # A stop or the end of training counts only once its last checkpoint is in the store.
    callback.finish_uploads()
    if callback.stopped_at is not None:
        saved = checkpoints.newest_complete(prepared.checkpoints_dir)
        step = int(trained.trainer.state.global_step)
        log.info("training stopped on request", step=step, checkpoint=checkpoints.describe(saved))
        raise TrainingStopped(step, prepared.store.relative(saved.path) if saved else None)
    return trained


def run_training(job: TrainJob, emit: Emit, stop: threading.Event) -> BertFineTuneResult:
    """Fine-tune, checkpointing and resuming, and publish the final model.

    Args:
        job: The request, settings, device and attempt.
        emit: Receives phase, progress, checkpoint and start events.
        stop: When set, training saves a checkpoint at the end of the current step and stops.

    Returns:
        The result, once the final model is in place.

    Raises:
        TrainingStopped: When it stopped on request (after a checkpoint).
        ApplicationError: ``ConfigurationError``/``ArtifactNotFoundError`` for requests that cannot
            run; ``AttemptSupersededError`` when a newer attempt took the run folder over.
    """
    bind_run_id(job.request.run_id)
    prepared = prepare(job, emit)
    try:
        return _train_and_publish(prepared, emit, stop)
    finally:
        # Memory-mapped files may go while mapped (POSIX); a killed attempt's are removed by the next.
        shutil.rmtree(prepared.cache_dir, ignore_errors=True)


def _log_start(prepared: PreparedRun) -> None:
    job, plan, resumed_plan = prepared.job, prepared.plan, prepared.resumed_plan
    if resumed_plan is not None and resumed_plan.precision != plan.precision:
        log.warning(
            "resuming on a device with another precision",
            checkpoint_precision=resumed_plan.precision,
            precision=plan.precision,
            device=job.device,
        )
    log.info(
        "training starting",
        device=job.device,
        precision=plan.precision,
        per_device_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        attempt=job.attempt,
        resume_from=checkpoints.describe(prepared.resume),
        train_rows=len(prepared.train_set),
        eval_rows=len(prepared.eval_set),
    )


def _train_and_publish(prepared: PreparedRun, emit: Emit, stop: threading.Event) -> BertFineTuneResult:
    _log_start(prepared)
    resume = prepared.resume
    if stop.is_set():
        raise TrainingStopped(
            resume.step if resume else 0, prepared.store.relative(resume.path) if resume else None
        )
    callback = DurabertCallback(prepared, emit, stop)
    trained = train(prepared, build_trainer(prepared, callback), callback)
    return publish_run(prepared, trained.trainer, trained.train_loss, trained.seconds, emit)
