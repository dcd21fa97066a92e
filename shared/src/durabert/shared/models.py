"""The Pydantic contract between the CLI, the workflows and the three workers.

The model names and their original fields follow the Temporal + BERT checkpointing
tutorial that durabert grew from, so its users recognise them. Every model forbids
unknown keys: a typo such as ``learning_rat`` is refused, never trained with a default.

Paths inside payloads (snapshots, checkpoints, models) are *relative to the artifact
root*, so workers that mount the shared store at different places agree on them.
"""

import re
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import to_json

DEFAULT_MODEL_NAME: Final = "sentence-transformers/all-MiniLM-L6-v2"
"""The offline default: the GPU worker maps this hub id to the packaged all-MiniLM-L6-v2."""

MAX_INFERENCE_TEXTS: Final = 256
"""Most texts one inference request may carry."""
MAX_INFERENCE_TEXT_CHARS: Final = 10_000
"""Most characters one inference text may have."""
MAX_INFERENCE_TEXTS_BYTES: Final = 1_048_576
"""Most bytes a request's texts may take encoded (UTF-8 JSON, as the data converter sends them).
Temporal refuses any payload over 2 MB, and the answer repeats the texts beside its predictions,
so 1 MiB leaves the answer room (256 predictions add about 20 KB)."""

RUN_ID_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
"""A run id is a safe folder name and a valid Kubernetes label value."""


def encoded_size(value: Sequence[str]) -> int:
    """Bytes texts take in a payload: UTF-8 JSON, escapes included, as the data converter writes them.

    Args:
        value: The texts.

    Returns:
        Their encoded size in bytes.
    """
    return len(to_json(list(value)))


def run_id_problem(value: str) -> str | None:
    """Say why a string is not a valid run id: the one place where run-id rules live.

    Args:
        value: A candidate run id (or a workflow id that must be one).

    Returns:
        None when it is valid, else what a run id must be.
    """
    if RUN_ID_PATTERN.fullmatch(value) and ".." not in value:
        return None
    return (
        "must be 1-63 characters of a-z, 0-9, '.', '_' or '-', start and end with a "
        "letter or digit, and contain no '..' (it names a folder and a Kubernetes label)"
    )


def _check_run_id(value: str) -> str:
    problem = run_id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_relative_path(value: str) -> str:
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "~")) or ".." in parts or not value.strip():
        raise ValueError("must be a path relative to the artifact root, without '..'")
    return value


RunId = Annotated[str, AfterValidator(_check_run_id)]
"""A validated run identifier."""
ArtifactPath = Annotated[str, AfterValidator(_check_relative_path)]
"""A path inside the artifact store, relative to its root."""
DataFiles = str | list[str] | dict[str, str | list[str]]
"""Local paths, globs or URLs as ``datasets.load_dataset(data_files=...)`` takes them."""


def _omitted(value: object) -> bool:
    """Whether an optional field added after 0.2 is left out of the payload (it is None).

    Activity workers are unversioned and serve every orchestrator build, and contract models
    refuse unknown keys: leaving such a field out while it says nothing keeps the payload
    readable by builds that predate it.
    """
    return value is None


class ContractModel(BaseModel):
    """Base of every contract model: unknown keys are errors and field docstrings are descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)


FILE_LOADERS: Final = frozenset({"json", "csv", "parquet"})
"""``dataset_name`` values that read ``data_files`` instead of a hub dataset."""


class _DatasetSource(ContractModel):
    """Where a dataset comes from and which columns hold text and labels."""

    dataset_name: str = Field(min_length=1)
    """A hub dataset id (e.g. ``glue``), or ``json``/``csv``/``parquet`` together with ``data_files``."""
    data_files: DataFiles | None = Field(default=None, validate_default=True)
    """Local paths, globs or URLs of the data files, for ``json``/``csv``/``parquet`` sources."""
    text_field: str = Field(default="text", min_length=1)
    """Column holding the text to classify."""
    text_pair_field: str | None = None
    """Optional second text column, for sentence-pair tasks."""
    label_field: str = Field(default="label", min_length=1)
    """Column holding the label: integers or strings."""
    eval_split_names: list[str] = Field(default_factory=lambda: ["validation", "test"])
    """Source splits used for evaluation, first present wins; otherwise ``eval_fraction`` is held out."""
    eval_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    """Share of train held out (with ``seed``) when the source has no eval split."""
    shuffle_before_select: bool = True
    """Shuffle with ``seed`` before taking ``max_*_samples``, never the first N rows of a sorted split."""
    seed: int = Field(default=42, ge=0)
    """Seed for shuffling, the held-out split and training."""
    trust_remote_code: bool = False
    """Allow a hub dataset to run its own loading script. Off unless asked for and the worker allows it."""
    dataset_config_name: str | None = Field(
        default=None, validation_alias=AliasChoices("dataset_config_name", "dataset_config")
    )
    """Hub dataset configuration name (e.g. ``sst2``); ``dataset_config`` is accepted as an old alias."""
    max_train_samples: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("max_train_samples", "max_samples")
    )
    """Most training rows to keep, taken after a seeded shuffle; ``max_samples`` is an old alias."""
    max_eval_samples: int | None = Field(default=None, ge=1)
    """Most evaluation rows to keep, taken after a seeded shuffle."""

    @field_validator("data_files")
    @classmethod
    def _files_need_a_file_loader(cls, value: DataFiles | None, info: ValidationInfo) -> DataFiles | None:
        loader = info.data.get("dataset_name")
        if loader in FILE_LOADERS and not value:
            raise ValueError(
                f"required when dataset_name is {loader!r} (one of {', '.join(sorted(FILE_LOADERS))}): "
                "give local paths, globs or URLs"
            )
        return value


class DatasetSnapshotRequest(_DatasetSource):
    """Request to freeze a dataset into a content-addressed snapshot."""

    run_id: RunId
    """Training run requesting this snapshot (for logs; the snapshot itself is shared by content)."""


class DatasetSnapshotResult(ContractModel):
    """A materialised snapshot, mirroring its ``manifest.json``."""

    snapshot_id: str
    """Stable id derived from the content hash: same content, same id."""
    dataset_name: str
    """Source dataset name as requested."""
    dataset_config_name: str | None = Field(
        default=None, validation_alias=AliasChoices("dataset_config_name", "dataset_config")
    )
    """Source configuration name as requested; ``dataset_config`` is accepted as an old alias."""
    num_train_samples: int = Field(ge=0)
    """Rows in the training split."""
    num_eval_samples: int = Field(ge=0)
    """Rows in the evaluation split."""
    data_hash: str
    """SHA-256 over every row's text(s) and label and the label names."""
    snapshot_timestamp: str
    """ISO 8601 time the snapshot was first written."""
    snapshot_path: ArtifactPath
    """Snapshot folder, relative to the artifact root."""
    label_names: list[str] = Field(min_length=2)
    """Sorted label names; a label's index is its id."""
    text_field: str
    """Text column in the stored splits."""
    text_pair_field: str | None = None
    """Second text column in the stored splits, if any."""
    label_field: str
    """Label column (integer ids) in the stored splits."""
    cache_hit: bool = False
    """True when the snapshot already existed and was reused without rewriting."""
    dataset_schema: dict[str, str] | None = None
    """Schema hints (field names, task type, label count), kept from the tutorial's result."""


