"""Step one of a training attempt: take the run folder over, load, tokenize, choose where to resume.

Everything here happens before the first optimizer step; :func:`prepare` returns a
:class:`PreparedRun` that the training and publishing steps work from.
"""

import dataclasses
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durabert.gpu_worker import checkpoints, history, model_folder
from durabert.gpu_worker.data import SnapshotFiles, load_tokenized, locate_snapshot
from durabert.gpu_worker.device import Precision, check_device_usable, select_precision
from durabert.gpu_worker.events import PulseEvent, TrainingEvent, TrainJob
from durabert.gpu_worker.fencing import RunFence
from durabert.gpu_worker.mirror import RunMirror, open_mirror
from durabert.gpu_worker.model_loading import load_model_and_tokenizer
from durabert.gpu_worker.model_source import resolve_model_source
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.logging import get_logger
from durabert.shared.models import BertFineTuneConfig

log = get_logger(__name__)

Emit = Callable[[TrainingEvent], None]
"""Receives each event training produces."""
STAGING_DIR = ".staging"
"""Folder of the attempts' private staging folders inside a run's ``checkpoints/``: on the same
file system as the checkpoints, so publishing one is a rename (its name is not a checkpoint's)."""
PLAN_STATE_KEY = "DurabertTrainingPlan"
"""Key of the training plan in a checkpoint's ``trainer_state.json`` (its ``stateful_callbacks``)."""


