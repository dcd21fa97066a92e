"""Checkpointed, resumable fine-tuning with the Hugging Face ``Trainer``; no Temporal here.

:func:`run_training` is what the training child process runs, in three named steps:
:func:`~durabert.gpu_worker.preparation.prepare` (take the run folder over, load, tokenize,
choose the resume point), :func:`train` (the Trainer, checkpoints published under the fence),
and :func:`~durabert.gpu_worker.publishing.publish_run` (evaluate, write the model folder).
It reports through an ``emit`` callback and stops early (saving a checkpoint first) when
``stop`` is set, so the same code runs in-process in tests and benchmarks.
"""

import threading
import time
from dataclasses import dataclass
from typing import Any

from durabert.gpu_worker import checkpoints, storage
from durabert.gpu_worker.callback import DurabertCallback
from durabert.gpu_worker.events import TrainingStopped, TrainJob
from durabert.gpu_worker.preparation import Emit, PreparedRun, prepare
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

    train_loss: float
    """Mean training loss (the Trainer's, or the last logged one for a finished checkpoint)."""
    seconds: float
    """Wall time of this attempt's training."""


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

    job, config = prepared.job, prepared.job.request.config
    return TrainingArguments(
        # The Trainer writes into the attempt's private staging folder; the callback
        # publishes each complete checkpoint into checkpoints/ (see checkpoints.publish).
        output_dir=str(prepared.staging),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
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
    from transformers import PrinterCallback, Trainer

    trainer = Trainer(
        model=prepared.model,
        args=_training_arguments(prepared),
        train_dataset=prepared.train_set,
        eval_dataset=prepared.eval_set,
        processing_class=prepared.tokenizer,
        compute_metrics=_accuracy,
        callbacks=[callback],
    )
    # With tqdm disabled the Trainer prints every log dict to stdout; durabert logs them itself.
    trainer.remove_callback(PrinterCallback)
    return trainer


def train(prepared: PreparedRun, trainer: Any, callback: DurabertCallback) -> Trained:
    """Train from the resume point to the planned steps, or stop early on request.

    Args:
        prepared: The prepared run.
        trainer: Its Trainer.
        callback: The Trainer's durabert callback.

    Returns:
        The training loss and time.

    Raises:
        TrainingStopped: When a stop request ended training after a checkpoint.
        ApplicationError: ``ConfigurationError`` when the model does not fit at batch size 1.
    """
    import torch

    resume, finished = prepared.resume, prepared.finished
    if finished is not None:
        trainer.state.global_step = int(finished["global_step"])
        trainer.state.max_steps = int(finished["max_steps"])
        return Trained(train_loss=_last_logged_loss(finished), seconds=0.0)
    # A save needs about as much room as the newest checkpoint; a fresh run probes with 1 MiB.
    save_bytes = storage.folder_bytes(resume.path) if resume else storage.PROBE_BYTES
    started = time.monotonic()
    try:
        with storage.storage_guard(prepared.checkpoints_dir, save_bytes, "a checkpoint"):
            output = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    except torch.OutOfMemoryError:
        config = prepared.job.request.config
        if config.batch_size == 1:
            raise configuration_error(
                f"config.batch_size: out of {prepared.job.device} memory at batch size 1 with max_seq_length "
                f"{config.max_seq_length}: the model does not fit this worker; lower max_seq_length or "
                "use a smaller model or a bigger device"
            ) from None
        raise
    if callback.stopped_at is not None:
        saved = checkpoints.newest_complete(prepared.checkpoints_dir)
        step = int(trainer.state.global_step)
        log.info("training stopped on request", step=step, checkpoint=checkpoints.describe(saved))
        raise TrainingStopped(step, prepared.store.relative(saved.path) if saved else None)
    return Trained(train_loss=float(output.training_loss), seconds=time.monotonic() - started)


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
    log.info(
        "training starting",
        device=job.device,
        precision=prepared.precision,
        attempt=job.attempt,
        resume_from=checkpoints.describe(prepared.resume),
        train_rows=len(prepared.train_set),
        eval_rows=len(prepared.eval_set),
    )
    resume = prepared.resume
    if stop.is_set():
        raise TrainingStopped(
            resume.step if resume else 0, prepared.store.relative(resume.path) if resume else None
        )
    callback = DurabertCallback(prepared, emit, stop)
    trainer = build_trainer(prepared, callback)
    trained = train(prepared, trainer, callback)
    return publish_run(prepared, trainer, trained.train_loss, trained.seconds, emit)