class CheckpointInfo(ContractModel):
    """A complete checkpoint (or, with no ``path``, a progress point) of a training run."""

    epoch: float = Field(ge=0)
    """Training epoch (fractional) at this point."""
    step: int = Field(ge=0)
    """Global optimizer step."""
    path: ArtifactPath | None = None
    """Complete checkpoint folder relative to the artifact root; None for a progress-only update."""
    loss: float | None = None
    """Latest training loss, if one was logged."""
    timestamp: str
    """ISO 8601 time of the event."""
    max_steps: int | None = Field(default=None, ge=1)
    """Planned total optimizer steps."""
    attempt: int = Field(default=1, ge=1)
    """Activity attempt that produced the event."""


class WorkflowTimeouts(ContractModel):
    """Activity timeouts and retry pacing of the training workflow.

    They travel in the workflow input (recorded in history, so replay-safe) rather than
    in a worker's environment: the workflow that schedules the activities owns them.
    """

    snapshot_timeout_seconds: int = Field(default=3600, ge=10)
    """Most time one snapshot attempt may take."""
    snapshot_heartbeat_timeout_seconds: int = Field(default=120, ge=5)
    """A silent data worker is presumed dead after this long."""
    training_timeout_hours: float = Field(default=72.0, gt=0, le=24 * 30)
    """Most time one fine-tuning attempt may take."""
    retry_initial_interval_seconds: float = Field(default=2.0, ge=0.1, le=3600)
    """Pause before the first retry; doubles each retry."""
    retry_maximum_interval_seconds: float = Field(default=60.0, ge=0.1, le=3600)
    """Longest pause between retries."""
    continue_as_new_after_events: int = Field(default=10_000, ge=1, le=50_000)
    """Between attempts, continue as a new execution once the history has this many events
    (or earlier, when the server suggests it). Keeps a run of many attempts under Temporal's limit."""


class BertFineTuneConfig(_DatasetSource):
    """Everything a training run needs; the training workflow's input."""

    model_name: str = Field(default=DEFAULT_MODEL_NAME, min_length=1)
    """Hub model id or a local model folder. The default is the packaged all-MiniLM-L6-v2."""
    num_epochs: float = Field(default=1.0, gt=0, le=100)
    """Training epochs (ignored when ``max_steps`` is set)."""
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    """Total optimizer steps; overrides ``num_epochs`` when set."""
    batch_size: int = Field(default=16, ge=1, le=4096)
    """Per-device training batch size."""
    learning_rate: float = Field(default=5e-5, gt=0, le=1.0)
    """Peak learning rate of AdamW."""
    lr_schedule_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    """Optimizer steps over which the learning rate decays linearly from ``learning_rate`` to zero; at
    least the run's own steps (``max_steps``). None: the run's own steps. A longer horizon stops a run
    early in its schedule, as the same run with more steps would be at that step: successive halving
    sets it to ``base.max_steps`` for every rung, so a promoted trial continues the schedule it began."""
    max_seq_length: int = Field(default=128, ge=8, le=512)
    """Tokens per example after truncation."""
    task_type: Literal["classification"] = "classification"
    """Single-label sequence classification (the only task durabert trains today)."""
    use_gpu: bool = True
    """Use CUDA or Apple MPS when the worker has one; False forces CPU."""
    checkpoint_steps: int = Field(default=50, ge=1)
    """Save a checkpoint every N optimizer steps."""
    save_total_limit: int = Field(default=3, ge=1, le=100)
    """Most checkpoints kept on disk for the run (older ones are deleted)."""
    heartbeat_timeout_seconds: int = Field(default=60, ge=5, le=3600)
    """A training worker silent this long is presumed dead and the attempt is retried."""
    max_attempts: int = Field(default=5, ge=1, le=100)
    """Most fine-tuning attempts that fail *without progress* (first try included). Preemptions and
    attempts that saved a newer checkpoint than they started from do not count: see ``max_preemptions``."""
    max_preemptions: int = Field(default=1000, ge=0, le=100_000)
    """Ceiling on attempts that ended as a preemption or after progress; stops a run preempted forever."""
    stall_timeout_seconds: int = Field(default=600, ge=10, le=24 * 3600)
    """Kill and retry an attempt whose training child reports no step (nor evaluation batch) for this
    long. Loading, tokenizing and publishing get ``SLOW_PHASE_FACTOR`` times as long."""
    continue_run: bool = False
    """Extend an earlier run with this ``run_id`` (finished or failed) from its newest checkpoint, e.g.
    to a larger ``max_steps``, instead of refusing the id. The config change is recorded in the run."""
    timeouts: WorkflowTimeouts = Field(default_factory=WorkflowTimeouts)
    """Activity timeouts and retry pacing."""
    run_id: RunId | None = None
    """Run identifier (folder and workflow id); the workflow id when empty, which must then be a valid
    run id itself."""

    @model_validator(mode="after")
    def _schedule_covers_the_run(self) -> "BertFineTuneConfig":
        horizon, steps = self.lr_schedule_steps, self.max_steps
        if horizon is not None and steps is not None and horizon < steps:
            raise ValueError(
                f"lr_schedule_steps ({horizon}) must be at least max_steps ({steps}): "
                "the learning rate would reach zero before training ends"
            )
        return self

    def snapshot_request(self, run_id: str) -> DatasetSnapshotRequest:
        """Build the data worker's request for this config.

        Args:
            run_id: The run id.

        Returns:
            The snapshot request with this config's source, fields and sampling.
        """
        return DatasetSnapshotRequest(
            **self.model_dump(include=set(_DatasetSource.model_fields)), run_id=run_id
        )


