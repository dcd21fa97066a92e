"""Checkpointed, resumable fine-tuning with the Hugging Face ``Trainer``; no Temporal here.

:func:`run_training` is what the training child process runs. It reports through an
``emit`` callback and stops early (saving a checkpoint first) when ``stop`` is set, so
the same code runs in-process in tests and benchmarks.
"""

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from durabert.gpu_worker import checkpoints, history, storage
from durabert.gpu_worker.data import load_tokenized, locate_snapshot
from durabert.gpu_worker.device import Precision, select_precision
from durabert.gpu_worker.events import (
    CheckpointEvent,
    ProgressEvent,
    StartedEvent,
    StoppedEvent,
    TrainingEvent,
    TrainJob,
)
from durabert.gpu_worker.model_source import resolve_model_source
from durabert.shared.artifacts import ArtifactStore, write_json_atomic
from durabert.shared.errors import configuration_error
from durabert.shared.logging import bind_run_id, get_logger
from durabert.shared.models import BertFineTuneResult

log = get_logger(__name__)

Emit = Callable[[TrainingEvent], None]
"""Receives each event training produces."""
MODEL_MANIFEST = "durabert-manifest.json"
"""Run manifest inside the final model folder; written before the folder is renamed into place."""
METRICS_FILE = "metrics.json"
"""Final metrics inside the final model folder."""
LOSS_CURVE_FILE = "loss_curve.png"
"""Loss curve of all attempts inside the final model folder."""
PROGRESS_UPDATES_PER_CHECKPOINT = 5
"""Loss logs (and progress signals) per checkpoint interval: bounded workflow history per checkpoint."""


def load_model_and_tokenizer(source: str, model_name: str, label_names: list[str]) -> tuple[Any, Any]:
    """Load the tokenizer and a sequence-classification model with the snapshot's labels.

    Args:
        source: Local folder or hub id to load.
        model_name: The name the request gave (for error messages).
        label_names: The snapshot's label names; a label's index is its id.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ApplicationError: ``ConfigurationError`` when the model cannot be loaded or its
            classification head has a different number of labels.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise configuration_error(
            f"config.model_name: cannot load {model_name!r}: it is not a local model folder (absolute, or "
            f"relative to the artifact root) and not reachable as a hub id ({type(exc).__name__}: {exc})"
        ) from None
    head = [name for name in (config.architectures or []) if name.endswith("ForSequenceClassification")]
    if head and config.num_labels != len(label_names):
        raise configuration_error(
            f"config.model_name: {model_name!r} has a classification head with {config.num_labels} labels "
            f"but the snapshot has {len(label_names)} ({label_names}); use a base model or a matching "
            "snapshot"
        )
    id2label = dict(enumerate(label_names))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={name: index for index, name in id2label.items()},
            ignore_mismatched_sizes=False,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        message = str(exc)
        if "size mismatch" in message or "mismatch" in message.lower():
            raise configuration_error(
                f"config.model_name: {model_name!r} does not fit {len(label_names)} labels: {message[:300]}"
            ) from None
        raise configuration_error(f"config.model_name: cannot load {model_name!r}: {message[:300]}") from None
    return model, tokenizer


def _accuracy(prediction: Any) -> dict[str, float]:
    import numpy as np

    logits = (
        prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    )
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def _finished_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's Trainer state when it already reached its planned steps, else None."""
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        return None
    state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
    max_steps = int(state.get("max_steps") or 0)
    return state if max_steps > 0 and int(state.get("global_step") or 0) >= max_steps else None


def _last_logged_loss(state: dict[str, Any]) -> float:
    """The newest training loss in a Trainer state's log history (0.0 when none was logged)."""
    for entry in reversed(state.get("log_history") or []):
        for key in ("train_loss", "loss"):
            if isinstance(entry.get(key), int | float):
                return float(entry[key])
    return 0.0


