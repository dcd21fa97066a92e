"""Step one of a training attempt: take the run folder over, load, tokenize, choose where to resume.

Everything here happens before the first optimizer step; :func:`prepare` returns a
:class:`PreparedRun` that the training and publishing steps work from.
"""

import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durabert.gpu_worker import checkpoints, history, model_folder
from durabert.gpu_worker.data import load_tokenized, locate_snapshot
from durabert.gpu_worker.device import Precision, select_precision
from durabert.gpu_worker.events import PulseEvent, TrainingEvent, TrainJob
from durabert.gpu_worker.fencing import RunFence
from durabert.gpu_worker.model_loading import load_model_and_tokenizer
from durabert.gpu_worker.model_source import resolve_model_source
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.logging import get_logger
from durabert.shared.models import BertFineTuneConfig

log = get_logger(__name__)

Emit = Callable[[TrainingEvent], None]
"""Receives each event training produces."""
STAGING_DIR = "staging"
"""Folder of the attempts' private checkpoint staging folders inside a run folder."""


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
    precision: Precision
    """Numeric precision on this device."""
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


def _resume_point(job: TrainJob, store: ArtifactStore) -> checkpoints.Checkpoint | None:
    request = job.request
    requested = store.resolve(request.resume_from_checkpoint) if request.resume_from_checkpoint else None
    return checkpoints.choose_resume_checkpoint(store.checkpoints_dir(request.run_id), requested)


def _fresh_staging(run_dir: Path) -> Path:
    """A new private staging folder for this attempt; leftovers of dead attempts are removed."""
    # Runs under the fence: an attempt that still writes into its old staging folder is
    # superseded, and its publish (guarded) would fail anyway.
    parent = run_dir / STAGING_DIR
    if parent.is_dir():
        shutil.rmtree(parent, ignore_errors=True)
    model_folder.clear_staging(run_dir)
    staging = parent / f"attempt-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    return staging


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


def prepare(job: TrainJob, emit: Emit) -> PreparedRun:
    """Take the run folder over, load the model and data, and decide where to resume.

    Args:
        job: The attempt's job.
        emit: Receives phase pulses (the stall watchdog allows slow phases more time).

    Returns:
        The prepared run.

    Raises:
        ApplicationError: ``ConfigurationError``/``ArtifactNotFoundError`` for requests that
            cannot run; ``AttemptSupersededError`` when a newer attempt owns the run folder.
    """
    from transformers import set_seed

    request, config = job.request, job.request.config
    emit(PulseEvent(phase="loading"))
    store = ArtifactStore(job.settings.artifact_root)
    files = locate_snapshot(store, request.dataset_snapshot)
    source = resolve_model_source(config.model_name, store)
    fence = RunFence(store, request.run_id, request.fence)
    fence.take_over()
    with fence.guard("prepare the run folder"):
        resume = _resume_point(job, store)
        staging = _fresh_staging(store.run_dir(request.run_id))
        attempt_seq = _record_attempt(job, store.run_dir(request.run_id), resume)
    # Seed before building the head so a fresh start is reproducible (a resume loads the weights).
    set_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(
        source, config.model_name, request.dataset_snapshot.label_names
    )
    finished = finished_state(resume.path, config) if resume else None
    if finished is not None and resume is not None:
        # An attempt finished training but its result never reached Temporal. Resuming would
        # make the Trainer take one extra step when the checkpoint is mid-epoch: load its
        # weights and only evaluate and publish.
        model = type(model).from_pretrained(resume.path)
    emit(PulseEvent(phase="tokenizing"))
    train_set, eval_set = load_tokenized(
        files,
        request.dataset_snapshot,
        tokenizer,
        max_seq_length=config.max_seq_length,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
        seed=config.seed,
    )
    return PreparedRun(
        job=job,
        store=store,
        fence=fence,
        source=source,
        precision=select_precision(job.device),
        model=model,
        tokenizer=tokenizer,
        train_set=train_set,
        eval_set=eval_set,
        resume=resume,
        finished=finished,
        attempt_seq=attempt_seq,
        staging=staging,
    )