SLOW_PHASE_FACTOR: Final = 5
"""Loading, tokenizing and publishing may stay silent this many times ``stall_timeout_seconds``."""


class AttemptFence(ContractModel):
    """Identifies one fine-tuning attempt, so that at most one attempt writes a run's folder.

    Attempts of one workflow chain (a workflow and its continue-as-new successors) are ordered by
    ``seq``; a newer chain (``continue_run``) takes over from an older one.
    """

    workflow_id: str
    """Workflow id of the run (equals the run id)."""
    chain_id: str
    """First execution run id of the workflow chain that owns the run."""
    seq: int = Field(ge=1)
    """Attempt number within the chain, never reused (carried across continue-as-new)."""


class BertFineTuneRequest(ContractModel):
    """Input of the ``fine_tune_bert`` activity."""

    run_id: RunId
    """Run identifier; artifacts go to ``runs/<run_id>/``."""
    config: BertFineTuneConfig
    """The run's configuration."""
    dataset_snapshot: DatasetSnapshotResult
    """The snapshot to train on (training never reads the raw source)."""
    resume_from_checkpoint: ArtifactPath | None = None
    """Latest checkpoint the workflow knows; the worker also scans the run folder for a newer complete one."""
    attempt: int = Field(default=1, ge=1)
    """Attempt number as counted by the workflow, which retries training itself (1 = first)."""
    fence: AttemptFence | None = None
    """This attempt's identity for fencing the run folder; None outside a workflow (tests, benchmarks)."""


_LEGACY_RESULT_FIELDS: Final = (
    "inferred_text_field",
    "inferred_text_pair_field",
    "inferred_label_field",
    "inferred_task_type",
    "inferred_num_labels",
)


class BertFineTuneResult(ContractModel):
    """Outcome of a fine-tuning run."""

    run_id: RunId
    """Echoed run identifier."""
    config: BertFineTuneConfig
    """Configuration actually used."""
    train_loss: float
    """Mean training loss reported by the Trainer."""
    eval_metrics: dict[str, float] | None = None
    """Metrics of the final evaluation (``eval_loss``, ``eval_accuracy``, ...)."""
    training_time_seconds: float = Field(ge=0)
    """Wall time of the last attempt's training, in seconds."""
    num_parameters: int = Field(ge=0)
    """Trainable parameters of the model."""
    dataset_snapshot: DatasetSnapshotResult | None = None
    """Snapshot trained on."""
    total_checkpoints_saved: int = Field(ge=0)
    """Checkpoints saved over all attempts."""
    global_step: int = Field(ge=0)
    """Optimizer steps completed at the end of training."""
    resumed_from_step: int | None = None
    """Step of the checkpoint the final attempt resumed from; None when it never resumed."""
    final_checkpoint: CheckpointInfo | None = None
    """The run's newest complete checkpoint at the end (what ``continue_run`` would extend from)."""
    attempts: int = Field(ge=1)
    """Fine-tuning attempts over the whole run, the one that finished included."""
    preemptions: int = Field(default=0, ge=0)
    """Attempts that ended as a preemption (worker shutdown) or after saving progress."""
    failed_attempts: int = Field(default=0, ge=0)
    """Attempts that failed without progress (these count against ``max_attempts``)."""
    device: str
    """Device trained on: ``cuda``, ``mps`` or ``cpu``."""
    model_path: ArtifactPath
    """Final model folder relative to the artifact root (loadable by ``transformers.pipeline``)."""
    label_names: list[str] = Field(default_factory=list)
    """Class names; a label's index is its id."""
    per_device_batch_size: int | None = Field(default=None, ge=1, exclude_if=_omitted)
    """Examples per forward pass of the final attempt when out-of-memory retries lowered it below
    ``config.batch_size`` (``gradient_accumulation_steps`` makes the batch size up, so the result is
    the same); None: the configured batch size fitted."""
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, exclude_if=_omitted)
    """Forward passes per optimizer step in that case; None: one."""
    precision: str | None = Field(default=None, exclude_if=_omitted)
    """Numeric precision (``bf16``, ``fp16``, ``fp32``) of the final attempt when it resumed a checkpoint
    trained in another one (a resume onto another device); None otherwise (the model manifest
    always records the precision)."""
    resumed_precision: str | None = Field(default=None, exclude_if=_omitted)
    """Precision the resumed checkpoint was trained in, in that case."""

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_fields(cls, data: Any) -> Any:
        # Results recorded before 0.2 repeated the snapshot's fields as ``inferred_*``: the
        # snapshot (``dataset_snapshot``) is their one home now; old payloads still load.
        if isinstance(data, dict) and any(key in data for key in _LEGACY_RESULT_FIELDS):
            return {key: value for key, value in data.items() if key not in _LEGACY_RESULT_FIELDS}
        return data