def _make_callback(
    job: TrainJob, store: ArtifactStore, emit: Emit, stop: threading.Event, attempt_seq: int
) -> Any:
    """Build the ``TrainerCallback`` that marks checkpoints, rotates, reports and stops."""
    from transformers import TrainerCallback

    config = job.request.config
    run_dir = store.run_dir(job.request.run_id)
    checkpoints_dir = store.checkpoints_dir(job.request.run_id)

    class DurabertCallback(TrainerCallback):  # type: ignore[misc]
        """Reports progress and checkpoints, and turns a stop request into save-and-stop."""

        def __init__(self) -> None:
            self.last_loss: float | None = None
            self.stopped_at: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            emit(
                StartedEvent(
                    resumed_from_step=state.global_step or None,
                    max_steps=state.max_steps,
                    num_parameters=sum(p.numel() for p in kwargs["model"].parameters() if p.requires_grad),
                )
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if stop.is_set() and self.stopped_at is None:
                # Save now (the Trainer writes the checkpoint right after this callback), then stop.
                control.should_save = True
                control.should_training_stop = True
                self.stopped_at = state.global_step
            if control.should_save:
                # The folder may exist from an earlier attempt (or an orphaned one) that got past
                # this step: drop its marker first, so a half-overwritten folder is never "complete".
                checkpoints.unmark(checkpoints_dir / f"checkpoint-{state.global_step}")

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return
            self.last_loss = float(logs["loss"])
            epoch = float(state.epoch or 0.0)
            history.append(
                run_dir, "loss", attempt=attempt_seq, step=state.global_step, epoch=epoch, loss=self.last_loss
            )
            emit(
                ProgressEvent(
                    step=state.global_step, epoch=epoch, loss=self.last_loss, max_steps=state.max_steps
                )
            )

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # on_save fires after the Trainer wrote every file of the folder: only now is it complete.
            path = checkpoints_dir / f"checkpoint-{state.global_step}"
            checkpoints.mark_complete(path, state.global_step, job.attempt)
            checkpoints.rotate(checkpoints_dir, config.save_total_limit)
            relative = store.relative(path)
            epoch = float(state.epoch or 0.0)
            history.append(run_dir, "checkpoint", attempt=attempt_seq, step=state.global_step, path=relative)
            emit(
                CheckpointEvent(
                    step=state.global_step,
                    epoch=epoch,
                    path=relative,
                    loss=self.last_loss,
                    max_steps=state.max_steps,
                )
            )

    return DurabertCallback()


def _training_arguments(job: TrainJob, output_dir: Path, precision: Precision) -> Any:
    from transformers import TrainingArguments

    config = job.request.config
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps or -1,
        save_strategy="steps",
        save_steps=config.checkpoint_steps,
        # durabert rotates itself, after marking the new checkpoint complete (see checkpoints.rotate).
        save_total_limit=None,
        logging_strategy="steps",
        logging_steps=max(1, config.checkpoint_steps // PROGRESS_UPDATES_PER_CHECKPOINT),
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=config.seed,
        use_cpu=job.device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_pin_memory=job.device == "cuda",
    )


def _publish_model(
    trainer: Any, run_dir: Path, final_dir: Path, write_extras: Callable[[Path], None]
) -> None:
    """Write the final model into a temporary folder, then rename it into place."""
    staging = run_dir / f".model-tmp-{uuid.uuid4().hex[:8]}"
    trainer.save_model(str(staging))
    write_extras(staging)
    old = None
    if final_dir.exists():
        # A finished run trained again (same run id): move the old model aside, swap, delete.
        old = run_dir / f".model-old-{uuid.uuid4().hex[:8]}"
        os.replace(final_dir, old)
    os.replace(staging, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clear_staging(run_dir: Path) -> None:
    if run_dir.is_dir():
        for stale in run_dir.glob(".model-*"):
            shutil.rmtree(stale, ignore_errors=True)


def run_training(job: TrainJob, emit: Emit, stop: threading.Event) -> BertFineTuneResult | StoppedEvent:
    """Fine-tune, checkpointing and resuming, and publish the final model.

    Args:
        job: The request, settings, device and attempt.
        emit: Receives progress, checkpoint and start events.
        stop: When set, training saves a checkpoint at the end of the current step and stops.

    Returns:
        The result when training finished, or a :class:`StoppedEvent` when it stopped on request.

    Raises:
        ApplicationError: ``ConfigurationError``/``ArtifactNotFoundError`` for requests that cannot run.
    """
    import torch
    from transformers import PrinterCallback, Trainer, set_seed

    request = job.request
    config = request.config
    snapshot = request.dataset_snapshot
    bind_run_id(request.run_id)
    store = ArtifactStore(job.settings.artifact_root)
    run_dir = store.run_dir(request.run_id)
    checkpoints_dir = store.checkpoints_dir(request.run_id)
    final_dir = store.model_dir(request.run_id)
    files = locate_snapshot(store, snapshot)
    source = resolve_model_source(config.model_name, store)
    precision = select_precision(job.device)

    # Seed before building the head so a fresh start is reproducible (a resume loads the weights).
    set_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(source, config.model_name, snapshot.label_names)
    train_set, eval_set = load_tokenized(
        files,
        snapshot,
        tokenizer,
        max_seq_length=config.max_seq_length,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
        seed=config.seed,
    )

    requested = store.resolve(request.resume_from_checkpoint) if request.resume_from_checkpoint else None
    if requested is None and job.resume_hint:
        requested = store.resolve(job.resume_hint)
    resume = checkpoints.choose_resume_checkpoint(checkpoints_dir, requested)
    _clear_staging(run_dir)
    attempt_seq = 1 + sum(1 for record in history.read(run_dir) if record.get("kind") == "attempt")
    history.append(
        run_dir,
        "attempt",
        attempt=attempt_seq,
        activity_attempt=job.attempt,
        resumed_from_step=resume.step if resume else None,
        device=job.device,
    )
    log.info(
        "training starting",
        run_id=request.run_id,
        device=job.device,
        precision=precision,
        attempt=job.attempt,
        resume_from=checkpoints.describe(resume),
        train_rows=len(train_set),
        eval_rows=len(eval_set),
    )
    if stop.is_set():
        return StoppedEvent(
            step=resume.step if resume else 0, checkpoint=store.relative(resume.path) if resume else None
        )

    finished = _finished_state(resume.path) if resume else None
    if finished is not None and resume is not None:
        # The checkpoint already holds the planned steps (an attempt finished training but its
        # result never reached Temporal). Resuming would make the Trainer take one extra step
        # when the checkpoint is mid-epoch: load its weights and only evaluate and publish.
        model = type(model).from_pretrained(resume.path)

    callback = _make_callback(job, store, emit, stop, attempt_seq)
    trainer = Trainer(
        model=model,
        args=_training_arguments(job, checkpoints_dir, precision),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        compute_metrics=_accuracy,
        callbacks=[callback],
    )
    # With tqdm disabled the Trainer prints every log dict to stdout; durabert logs them itself.
    trainer.remove_callback(PrinterCallback)
    # A save needs about as much room as the newest checkpoint; a fresh run probes with 1 MiB.
    save_bytes = storage.folder_bytes(resume.path) if resume else storage.PROBE_BYTES
    started = time.monotonic()
    try:
        if finished is not None:
            trainer.state.global_step = int(finished["global_step"])
            trainer.state.max_steps = int(finished["max_steps"])
            train_loss = _last_logged_loss(finished)
        else:
            with storage.storage_guard(checkpoints_dir, save_bytes, "a checkpoint"):
                output = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
            train_loss = float(output.training_loss)
    except torch.OutOfMemoryError:
        if config.batch_size == 1:
            raise configuration_error(
                f"config.batch_size: out of {job.device} memory at batch size 1 with max_seq_length "
                f"{config.max_seq_length}: the model does not fit this worker; lower max_seq_length or "
                "use a smaller model or a bigger device"
            ) from None
        raise
    elapsed = time.monotonic() - started
    step = int(trainer.state.global_step)
    if callback.stopped_at is not None:
        saved = checkpoints.newest_complete(checkpoints_dir)
        log.info(
            "training stopped on request",
            run_id=request.run_id,
            step=step,
            checkpoint=checkpoints.describe(saved),
        )
        return StoppedEvent(step=step, checkpoint=store.relative(saved.path) if saved else None)

    metrics = {
        key: float(value) for key, value in trainer.evaluate().items() if isinstance(value, int | float)
    }
    records = history.read(run_dir)
    attempts = [record for record in records if record.get("kind") == "attempt"]
    result = BertFineTuneResult(
        run_id=request.run_id,
        config=config,
        train_loss=train_loss,
        eval_metrics=metrics,
        training_time_seconds=elapsed,
        num_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        dataset_snapshot=snapshot,
        total_checkpoints_saved=sum(1 for record in records if record.get("kind") == "checkpoint"),
        inferred_text_field=snapshot.text_field,
        inferred_text_pair_field=snapshot.text_pair_field,
        inferred_label_field=snapshot.label_field,
        inferred_task_type=config.task_type,
        inferred_num_labels=len(snapshot.label_names),
        global_step=step,
        resumed_from_step=resume.step if resume else None,
        attempts=job.attempt,
        device=job.device,
        model_path=store.relative(final_dir),
        label_names=snapshot.label_names,
    )

    def write_extras(folder: Path) -> None:
        write_json_atomic(folder / METRICS_FILE, {"train_loss": result.train_loss, **metrics})
        write_json_atomic(
            folder / MODEL_MANIFEST,
            {
                "run_id": request.run_id,
                "created_at": datetime.now(UTC).isoformat(),
                "config": config.model_dump(mode="json"),
                "base_model": source,
                "snapshot": {
                    "snapshot_id": snapshot.snapshot_id,
                    "data_hash": snapshot.data_hash,
                    "snapshot_path": snapshot.snapshot_path,
                },
                "label_names": snapshot.label_names,
                "device": job.device,
                "precision": precision,
                "global_step": step,
                "max_steps": int(trainer.state.max_steps),
                "attempts": attempts,
                "resume_points": [
                    a["resumed_from_step"] for a in attempts if a.get("resumed_from_step") is not None
                ],
                "metrics": {"train_loss": result.train_loss, **metrics},
            },
        )
        history.plot_loss_curve(records, folder / LOSS_CURVE_FILE, title=f"run {request.run_id}")

    with storage.storage_guard(run_dir, save_bytes, "the final model"):
        _publish_model(trainer, run_dir, final_dir, write_extras)
    log.info("training finished", run_id=request.run_id, global_step=step, **metrics)
    return result


def read_model_manifest(model_dir: Path) -> dict[str, Any]:
    """Read the run manifest of a final model folder.

    Args:
        model_dir: ``runs/<run_id>/model``.

    Returns:
        The manifest's content.
    """
    data: dict[str, Any] = json.loads((model_dir / MODEL_MANIFEST).read_text(encoding="utf-8"))
    return data
