"""Last step of a training attempt: evaluate, build the result and publish the final model folder."""

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from durabert.gpu_worker import checkpoints, history, model_folder, storage
from durabert.gpu_worker.events import PulseEvent
from durabert.gpu_worker.preparation import Emit, PreparedRun
from durabert.shared.logging import get_logger
from durabert.shared.models import BertFineTuneResult, CheckpointInfo
from durabert.shared.redaction import redact_value

log = get_logger(__name__)


def _attempt_entries(
    prepared: PreparedRun, attempts: Sequence[history.AttemptRecord]
) -> list[dict[str, Any]]:
    """The run's attempt records, the finishing one with how it trained (precision, batch split)."""
    entries = [record.model_dump(mode="json", exclude={"kind"}) for record in attempts]
    plan, resumed = prepared.plan, prepared.resumed_plan
    for entry in entries:
        if entry["attempt"] == prepared.attempt_seq:
            entry.update(
                precision=plan.precision,
                per_device_batch_size=plan.per_device_batch_size,
                gradient_accumulation_steps=plan.gradient_accumulation_steps,
                out_of_memory_retries=prepared.out_of_memory_retries,
                resumed_precision=resumed.precision if resumed else None,
            )
    return entries


def _adjustments(prepared: PreparedRun) -> dict[str, Any]:
    """Result fields that record how the final attempt deviated from the configuration, if it did."""
    plan, resumed, config = prepared.plan, prepared.resumed_plan, prepared.job.request.config
    changes: dict[str, Any] = {}
    if plan.per_device_batch_size != config.batch_size:
        changes.update(
            per_device_batch_size=plan.per_device_batch_size,
            gradient_accumulation_steps=plan.gradient_accumulation_steps,
        )
    if resumed is not None and resumed.precision != plan.precision:
        changes.update(precision=plan.precision, resumed_precision=resumed.precision)
    return changes


def _manifest(
    prepared: PreparedRun,
    trainer: Any,
    records: Sequence[history.HistoryRecord],
    metrics: dict[str, float],
) -> model_folder.ModelManifest:
    request, snapshot = prepared.job.request, prepared.job.request.dataset_snapshot
    attempts = history.attempts(records)
    return model_folder.ModelManifest(
        run_id=request.run_id,
        # Credentials in data URLs never reach a file (the workflow input itself is Temporal's).
        config=redact_value(request.config.model_dump(mode="json")),
        base_model=prepared.source,
        snapshot={
            "snapshot_id": snapshot.snapshot_id,
            "data_hash": snapshot.data_hash,
            "snapshot_path": snapshot.snapshot_path,
        },
        label_names=snapshot.label_names,
        device=prepared.job.device,
        precision=prepared.precision,
        global_step=int(trainer.state.global_step),
        max_steps=int(trainer.state.max_steps),
        attempts=_attempt_entries(prepared, attempts),
        resume_points=[
            record.resumed_from_step for record in attempts if record.resumed_from_step is not None
        ],
        metrics=metrics,
    )


def _final_checkpoint(prepared: PreparedRun, trainer: Any) -> CheckpointInfo | None:
    newest = checkpoints.newest_complete(prepared.checkpoints_dir)
    if newest is None:
        return None
    return CheckpointInfo(
        epoch=max(0.0, float(trainer.state.epoch or 0.0)),
        step=newest.step,
        path=prepared.store.relative(newest.path),
        timestamp=datetime.now(UTC).isoformat(),
        max_steps=int(trainer.state.max_steps) or None,
        attempt=prepared.job.attempt,
    )


def _upload_model(prepared: PreparedRun) -> None:
    """With an object-store root, upload the final model and the run's files before the result goes out."""
    mirror = prepared.mirror
    if mirror is None:
        return
    prepared.fence.check_store("upload the final model")
    mirror.push_model(prepared.job.request.run_id, prepared.writer())


def _write_model_folder(
    prepared: PreparedRun,
    trainer: Any,
    records: Sequence[history.HistoryRecord],
    manifest: model_folder.ModelManifest,
    metrics: dict[str, float],
) -> Path:
    """Publish ``runs/<run_id>/model`` atomically, under the fence; return the folder."""
    run_id = prepared.job.request.run_id

    def fill(folder: Path) -> None:
        trainer.save_model(str(folder))
        model_folder.write_extras(folder, manifest, metrics)
        curve = folder / model_folder.LOSS_CURVE_FILE
        history.plot_loss_curve(records, curve, title=f"run {run_id}")

    final_dir = prepared.store.model_dir(run_id)
    save_bytes = storage.folder_bytes(prepared.resume.path) if prepared.resume else storage.PROBE_BYTES
    with (
        prepared.fence.guard("publish the final model"),
        storage.storage_guard(prepared.run_dir, save_bytes, "the final model"),
    ):
        model_folder.publish(prepared.run_dir, final_dir, fill)
    return final_dir


def publish_run(
    prepared: PreparedRun, trainer: Any, train_loss: float, seconds: float, emit: Emit
) -> BertFineTuneResult:
    """Evaluate the trained model, write the final model folder under the fence, and build the result.

    Args:
        prepared: The prepared run.
        trainer: The Trainer after training.
        train_loss: The training loss to report.
        seconds: Wall time of this attempt's training.
        emit: Receives phase pulses.

    Returns:
        The run's result.

    Raises:
        ApplicationError: ``AttemptSupersededError`` when another attempt took the run folder over;
            a retryable ``ArtifactStoreError`` when the object store does not take the model.
    """
    request, job = prepared.job.request, prepared.job
    emit(PulseEvent(phase="evaluating", step=int(trainer.state.global_step)))
    evaluation = {
        key: float(value) for key, value in trainer.evaluate().items() if isinstance(value, int | float)
    }
    metrics = {"train_loss": train_loss, **evaluation}
    emit(PulseEvent(phase="publishing", step=int(trainer.state.global_step)))
    records = history.read(prepared.run_dir)
    manifest = _manifest(prepared, trainer, records, metrics)
    final_dir = _write_model_folder(prepared, trainer, records, manifest, metrics)
    _upload_model(prepared)
    log.info("training finished", global_step=manifest.global_step, **evaluation)
    return BertFineTuneResult(
        run_id=request.run_id,
        config=request.config,
        train_loss=train_loss,
        eval_metrics=evaluation,
        training_time_seconds=seconds,
        num_parameters=sum(p.numel() for p in prepared.model.parameters() if p.requires_grad),
        dataset_snapshot=request.dataset_snapshot,
        total_checkpoints_saved=sum(1 for record in records if isinstance(record, history.CheckpointRecord)),
        global_step=manifest.global_step,
        resumed_from_step=prepared.resume.step if prepared.resume else None,
        final_checkpoint=_final_checkpoint(prepared, trainer),
        attempts=job.attempt,
        device=job.device,
        model_path=prepared.store.relative(final_dir),
        label_names=request.dataset_snapshot.label_names,
        **_adjustments(prepared),
    )