class BertInferenceRequest(ContractModel):
    """Input of inference: texts to classify with a finished run's model."""

    run_id: RunId
    """Run whose final model to use."""
    texts: list[Annotated[str, Field(max_length=MAX_INFERENCE_TEXT_CHARS)]] = Field(
        min_length=1, max_length=MAX_INFERENCE_TEXTS
    )
    """Texts to classify: 1 to 256 of at most 10,000 characters each, 1 MiB in all once encoded."""
    max_seq_length: int = Field(default=128, ge=8, le=512)
    """Tokens per text after truncation."""
    use_gpu: bool = True
    """Use CUDA or Apple MPS when the worker has one."""
    batch_size: int | None = Field(default=None, ge=1, le=1024, exclude_if=_omitted)
    """Ignored: the worker sizes forward passes across requests (``DURABERT_INFERENCE__MAX_BATCH_SIZE``).
    Still accepted so that requests from older clients, and inference workflows started by them, run."""
    timeout_seconds: int = Field(default=300, ge=5, le=24 * 3600)
    """Most time the inference activity may take once a worker has it (model load included)."""
    queue_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Most time the request may wait for a GPU worker to take it; then it fails with a timeout that
    ``durabert infer`` reports (the client fills it from ``DURABERT_INFERENCE__QUEUE_TIMEOUT_SECONDS``)."""

    @field_validator("texts")
    @classmethod
    def _texts_fit_a_payload(cls, texts: list[str]) -> list[str]:
        """Refuse texts whose encoded size would not fit Temporal's payload limit (named ``texts``)."""
        size = encoded_size(texts)
        if size > MAX_INFERENCE_TEXTS_BYTES:
            raise ValueError(
                f"the texts encode to {size:,} bytes, over the {MAX_INFERENCE_TEXTS_BYTES:,} one request "
                "may carry (Temporal refuses payloads over 2 MB and the answer repeats the texts); "
                "send fewer or shorter texts per request, or score a whole dataset with `durabert predict`"
            )
        return texts


class BertInferenceResult(ContractModel):
    """Predictions for a batch of texts."""

    run_id: RunId
    """Run whose model was used."""
    texts: list[str]
    """The classified texts, in order."""
    predicted_labels: list[int]
    """Predicted class id per text."""
    predicted_label_names: list[str]
    """Predicted class name per text."""
    confidences: list[float]
    """Softmax probability of the predicted class per text."""
    label_names: list[str]
    """All class names of the model; a label's index is its id."""
    device: str = "cpu"
    """Device the model ran on."""


TrainingStage = Literal["pending", "claiming", "snapshotting", "training", "completed", "failed", "cancelled"]
"""Where a training workflow is."""
TrainingPhase = Literal[
    "starting", "loading", "tokenizing", "training", "evaluating", "publishing", "stopping"
]
"""What a running fine-tuning attempt is doing (live, from its heartbeat)."""


class TrainingHeartbeat(ContractModel):
    """Live state of a fine-tuning attempt: its heartbeat details, and the details of its failure.

    Heartbeat details cost no workflow history, so this is how step, loss and the newest
    checkpoint reach ``durabert status``/``watch`` (through ``describe``) while a run trains.
    When an attempt fails, the workflow reads the same record from the failure (the
    ``ApplicationError`` details, or the last heartbeat of a timed-out attempt) to resume from
    its newest checkpoint and to tell progress from a failure.
    """

    phase: TrainingPhase = "starting"
    """What the attempt is doing."""
    step: int = Field(default=0, ge=0)
    """Latest optimizer step."""
    max_steps: int | None = Field(default=None, ge=1)
    """Planned total optimizer steps, once known."""
    epoch: float = Field(default=0.0, ge=0)
    """Latest (fractional) epoch."""
    loss: float | None = None
    """Latest logged training loss."""
    latest_checkpoint: CheckpointInfo | None = None
    """Newest complete checkpoint of the run, this attempt's or the one it resumed from."""
    resumed_from_step: int | None = None
    """Step of the checkpoint this attempt resumed from; None for a fresh start."""
    attempt: int = Field(default=1, ge=1)
    """Attempt that sent the record."""
    pid: int | None = None
    """Process id of the training child (for operators and tests)."""
    device: str | None = Field(default=None, exclude_if=_omitted)
    """Device the attempt trains on (``cuda``, ``mps`` or ``cpu``), so a CPU fallback shows in
    ``durabert status``; None before it is known."""
    updated_at: str | None = None
    """ISO 8601 time of the record."""


class TrainingProgress(ContractModel):
    """Answer of the ``get_progress`` query."""

    run_id: str | None = None
    """Run identifier, once normalised."""
    stage: TrainingStage = "pending"
    """Current stage of the workflow."""
    snapshot_id: str | None = None
    """Snapshot being trained on, once known."""
    step: int = Field(default=0, ge=0)
    """Latest optimizer step reported."""
    max_steps: int | None = None
    """Planned total steps, once training has started."""
    epoch: float = 0.0
    """Latest (fractional) epoch reported."""
    loss: float | None = None
    """Latest training loss reported."""
    latest_checkpoint: CheckpointInfo | None = None
    """Newest complete checkpoint."""
    checkpoints_saved: int = Field(default=0, ge=0)
    """Checkpoints reported so far over all attempts."""
    attempt: int = Field(default=0, ge=0)
    """Fine-tuning attempt that sent the latest event."""
    resumes: int = Field(default=0, ge=0)
    """Times training restarted from a checkpoint."""
    error: str | None = None
    """Failure message when the stage is ``failed``."""
    phase: TrainingPhase | None = None
    """What the running attempt is doing (live, from its heartbeat); None between attempts."""
    preemptions: int = Field(default=0, ge=0)
    """Attempts that ended as a preemption or after saving progress (do not use up ``max_attempts``)."""
    failures: int = Field(default=0, ge=0)
    """Attempts that failed without progress (count against ``max_attempts``)."""
    continued_as_new: int = Field(default=0, ge=0)
    """Times the workflow continued as a new execution to keep its history short."""
    updated_at: str | None = None
    """ISO 8601 time of the newest live figure (heartbeat), when one was merged in."""

    def with_heartbeat(self, heartbeat: "TrainingHeartbeat") -> "TrainingProgress":
        """Merge the running attempt's live heartbeat into the workflow's durable view.

        The workflow learns step, loss and checkpoints only when an attempt ends (to keep its
        history bounded); the pending activity's heartbeat carries the live figures.

        Args:
            heartbeat: Details of the pending fine-tuning activity's latest heartbeat.

        Returns:
            A copy with live step, epoch, loss, phase and the newer of the two latest checkpoints.
        """
        update: dict[str, Any] = {
            "phase": heartbeat.phase,
            "updated_at": heartbeat.updated_at,
            "max_steps": heartbeat.max_steps or self.max_steps,
        }
        # A new attempt reports step 0 until its Trainer starts: keep the known step meanwhile.
        if heartbeat.step >= self.step or heartbeat.phase not in ("starting", "loading", "tokenizing"):
            update |= {"step": heartbeat.step, "epoch": heartbeat.epoch, "loss": heartbeat.loss or self.loss}
        live, known = heartbeat.latest_checkpoint, self.latest_checkpoint
        if live is not None and (known is None or live.step > known.step):
            update["latest_checkpoint"] = live
        return self.model_copy(update=update)