@dataclass(frozen=True)
class TrainingPlan:
    """How an attempt trains: its precision, and how the configured batch is split on the device.

    ``per_device_batch_size * gradient_accumulation_steps`` is always the configured
    ``batch_size``: out-of-memory retries trade one for the other, so the optimizer sees the
    same batches and the run the same result.
    """

    precision: Precision
    """Numeric precision (``bf16``, ``fp16`` or ``fp32``)."""
    per_device_batch_size: int
    """Examples per forward pass."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step."""

    @property
    def batch_size(self) -> int:
        """Examples per optimizer step (the configured ``batch_size``)."""
        return self.per_device_batch_size * self.gradient_accumulation_steps

    def smaller(self) -> "TrainingPlan | None":
        """The plan to retry with after running out of memory, or None at one example per pass.

        Returns:
            Half the per-device batch (the largest divisor of the batch size at most half of it, so
            the batch size stays exact) with as many more accumulation steps.
        """
        if self.per_device_batch_size == 1:
            return None
        total = self.batch_size
        per_device = next(size for size in range(self.per_device_batch_size // 2, 0, -1) if total % size == 0)
        return TrainingPlan(self.precision, per_device, total // per_device)

    def state(self) -> dict[str, Any]:
        """The plan as a Trainer callback state, saved into every checkpoint's ``trainer_state.json``."""
        return {"args": dataclasses.asdict(self), "attributes": {}}


def checkpoint_plan(checkpoint: Path) -> TrainingPlan | None:
    """The plan a checkpoint was trained with, from its ``trainer_state.json``.

    Args:
        checkpoint: A complete checkpoint folder.

    Returns:
        The plan, or None for a checkpoint written without one (by an older version).
    """
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        saved = (state.get("stateful_callbacks") or {})[PLAN_STATE_KEY]
        return TrainingPlan(**(saved[-1] if isinstance(saved, list) else saved)["args"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class PreparedRun:
    """Everything an attempt needs to train and publish, decided before the first step."""

    job: TrainJob
    """The attempt's job."""
    store: ArtifactStore
    """The artifact store."""
    fence: RunFence
    """The attempt's claim on the run folder; shared files change only under its guard."""
    source: str
    """Folder or hub id of the pretrained model."""
    plan: TrainingPlan
    """Precision and batch split; out-of-memory retries replace it with a smaller one."""
    resumed_plan: TrainingPlan | None
    """The plan the resume checkpoint was trained with (None for a fresh start or an old checkpoint)."""
    model: Any
    """The classification model (pretrained weights, or a finished checkpoint's)."""
    tokenizer: Any
    """Its tokenizer."""
    train_set: Any
    """Tokenized training split."""
    eval_set: Any
    """Tokenized evaluation split."""
    resume: checkpoints.Checkpoint | None
    """The checkpoint to resume from, or None for a fresh start."""
    finished: dict[str, Any] | None
    """Trainer state of ``resume`` when it already holds the planned steps (evaluate and publish only)."""
    attempt_seq: int
    """Sequence number of this attempt in the run folder's history."""
    staging: Path
    """This attempt's private folder where the Trainer writes checkpoints before they are published."""
    cache_dir: Path
    """This attempt's folder of memory-mapped Arrow files (the splits and their tokens)."""
    out_of_memory_retries: int = 0
    """Times this attempt started over with a smaller per-device batch."""
    mirror: RunMirror | None = None
    """The object store behind the local copy ``store`` is; None with a local artifact root."""
    requested: Path | None = None
    """The requested checkpoint (``resume_from_checkpoint``) in ``store``, if it is to be considered."""

    @property
    def precision(self) -> Precision:
        """Numeric precision on this device."""
        return self.plan.precision

    def writer(self) -> dict[str, Any]:
        """Who writes this attempt's checkpoints and model, for their completion markers."""
        fence = self.job.request.fence
        identity = fence.model_dump(mode="json") if fence else {}
        return {**identity, "attempt": self.job.attempt}

    @property
    def run_dir(self) -> Path:
        """``runs/<run_id>``."""
        return self.store.run_dir(self.job.request.run_id)

    @property
    def checkpoints_dir(self) -> Path:
        """``runs/<run_id>/checkpoints``: complete checkpoints only."""
        return self.store.checkpoints_dir(self.job.request.run_id)


def finished_state(checkpoint: Path, config: BertFineTuneConfig) -> dict[str, Any] | None:
    """The checkpoint's Trainer state when it already holds every step this config plans, else None.

    A checkpoint at its own ``max_steps`` is not finished for a config that extends the run
    (``continue_run`` with a larger ``max_steps`` or more epochs).

    Args:
        checkpoint: A complete checkpoint folder.
        config: The run's configuration.

    Returns:
        The Trainer state, or None.
    """
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        return None
    state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
    step, planned = int(state.get("global_step") or 0), int(state.get("max_steps") or 0)
    if planned <= 0 or step < planned:
        return None
    if config.max_steps is not None:
        return state if step >= config.max_steps else None
    return state if float(state.get("num_train_epochs") or 0) >= config.num_epochs else None


def _resume_point(store: ArtifactStore, run_id: str, requested: Path | None) -> checkpoints.Checkpoint | None:
    return checkpoints.choose_resume_checkpoint(store.checkpoints_dir(run_id), requested)


def _fresh_staging(store: ArtifactStore, run_id: str) -> Path:
    """A new private staging folder for this attempt; leftovers of dead attempts are removed."""
    # Runs under the fence: an attempt that still writes into its old staging folder is
    # superseded, and its publish (guarded) would fail anyway.
    parent = store.checkpoints_dir(run_id) / STAGING_DIR
    if parent.is_dir():
        shutil.rmtree(parent, ignore_errors=True)
    model_folder.clear_staging(store.run_dir(run_id))
    staging = parent / f"attempt-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    return staging


def _fresh_cache(job: TrainJob, staging: Path) -> Path:
    """A new, empty folder for this attempt's Arrow files; a dead attempt's files are removed.

    Under the fence, like the staging folder: only the attempt that owns the run writes here.
    """
    configured = job.settings.gpu.cache_dir
    cache = configured / job.request.run_id if configured else staging.with_name(f"{staging.name}-data")
    if cache.exists():
        shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    return cache


def _first_plan(
    config: BertFineTuneConfig, precision: Precision, resumed: TrainingPlan | None
) -> TrainingPlan:
    """The configured batch, or the smaller split the resumed checkpoint's attempt ran out of memory into."""
    if (
        resumed is not None
        and resumed.batch_size == config.batch_size
        and resumed.per_device_batch_size < config.batch_size
    ):
        return TrainingPlan(precision, resumed.per_device_batch_size, resumed.gradient_accumulation_steps)
    return TrainingPlan(precision, config.batch_size)


def load_model(source: str, job: TrainJob, resume: checkpoints.Checkpoint | None) -> tuple[Any, Any, Any]:
    """Load the model to train: pretrained with a seeded new head, or a finished checkpoint's weights.

    Args:
        source: Folder or hub id of the pretrained model.
        job: The attempt's job.
        resume: The checkpoint to resume from, if any.

    Returns:
        ``(model, tokenizer, finished)``, ``finished`` as :func:`finished_state` says.
    """
    from transformers import set_seed

    config = job.request.config
    # Seed before building the head so a fresh start is reproducible (a resume loads the weights).
    set_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(
        source, config.model_name, job.request.dataset_snapshot.label_names
    )
    finished = finished_state(resume.path, config) if resume else None
    if finished is not None and resume is not None:
        # An attempt finished training but its result never reached Temporal. Resuming would
        # make the Trainer take one extra step when the checkpoint is mid-epoch: load its
        # weights and only evaluate and publish.
        model = type(model).from_pretrained(resume.path)
    return model, tokenizer, finished


def restart_smaller(prepared: PreparedRun, plan: TrainingPlan) -> None:
    """Set an attempt that ran out of device memory up to train again with a smaller batch split.

    It restarts from the newest complete checkpoint (its own included) with fresh weights, as a
    new attempt in the run's history, so the result is the one an attempt with this plan gets.

    Args:
        prepared: The prepared run; its model, resume point, plan and staging folder are replaced.
        plan: The smaller plan.
    """
    job = prepared.job
    with prepared.fence.guard("restart after running out of device memory"):
        resume = _resume_point(prepared.store, job.request.run_id, prepared.requested)
        # Whatever the failed Trainer left unpublished goes; published checkpoints stay.
        shutil.rmtree(prepared.staging, ignore_errors=True)
        prepared.staging.mkdir(parents=True)
        prepared.attempt_seq = _record_attempt(job, prepared.run_dir, resume)
    prepared.model, prepared.tokenizer, prepared.finished = load_model(prepared.source, job, resume)
    prepared.resume, prepared.plan = resume, plan
    prepared.resumed_plan = checkpoint_plan(resume.path) if resume else None
    prepared.out_of_memory_retries += 1


def _record_attempt(job: TrainJob, run_dir: Path, resume: checkpoints.Checkpoint | None) -> int:
    seq = 1 + len(history.attempts(history.read(run_dir)))
    history.append(
        run_dir,
        history.AttemptRecord(
            attempt=seq,
            activity_attempt=job.attempt,
            resumed_from_step=resume.step if resume else None,
            device=job.device,
        ),
    )
    return seq


def _tokenize(job: TrainJob, files: SnapshotFiles, tokenizer: Any, cache_dir: Path) -> tuple[Any, Any]:
    """Tokenize the snapshot's splits into the attempt's cache; a failed attempt leaves no cache."""
    config = job.request.config
    try:
        return load_tokenized(
            files,
            job.request.dataset_snapshot,
            tokenizer,
            max_seq_length=config.max_seq_length,
            max_train_samples=config.max_train_samples,
            max_eval_samples=config.max_eval_samples,
            seed=config.seed,
            cache_dir=cache_dir,
        )
    except BaseException:
        shutil.rmtree(cache_dir, ignore_errors=True)
        raise


def _pull_run(mirror: RunMirror | None, job: TrainJob, store: ArtifactStore) -> Path | None:
    """Bring the run's history and checkpoints from the object store, if any (under the fence).

    Returns:
        The requested checkpoint's folder to consider resuming from: in the artifact folder
        itself with a local root; with an object store, in the local copy when the store holds
        it complete (else None: the mirror said why).
    """
    requested = job.request.resume_from_checkpoint
    if mirror is None:
        return store.resolve(requested) if requested else None
    mirror.pull_history(job.request.run_id)
    return mirror.pull_checkpoints(job.request.run_id, requested)


def _open_store(job: TrainJob) -> tuple[ArtifactStore, RunMirror | None]:
    """The attempt's artifact folder, and with an object-store root its mirror and the snapshot in it.

    The snapshot is downloaded here, in the child's ``loading`` phase, which the stall watchdog
    allows ``SLOW_PHASE_FACTOR`` times the step silence, rather than in the activity, whose
    event loop must stay free to heartbeat.
    """
    store = ArtifactStore(job.settings.artifact_dir)
    mirror = open_mirror(job.settings, store)
    if mirror is not None:
        mirror.pull_snapshot(job.request.dataset_snapshot)
    return store, mirror


def prepare(job: TrainJob, emit: Emit) -> PreparedRun:
    """Take the run folder over, load the model and data, and decide where to resume.

    With an object-store root, the snapshot, the run's history, its newest complete
    checkpoint and the requested one are first brought into the worker's local copy (see
    :mod:`.mirror`).

    Args:
        job: The attempt's job.
        emit: Receives phase pulses (the stall watchdog allows slow phases more time).

    Returns:
        The prepared run.

    Raises:
        ApplicationError: ``ConfigurationError``/``ArtifactNotFoundError`` for requests that
            cannot run; ``AttemptSupersededError`` when a newer attempt owns the run folder; a
            retryable ``ArtifactStoreError`` when the object store cannot be read.
    """
    request, config = job.request, job.request.config
    emit(PulseEvent(phase="loading"))
    store, mirror = _open_store(job)
    files = locate_snapshot(store, request.dataset_snapshot)
    source = resolve_model_source(config.model_name, store)
    # Before the run folder is touched: an unusable GPU sends the attempt elsewhere, unchanged.
    check_device_usable(job.device)
    fence = RunFence(store, request.run_id, request.fence, mirror.objects if mirror else None)
    fence.take_over()
    with fence.guard("prepare the run folder"):
        requested = _pull_run(mirror, job, store)
        resume = _resume_point(store, request.run_id, requested)
        staging = _fresh_staging(store, request.run_id)
        cache_dir = _fresh_cache(job, staging)
        attempt_seq = _record_attempt(job, store.run_dir(request.run_id), resume)
    model, tokenizer, finished = load_model(source, job, resume)
    resumed_plan = checkpoint_plan(resume.path) if resume else None
    plan = _first_plan(config, select_precision(job.device), resumed_plan)
    emit(PulseEvent(phase="tokenizing"))
    train_set, eval_set = _tokenize(job, files, tokenizer, cache_dir)
    return PreparedRun(
        job=job,
        store=store,
        fence=fence,
        source=source,
        plan=plan,
        resumed_plan=resumed_plan,
        model=model,
        tokenizer=tokenizer,
        train_set=train_set,
        eval_set=eval_set,
        resume=resume,
        finished=finished,
        attempt_seq=attempt_seq,
        staging=staging,
        cache_dir=cache_dir,
        mirror=mirror,
        requested=requested,
    )