class TrainingCarry(ContractModel):
    """State one training execution hands to the next when it continues as new."""

    snapshot: DatasetSnapshotResult
    """The snapshot being trained on (never taken again)."""
    progress: TrainingProgress
    """Progress so far: counters, latest checkpoint, attempt."""
    next_seq: int = Field(ge=1)
    """Sequence number of the next attempt (fencing)."""
    retry_pause_seconds: float = Field(gt=0)
    """Pause before the next attempt (backoff state)."""


class RunClaimRequest(ContractModel):
    """Input of ``claim_run``: make ``runs/<run_id>`` this workflow chain's, or refuse the id."""

    run_id: RunId
    """The run id (the workflow id)."""
    chain_id: str = Field(min_length=1)
    """First execution run id of the claiming workflow chain."""
    continue_run: bool = False
    """Take over an earlier run's folder on purpose (``BertFineTuneConfig.continue_run``)."""
    config: BertFineTuneConfig
    """The claiming run's configuration (recorded; a continuation records what changed)."""


class RunClaimResult(ContractModel):
    """Outcome of ``claim_run``."""

    run_id: RunId
    """The claimed run id."""
    continued_from_chain: str | None = None
    """Chain id of the earlier run this one continues, when ``continue_run`` took one over."""
    config_changes: dict[str, Any] = Field(default_factory=dict)
    """Fields whose value differs from the earlier run's config (``{field: [old, new]}``)."""


# -- batch scoring (``durabert predict``) --------------------------------------------------------

DEFAULT_SCORING_CHUNK_ROWS: Final = 4096
"""Rows per stored chunk of batch scoring: what a killed worker may have to score again."""
DEFAULT_SCORING_BATCH_SIZE: Final = 64
"""Texts per forward pass of batch scoring."""
SCORING_ROWS_FILE: Final = "rows.parquet"
"""File of a scoring snapshot folder holding the rows to score: ``row_index`` (int64) and ``text``."""


class ScoringSnapshotRequest(ContractModel):
    """Input of ``create_scoring_snapshot``: a dataset as training takes it, without labels."""

    run_id: RunId
    """Run whose model will score the rows (for logs; the snapshot itself is shared by content)."""
    dataset_name: str = Field(min_length=1)
    """A hub dataset id, or ``json``/``csv``/``parquet`` together with ``data_files``."""
    dataset_config_name: str | None = Field(
        default=None, validation_alias=AliasChoices("dataset_config_name", "dataset_config")
    )
    """Hub dataset configuration name; ``dataset_config`` is accepted as an alias, as in training."""
    data_files: DataFiles | None = Field(default=None, validate_default=True)
    """Local paths, globs or URLs of the data files, for ``json``/``csv``/``parquet`` sources."""
    text_field: str = Field(default="text", min_length=1)
    """Column holding the text to classify; every row must have one (rows are never dropped)."""
    max_samples: int | None = Field(default=None, ge=1)
    """Score only the first N rows of the ``train`` split, in input order (never a shuffled sample)."""
    trust_remote_code: bool = False
    """Allow a hub dataset to run its own loading script (only where the data worker allows it)."""

    @field_validator("data_files")
    @classmethod
    def _files_need_a_file_loader(cls, value: DataFiles | None, info: ValidationInfo) -> DataFiles | None:
        # The same rule as training's source, from its one home.
        checked: DataFiles | None = _DatasetSource._files_need_a_file_loader(value, info)
        return checked


class ScoringSnapshotResult(ContractModel):
    """A materialised scoring snapshot: ``snapshots/<snapshot_id>/rows.parquet`` in input order."""

    snapshot_id: str = Field(min_length=1)
    """Stable id derived from the rows' content and order: same rows, same id."""
    snapshot_path: ArtifactPath
    """Snapshot folder, relative to the artifact root."""
    num_rows: int = Field(ge=1)
    """Rows to score."""
    data_hash: str
    """SHA-256 over every row's text, in order."""
    cache_hit: bool = False
    """True when the snapshot already existed and was reused."""


class BertBatchInferenceRequest(ScoringSnapshotRequest):
    """Input of ``BertBatchInferenceWorkflow``: score a whole dataset with a finished run's model."""

    max_seq_length: int = Field(default=128, ge=8, le=512)
    """Tokens per text after truncation."""
    use_gpu: bool = True
    """Use CUDA or Apple MPS when the worker has one."""
    chunk_rows: int = Field(default=DEFAULT_SCORING_CHUNK_ROWS, ge=1, le=10_000_000)
    """Rows per stored chunk: a killed worker resumes at the first chunk not stored complete."""
    batch_size: int = Field(default=DEFAULT_SCORING_BATCH_SIZE, ge=1, le=4096)
    """Texts per forward pass."""
    heartbeat_timeout_seconds: int = Field(default=120, ge=5, le=3600)
    """A silent scoring worker is presumed dead after this long; the next attempt resumes at the first
    missing chunk."""
    timeout_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    """Most time one scoring (or snapshot) attempt may take."""
    max_attempts: int = Field(default=5, ge=1, le=100)
    """Most attempts of each step (the first included) before the workflow fails."""

    def snapshot_request(self) -> ScoringSnapshotRequest:
        """Build the data worker's request for this request's dataset.

        Returns:
            The scoring snapshot request.
        """
        return ScoringSnapshotRequest(**self.model_dump(include=set(ScoringSnapshotRequest.model_fields)))


class BatchScoringRequest(ContractModel):
    """Input of the ``score_dataset`` activity."""

    request: BertBatchInferenceRequest
    """The workflow's request (run, sizes, device)."""
    snapshot: ScoringSnapshotResult
    """The rows to score (scoring never reads the raw source)."""


class BertBatchInferenceResult(ContractModel):
    """Outcome of scoring a whole dataset."""

    run_id: RunId
    """Run whose model scored the rows."""
    snapshot_id: str
    """Scoring snapshot scored."""
    num_rows: int = Field(ge=0)
    """Rows in the output, each input row exactly once."""
    output_path: ArtifactPath
    """The Parquet file (``row_index``, the text, ``label``, ``label_name``, ``confidence``, in input
    order) under ``runs/<run_id>/predictions/<snapshot_id>/``, relative to the artifact root."""
    chunks: int = Field(ge=0)
    """Chunks the rows were scored in."""
    resumed_chunks: int = Field(ge=0)
    """Chunks found stored complete by earlier attempts and not scored again (all of them when a
    finished output was reused)."""
    label_names: list[str] = Field(default_factory=list)
    """All class names of the model; a label's index is its id."""
    device: str = "cpu"
    """Device the rows were scored on."""


ScoringStage = Literal["pending", "snapshotting", "scoring", "completed", "failed", "cancelled"]
"""Where a batch scoring workflow is."""


class ScoringHeartbeat(ContractModel):
    """Live state of a scoring attempt: the heartbeat details ``durabert watch`` shows."""

    chunks_done: int = Field(default=0, ge=0)
    """Chunks stored complete, earlier attempts' included."""
    chunks: int = Field(default=0, ge=0)
    """Chunks in all."""
    rows_done: int = Field(default=0, ge=0)
    """Rows in the chunks stored complete."""
    num_rows: int = Field(default=0, ge=0)
    """Rows in all."""
    resumed_chunks: int = Field(default=0, ge=0)
    """Chunks this attempt found complete and skipped."""
    device: str | None = None
    """Device the attempt scores on."""
    updated_at: str | None = None
    """ISO 8601 time of the record."""


class BatchInferenceProgress(ContractModel):
    """Answer of the batch scoring workflow's ``get_progress`` query, merged with the live heartbeat."""

    run_id: str | None = None
    """Run whose model scores the rows."""
    stage: ScoringStage = "pending"
    """Current stage of the workflow."""
    snapshot_id: str | None = None
    """Scoring snapshot, once taken."""
    num_rows: int = Field(default=0, ge=0)
    """Rows to score, once known."""
    chunks: int = Field(default=0, ge=0)
    """Chunks in all, once known."""
    chunks_done: int = Field(default=0, ge=0)
    """Chunks stored complete (live, from the heartbeat)."""
    rows_done: int = Field(default=0, ge=0)
    """Rows in those chunks."""
    resumed_chunks: int = Field(default=0, ge=0)
    """Chunks the running (or last) attempt found complete and skipped."""
    output_path: str | None = None
    """The output Parquet, once written."""
    error: str | None = None
    """Failure message when the stage is ``failed``."""

    def with_heartbeat(self, heartbeat: ScoringHeartbeat) -> "BatchInferenceProgress":
        """Merge the running attempt's heartbeat into the workflow's durable view.

        Args:
            heartbeat: Details of the pending ``score_dataset`` activity's latest heartbeat.

        Returns:
            A copy with the live chunk and row counts.
        """
        return self.model_copy(
            update={
                "chunks": heartbeat.chunks or self.chunks,
                "num_rows": heartbeat.num_rows or self.num_rows,
                "chunks_done": max(self.chunks_done, heartbeat.chunks_done),
                "rows_done": max(self.rows_done, heartbeat.rows_done),
                "resumed_chunks": heartbeat.resumed_chunks,
            }
        )


# -- evaluation (``durabert eval``) ----------------------------------------------------------------

EVALUATION_SEED: Final = 42
"""Seed of the evaluation snapshot's content order: with ``max_samples``, which rows are evaluated
depends on the content alone, so two evaluations of the same data and limit see the same rows."""


class BertEvaluationRequest(ContractModel):
    """Input of ``BertEvaluationWorkflow``: measure a finished run's model on a labelled dataset."""

    run_id: RunId
    """Run whose finished model is evaluated."""
    dataset_name: str = Field(min_length=1)
    """A hub dataset id, or ``json``/``csv``/``parquet`` together with ``data_files``."""
    dataset_config_name: str | None = Field(
        default=None, validation_alias=AliasChoices("dataset_config_name", "dataset_config")
    )
    """Hub dataset configuration name; ``dataset_config`` is accepted as an alias, as in training."""
    data_files: DataFiles | None = Field(default=None, validate_default=True)
    """Local paths, globs or URLs of the data files, for ``json``/``csv``/``parquet`` sources."""
    text_field: str = Field(default="text", min_length=1)
    """Column holding the text to classify."""
    label_field: str = Field(default="label", min_length=1)
    """Column holding the true label (names or integers, matched by name to the model's labels)."""
    split: str = Field(default="train", min_length=1)
    """Source split evaluated, every row of it. Data files given as a path, glob or list load as
    ``train`` (the default); name the hub dataset's test split (``test``, ``validation``) otherwise."""
    max_samples: int | None = Field(default=None, ge=1)
    """Evaluate at most N rows, taken after a seeded content shuffle (never the first N of a sorted file)."""
    trust_remote_code: bool = False
    """Allow a hub dataset to run its own loading script (only where the data worker allows it)."""
    max_seq_length: int = Field(default=128, ge=8, le=512)
    """Tokens per text after truncation (use the run's own ``max_seq_length``)."""
    batch_size: int = Field(default=DEFAULT_SCORING_BATCH_SIZE, ge=1, le=4096)
    """Texts per forward pass."""
    use_gpu: bool = True
    """Use CUDA or Apple MPS when the worker has one."""
    heartbeat_timeout_seconds: int = Field(default=120, ge=5, le=3600)
    """A silent evaluating worker is presumed dead after this long; the next attempt starts again."""
    timeout_hours: float = Field(default=6.0, gt=0, le=24 * 30)
    """Most time one evaluation (or snapshot) attempt may take."""
    max_attempts: int = Field(default=5, ge=1, le=100)
    """Most attempts of each step (the first included) before the workflow fails."""

    @field_validator("data_files")
    @classmethod
    def _files_need_a_file_loader(cls, value: DataFiles | None, info: ValidationInfo) -> DataFiles | None:
        # The same rule as training's source, from its one home.
        checked: DataFiles | None = _DatasetSource._files_need_a_file_loader(value, info)
        return checked

    @property
    def evaluates_train_split(self) -> bool:
        """Whether the source's ``train`` split is evaluated (then the snapshot's two splits hold it)."""
        return self.split == "train"

    def snapshot_request(self) -> DatasetSnapshotRequest:
        """Build the data worker's training-snapshot request that keeps every row of ``split``.

        For ``train`` the snapshot holds out a share as its eval split: together, eval then train
        are the whole split in seeded content order, so the first ``max_samples`` of them are a
        seeded sample. For another split, that split is the snapshot's eval split, whole (up to
        ``max_samples``), and one train row is stored but never evaluated.

        Returns:
            The snapshot request.
        """
        common = self.model_dump(
            include={"run_id", "dataset_name", "dataset_config_name", "data_files", "text_field"}
            | {"label_field", "trust_remote_code"}
        )
        if self.evaluates_train_split:
            return DatasetSnapshotRequest(
                **common, eval_split_names=[], seed=EVALUATION_SEED, max_train_samples=self.max_samples
            )
        return DatasetSnapshotRequest(
            **common,
            eval_split_names=[self.split],
            seed=EVALUATION_SEED,
            max_train_samples=1,
            max_eval_samples=self.max_samples,
        )


class EvaluateBertRequest(ContractModel):
    """Input of the ``evaluate_bert`` activity."""

    request: BertEvaluationRequest
    """The workflow's request (run, split, sizes, device)."""
    snapshot: DatasetSnapshotResult
    """The labelled rows to evaluate (evaluation never reads the raw source)."""


class ClassMetrics(ContractModel):
    """Precision, recall, F1 and support of one of the model's labels."""

    label: str
    """The label's name."""
    precision: float = Field(ge=0, le=1)
    """Share of the rows predicted as this label that truly are (0 when none is predicted)."""
    recall: float = Field(ge=0, le=1)
    """Share of the rows truly of this label that are predicted as it (0 when none is)."""
    f1: float = Field(ge=0, le=1)
    """Harmonic mean of precision and recall."""
    support: int = Field(ge=0)
    """Rows truly of this label."""


class BertEvaluationResult(ContractModel):
    """Metrics of a finished run's model on a labelled dataset, and where the report is stored."""

    run_id: RunId
    """Run whose model was evaluated."""
    snapshot_id: str
    """Snapshot of the evaluated rows."""
    split: str
    """Source split evaluated."""
    num_samples: int = Field(ge=1)
    """Rows evaluated."""
    label_names: list[str]
    """The model's class names; the order of ``per_class`` and of the confusion matrix."""
    accuracy: float = Field(ge=0, le=1)
    """Share of rows whose predicted label is the true one."""
    macro_f1: float = Field(ge=0, le=1)
    """Unweighted mean F1 over the labels that occur as a true or a predicted label (scikit-learn's
    ``f1_score(average="macro")``); a model label absent from both is listed but not averaged."""
    per_class: list[ClassMetrics]
    """Precision, recall, F1 and support of every model label, in ``label_names`` order."""
    confusion_matrix: list[list[int]]
    """Row counts: rows are true labels, columns predicted labels, both in ``label_names`` order."""
    report_path: ArtifactPath
    """The report JSON under ``runs/<run_id>/evaluations/<snapshot_id>/``, relative to the artifact root;
    the confusion-matrix PNG is beside it."""
    device: str = "cpu"
    """Device the rows were scored on."""


EvaluationStage = Literal["pending", "snapshotting", "evaluating", "completed", "failed", "cancelled"]
"""Where an evaluation workflow is."""


class EvaluationProgress(ContractModel):
    """Answer of the evaluation workflow's ``get_progress`` query."""

    run_id: str | None = None
    """Run whose model is evaluated."""
    stage: EvaluationStage = "pending"
    """Current stage of the workflow."""
    snapshot_id: str | None = None
    """Snapshot of the rows, once taken."""
    report_path: str | None = None
    """The report JSON, once written."""
    error: str | None = None
    """Failure message when the stage is ``failed``."""


# -- hyperparameter sweeps (``durabert sweep``) -----------------------------------------------------

MAX_SWEEP_TRIALS: Final = 99
"""Most trials one sweep may run: trial run ids are ``<sweep_id>-<nn>`` with two digits."""
SWEEP_ID_MAX_LENGTH: Final = 60
"""Longest sweep id: ``-<nn>`` must still fit the 63 characters of a run id."""
SWEEP_FIXED_FIELDS: Final = frozenset({"run_id", "continue_run", "timeouts"})
"""Training fields a sweep sets itself (or shares from ``base``), never a swept parameter."""

SweepStrategy = Literal["grid", "successive_halving"]
"""How a sweep spends its steps: every trial to the end, or the best ``1/eta`` per rung."""
TrialState = Literal["pending", "training", "promoted", "stopped", "completed", "failed", "cancelled"]
"""Where a trial is: ``stopped`` = not promoted at a rung (its model is the rung's)."""
SweepStage = Literal["pending", "training", "completed", "failed", "cancelled"]
"""Where a sweep workflow is."""


def _check_sweep_id(value: str) -> str:
    if len(value) > SWEEP_ID_MAX_LENGTH:
        raise ValueError(f"must be at most {SWEEP_ID_MAX_LENGTH} characters, so '-<nn>' can name each trial")
    return _check_run_id(value)


SweepId = Annotated[str, AfterValidator(_check_sweep_id)]
"""A validated sweep identifier: a run id short enough to take a ``-<nn>`` trial suffix."""


class BertSweepConfig(ContractModel):
    """Input of ``BertSweepWorkflow``: a grid of training configs and how to search it."""

    sweep_id: SweepId | None = None
    """Sweep identifier (the workflow id, same rules as a run id, at most 60 characters); trial ``n``
    is the run ``<sweep_id>-<nn>``. The workflow id when empty."""
    base: BertFineTuneConfig
    """Training config whose fields every trial shares (its ``run_id`` and ``continue_run`` are set
    per trial); ``base.max_steps`` is the last rung of successive halving."""
    parameters: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(min_length=1)
    """Training field name to the values to try; the grid is the product, last field varying fastest."""
    strategy: SweepStrategy = "grid"
    """``grid``: every trial trains to ``base.max_steps``; ``successive_halving``: rungs of growing steps."""
    max_concurrent_trials: int = Field(default=4, ge=1, le=MAX_SWEEP_TRIALS)
    """Most trials training at once (the GPU workers' slots still bound the real concurrency)."""
    eta: int = Field(default=2, ge=2, le=100)
    """Successive halving keeps the best ``1/eta`` of a rung's trials and multiplies the steps by ``eta``."""
    min_steps: int | None = Field(default=None, ge=1)
    """Steps of the first rung of successive halving (required for it, below ``base.max_steps``)."""
    num_trials: int | None = Field(default=None, ge=1, le=MAX_SWEEP_TRIALS)
    """Sample this many distinct grid points instead of the whole grid."""
    seed: int | None = Field(default=None, ge=0)
    """Seed of that sampling, for a reproducible sample; None: the workflow's own deterministic random."""
    metric: str = Field(default="eval_accuracy", min_length=1)
    """Held-out metric that ranks trials, as the training result names it (``eval_accuracy``...)."""
    mode: Literal["max", "min"] = "max"
    """Whether a larger (``max``) or smaller (``min``) metric is better."""

    @field_validator("parameters")
    @classmethod
    def _parameters_are_training_fields(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name in value:
            if name not in BertFineTuneConfig.model_fields:
                raise ValueError(f"{name!r} is not a training config field")
            if name in SWEEP_FIXED_FIELDS:
                raise ValueError(f"{name!r} is set by the sweep itself and cannot be swept")
        return value

    @model_validator(mode="after")
    def _check_search(self) -> "BertSweepConfig":
        for name, values in self.parameters.items():
            for item in values:
                # Each value must make a valid trial config: refuse it now, not in trial 37.
                BertFineTuneConfig.model_validate(self.base.model_dump() | {name: item})
        size = 1
        for values in self.parameters.values():
            size *= len(values)
        if min(size, self.num_trials or size) > MAX_SWEEP_TRIALS:
            raise ValueError(
                f"the grid has {size} points, more than {MAX_SWEEP_TRIALS}: set num_trials to sample some"
            )
        if self.strategy == "successive_halving":
            self._check_halving()
        return self

    def _check_halving(self) -> None:
        for name in ("max_steps", "lr_schedule_steps"):
            if name in self.parameters:
                raise ValueError(f"successive_halving sets {name} per rung: it cannot be a swept parameter")
        if self.base.max_steps is None or self.min_steps is None:
            raise ValueError("successive_halving needs base.max_steps (last rung) and min_steps (first rung)")
        if self.min_steps >= self.base.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must be < base.max_steps ({self.base.max_steps})")


class SweepPoint(ContractModel):
    """One evaluation of a trial: its metric after a rung."""

    step: int = Field(ge=0)
    """Optimizer steps the trial had trained when it was evaluated."""
    metric: float | None = None
    """The sweep's metric then (None when the evaluation did not report it)."""


class SweepTrial(ContractModel):
    """One trial of a sweep: a training run with some parameters."""

    run_id: RunId
    """The trial's run id, ``<sweep_id>-<nn>``: its folder, workflow id and model."""
    params: dict[str, Any]
    """The swept parameters' values of this trial."""
    global_step: int = Field(default=0, ge=0)
    """Optimizer steps the trial's model has trained (at its last finished rung)."""
    metric: float | None = None
    """The sweep's metric at its last finished rung."""
    eval_loss: float | None = None
    """Held-out loss at its last finished rung: breaks ties of the metric (many barely trained trials
    tie on accuracy, all predicting the majority class)."""
    state: TrialState = "pending"
    """Where the trial is."""
    rung: int = Field(default=-1, ge=-1)
    """Last rung the trial finished (0 = the first); -1 before it finished one."""
    steps_trained: int = Field(default=0, ge=0)
    """Optimizer steps trained over all its rungs (resumed steps not counted twice)."""
    points: list[SweepPoint] = Field(default_factory=list)
    """The metric after each finished rung, for the plot."""
    error: str | None = None
    """Why the trial failed or was cancelled."""


class BertSweepResult(ContractModel):
    """Outcome of a sweep (also the durable part of its progress)."""

    sweep_id: str
    """The sweep's id."""
    strategy: SweepStrategy
    """How the sweep searched."""
    metric: str
    """Metric that ranked the trials."""
    mode: Literal["max", "min"]
    """Whether larger or smaller was better."""
    rungs: list[int | None] = Field(default_factory=list)
    """Steps of each rung (one rung, maybe None = epochs, for a grid)."""
    trials: list[SweepTrial] = Field(default_factory=list)
    """Every trial, in grid order."""
    best_run_id: str | None = None
    """The best trial's run id (among those at the furthest rung that finished any)."""
    best_metric: float | None = None
    """Its metric."""
    total_steps: int = Field(default=0, ge=0)
    """Optimizer steps trained over all trials and rungs."""
    seed: int | None = None
    """Seed the grid was sampled with, when ``num_trials`` sampled it."""
    report_path: ArtifactPath | None = None
    """Folder of ``trials.json`` and ``metric.png`` in the artifact store, once written."""


class SweepProgress(ContractModel):
    """Answer of the sweep workflow's ``get_progress`` query."""

    stage: SweepStage = "pending"
    """Current stage of the sweep."""
    rung: int = Field(default=0, ge=0)
    """Rung being trained (0 = the first)."""
    sweep: BertSweepResult | None = None
    """Trials and best so far, once the grid is known."""
    continued_as_new: int = Field(default=0, ge=0)
    """Times the sweep continued as a new execution to keep its history short."""
    error: str | None = None
    """Failure message when the stage is ``failed``."""


class SweepCarry(ContractModel):
    """State one sweep execution hands to the next when it continues as new between rungs."""

    progress: SweepProgress
    """Trials, rung to train next, counters."""


class SweepReportRequest(ContractModel):
    """Input of ``record_sweep``: the sweep so far, to write as ``trials.json`` and ``metric.png``."""

    sweep: BertSweepResult
    """The sweep's trials and best so far."""


class SweepReportResult(ContractModel):
    """Outcome of ``record_sweep``."""

    report_path: ArtifactPath
    """Folder the files went to: ``sweeps/<sweep_id>``."""
    files: list[str] = Field(default_factory=list)
    """Names of the files written."""
