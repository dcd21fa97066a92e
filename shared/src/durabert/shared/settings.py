"""Settings read from the environment (prefix ``DURABERT_``, ``__`` for nesting).

One class holds every role's section, because one ConfigMap feeds every role and an
unknown ``DURABERT_*`` variable is refused (so a typo never silently falls back to a
default). A worker with a bad setting refuses to start with a message naming the variable.
"""

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final, Literal, NoReturn, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.common import WorkerDeploymentVersion

from durabert.shared import names
from durabert.shared.redaction import redact

ENV_PREFIX = "DURABERT_"
"""Prefix of every durabert environment variable."""
DEFAULT_DEPLOYMENT_NAME = "durabert-orchestrator"
"""Temporal Worker Deployment name of the orchestrator when none is configured."""

# The shutdown budget, derived from one number (the pod's grace period):
#
#   SIGTERM ─ graceful_shutdown_timeout ─┬─ SHUTDOWN_EXIT_SECONDS ─┤ SIGKILL
#   stop asked ─ child_stop_seconds ─┬─ CHILD_STOP_MARGIN ─┤ SDK cancels what still runs
#
# A training child gets ``child_stop_seconds`` to checkpoint; one that does not stop is killed
# and the attempt reports before the SDK's cancel, and even what the SDK still has to cancel
# then ends inside the exit margin, before the kubelet's SIGKILL.
SHUTDOWN_EXIT_SECONDS: Final = 20.0
"""Kept free at the end of the grace period: after the SDK cancels the activities still running
at the graceful timeout, for them to kill their children and report, and for the process to exit."""
CHILD_STOP_MARGIN_SECONDS: Final = 15.0
"""Kept free between a training child's stop allowance and the graceful timeout: noticing the
shutdown (a 1 s poll), killing and reaping a child that did not stop (up to 10 s) and reporting."""
MIN_CHILD_STOP_SECONDS: Final = 5.0
"""Least time a stopping training child gets to write its checkpoint, however short the budget."""
DATA_URL_SCHEMES: Final = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""Object-store URL schemes that ``allowed_data_roots`` may list as prefixes."""


class TemporalSettings(BaseModel):
    """How to reach the Temporal service."""

    address: str = "localhost:7233"
    """``host:port`` of the Temporal frontend (``DURABERT_TEMPORAL__ADDRESS``)."""
    namespace: str = Field(default="default", min_length=1)
    """Temporal namespace."""
    tls: bool = False
    """Use TLS with the system's trusted CAs (implied by any certificate path or an API key)."""
    tls_ca_path: Path | None = None
    """PEM file of the CA that signed the server certificate."""
    tls_cert_path: Path | None = None
    """PEM client certificate for mutual TLS."""
    tls_key_path: Path | None = None
    """PEM private key of the client certificate."""
    tls_server_name: str | None = None
    """Override of the TLS server name (SNI)."""
    api_key: SecretStr | None = None
    """Temporal Cloud API key (never logged)."""
    ui_url: str | None = None
    """Base URL of the Temporal Web UI, for links the CLI prints (``DURABERT_TEMPORAL__UI_URL``); None:
    ``https://cloud.temporal.io`` for a Temporal Cloud address, else the dev server's
    ``http://<address host>:8233``."""

    @field_validator("address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be host:port, such as localhost:7233 (got {value!r})")
        return value

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> "TemporalSettings":
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be set together")
        for path in (self.tls_ca_path, self.tls_cert_path, self.tls_key_path):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return self


class QueueSettings(BaseModel):
    """Task queue names; defaults come from :mod:`durabert.shared.names`."""

    data: str = Field(default=names.DATA_QUEUE, min_length=1)
    """Data worker queue."""
    gpu: str = Field(default=names.GPU_QUEUE, min_length=1)
    """GPU worker queue of training (its slots are ``DURABERT_GPU__MAX_CONCURRENT_ACTIVITIES``)."""
    inference: str = Field(default=names.INFERENCE_QUEUE, min_length=1)
    """GPU worker queue of online inference, with slots of its own
    (``DURABERT_INFERENCE__MAX_CONCURRENT_REQUESTS``), so a request never waits behind training."""
    orchestrator: str = Field(default=names.ORCHESTRATOR_QUEUE, min_length=1)
    """Orchestrator (workflow) queue."""


class WorkerSettings(BaseModel):
    """Knobs of a worker process."""

    graceful_shutdown_timeout_seconds: float = Field(default=30.0, ge=0, le=3600)
    """How long a stopping worker lets running activities finish before cancelling them. With
    ``termination_grace_period_seconds`` set it defaults to that less ``SHUTDOWN_EXIT_SECONDS``."""
    termination_grace_period_seconds: int | None = Field(default=None, ge=1, le=3600)
    """The time from SIGTERM to SIGKILL: the pod's ``terminationGracePeriodSeconds``, given here with
    the same number (``DURABERT_WORKER__TERMINATION_GRACE_PERIOD_SECONDS``). The graceful timeout and
    a training child's stop allowance are derived from it, so a stop always fits; None (a terminal,
    tests): only the graceful timeout applies."""
    max_concurrent_workflow_tasks: int | None = Field(default=None, ge=1, le=10_000)
    """Workflow task slots; None takes the SDK default."""
    heartbeat_interval_seconds: float = Field(default=2.0, gt=0, le=60)
    """Most time between two heartbeats an activity sends to the server. Live progress of a
    training run travels as heartbeat details, so this is how fresh ``durabert status`` is; the
    SDK's own throttle (0.8 x the heartbeat timeout, 48 s at the default of 60 s) would make it
    stale. One small RPC per interval per running activity; no workflow history."""
    health_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of the ``/healthz`` endpoint (for Kubernetes probes); None serves none."""
    deployment_name: str = Field(
        default=DEFAULT_DEPLOYMENT_NAME, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$"
    )
    """Temporal Worker Deployment of the orchestrator (``DURABERT_WORKER__DEPLOYMENT_NAME``); no '.',
    which separates it from the build id in a version's name."""
    build_id: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    """Build id of this orchestrator build, from its image tag (``DURABERT_WORKER__BUILD_ID``). When
    set, the orchestrator worker uses Worker Versioning (training runs stay pinned to the build
    that started them); empty or unset: unversioned (dev and tests). Activity workers ignore it."""

    @field_validator("build_id", mode="before")
    @classmethod
    def _empty_build_id_is_none(cls, value: object) -> object:
        # A manifest that sets the variable to "" means "no versioning", not an invalid id.
        return None if value == "" else value

    @model_validator(mode="after")
    def _fit_grace_period(self) -> "WorkerSettings":
        grace = self.termination_grace_period_seconds
        if grace is None:
            return self
        latest = max(0.0, grace - SHUTDOWN_EXIT_SECONDS)
        if "graceful_shutdown_timeout_seconds" not in self.model_fields_set:
            self.graceful_shutdown_timeout_seconds = latest
        elif self.graceful_shutdown_timeout_seconds > latest:
            # A timeout this long would let the kubelet SIGKILL a worker still saving a checkpoint.
            raise ValueError(
                f"graceful_shutdown_timeout_seconds {self.graceful_shutdown_timeout_seconds:g} leaves less "
                f"than {SHUTDOWN_EXIT_SECONDS:g} s of termination_grace_period_seconds {grace} to exit: "
                f"at most {latest:g} (or leave it unset to derive it)"
            )
        return self

    @property
    def child_stop_seconds(self) -> float:
        """Most time a stopping training child gets to checkpoint before it is killed.

        Short enough that an attempt whose child ignores the stop still reports before the SDK
        cancels it at the graceful timeout (``CHILD_STOP_MARGIN_SECONDS`` earlier).
        """
        return max(MIN_CHILD_STOP_SECONDS, self.graceful_shutdown_timeout_seconds - CHILD_STOP_MARGIN_SECONDS)

    @property
    def deployment_version(self) -> WorkerDeploymentVersion | None:
        """The Worker Deployment version of this build, or None when versioning is off."""
        if self.build_id is None:
            return None
        return WorkerDeploymentVersion(deployment_name=self.deployment_name, build_id=self.build_id)


class StoreSettings(BaseModel):
    """Knobs of object-store artifact roots (``DURABERT_STORE__*``); unused with a local folder."""

    retry_seconds: float = Field(default=120.0, gt=0, le=3600)
    """How long one transfer retries a transient fault (store unreachable, timeouts, 5xx) with
    backoff before the attempt fails as a retryable ``ArtifactStoreError``."""
    leftover_age_seconds: float = Field(default=3600.0, ge=0)
    """Age after which an upload without a completion marker counts as a killed upload's leftover
    and is deleted (younger ones may still be uploading)."""


class DataWorkerSettings(BaseModel):
    """Knobs of the data worker (``DURABERT_DATA__*``)."""

    max_concurrent_activities: int = Field(default=2, ge=1, le=1000)
    """Snapshots built at once by one data worker."""
    allow_trust_remote_code: bool = False
    """Whether a request may ask a hub dataset to run its own loading code."""


class GpuWorkerSettings(BaseModel):
    """Knobs of the GPU worker (``DURABERT_GPU__*``)."""

    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    """``auto`` prefers CUDA, then Apple MPS, then CPU (falling back to CPU with a warning that says
    why); the others force one. ``cuda`` is how GPU pods require a GPU: an attempt on a worker without
    a usable one fails as a retryable ``DeviceUnavailableError``, so it moves to another worker."""
    max_concurrent_activities: int = Field(default=1, ge=1, le=64)
    """Activity slots: one per GPU, so queued runs wait instead of oversubscribing the device."""
    inference_cache_size: int = Field(default=2, ge=1, le=64)
    """Models kept warm for inference (least recently used is dropped)."""
    cache_dir: Path | None = None
    """Folder for the training child's memory-mapped Arrow files (the snapshot's splits and their
    tokens; one subfolder per run, replaced by each attempt). None: inside the run's staging folder
    on the artifact store. A local disk is faster; it needs about twice the snapshot's size."""


class InferenceSettings(BaseModel):
    """Online inference (``DURABERT_INFERENCE__*``): the GPU worker's serving knobs, the client's timeouts."""

    max_concurrent_requests: int = Field(default=64, ge=1, le=10_000)
    """Inference activity slots per GPU worker, apart from training's. Requests in these slots wait
    on the batcher, not on the device, so this bounds how many can share a forward pass."""
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most texts in one forward pass, gathered across concurrent requests for the same model."""
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)
    """Longest a request waits for others to fill its forward pass (only when the device is idle:
    requests that arrive during a pass go into the next one anyway)."""
    queue_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Client side: most time a request may wait for a GPU worker to take it (the activity's
    schedule-to-start timeout) before ``durabert infer`` reports that none did."""
    route: Literal["activity", "workflow"] = "activity"
    """Client side: how ``durabert infer`` sends a request. ``activity`` starts the inference activity
    directly (a standalone activity: Temporal Server 1.31 or newer), the fastest path measured;
    ``workflow`` starts a ``BertInferenceWorkflow`` per request (any server; an orchestrator worker
    must run)."""
    gpu_memory_fraction: float = Field(default=0.25, gt=0, le=1)
    """Share of a CUDA device's memory inference may ever hold (PyTorch's per-process cap); the rest
    stays for training children. Ignored on CPU and MPS."""


class DurabertSettings(BaseSettings):
    """Settings every durabert process shares."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
    )

    temporal: TemporalSettings = Field(default_factory=TemporalSettings)
    """Temporal connection."""
    queues: QueueSettings = Field(default_factory=QueueSettings)
    """Task queue names."""
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    """Worker process knobs."""
    data: DataWorkerSettings = Field(default_factory=DataWorkerSettings)
    """Data worker knobs."""
    gpu: GpuWorkerSettings = Field(default_factory=GpuWorkerSettings)
    """GPU worker knobs."""
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    """Online inference knobs."""
    artifact_root: str = Field(default_factory=lambda: str(Path.home() / ".durabert" / "artifacts"))
    """Store of snapshots, checkpoints and models: a folder every worker mounts (``/srv/artifacts``),
    or an object-store URL (``s3://bucket/prefix``, ``gs://...``, ``az://...``) that no two workers
    need to share a folder for. S3 credentials and endpoint come from the standard ``AWS_*``
    variables, never from this URL."""
    work_dir: Path = Field(default_factory=lambda: Path.home() / ".durabert" / "work")
    """This worker's own scratch folder (never shared): with an object-store root, its local copies
    of snapshots, checkpoints and models, and the uploads being staged."""
    store: StoreSettings = Field(default_factory=StoreSettings)
    """Object-store transfer knobs."""
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".durabert" / "data")
    """Folder of downloaded demo data (readable by runs by default)."""
    allowed_data_roots: list[Path | str] | None = None
    """Where a run may read data from (JSON list): folders for local files (default: the artifact
    folder and data_dir) and object-store URL prefixes (``s3://bucket/datasets``). With any URL
    prefix listed, ``s3://``/``gs://``/``az://`` data is read only under the listed prefixes;
    without one, any object-store URL may be read (as before)."""
    log_format: Literal["auto", "console", "json"] = "auto"
    """``console`` for people, ``json`` for log collectors, ``auto`` picks by whether stderr is a terminal."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of the Prometheus metrics endpoint of the Temporal runtime; None exports none."""

    def queue_memo(self) -> dict[str, dict[str, str]]:
        """Workflow memo telling a workflow which queues its activities go to.

        Returns:
            ``{QUEUES_MEMO_KEY: {"data": ..., "gpu": ..., "inference": ...}}`` from these settings.
        """
        queues = self.queues
        return {
            names.QUEUES_MEMO_KEY: {"data": queues.data, "gpu": queues.gpu, "inference": queues.inference}
        }

    @field_validator("artifact_root", mode="before")
    @classmethod
    def _artifact_root_text(cls, value: object) -> object:
        """Accept a ``Path`` as well as text; expand ``~`` in a local path (never in a URL)."""
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be a folder or an object-store URL such as s3://bucket/prefix")
        if isinstance(value, str) and "://" not in value:
            return str(Path(value).expanduser())
        return value

    @property
    def artifact_url(self) -> str | None:
        """The object-store URL of the artifact root, or None when it is a local folder."""
        return self.artifact_root.rstrip("/") if "://" in self.artifact_root else None

    @property
    def artifact_dir(self) -> Path:
        """The folder this worker reads and writes artifacts in.

        The root itself when it is a folder; this worker's own local copy (``<work_dir>/artifacts``)
        when the root is an object store.
        """
        if self.artifact_url is None:
            return Path(self.artifact_root)
        return self.work_dir.expanduser() / "artifacts"

    @field_validator("allowed_data_roots", mode="after")
    @classmethod
    def _folders_and_url_prefixes(cls, value: list[Path | str] | None) -> list[Path | str] | None:
        """Keep object-store URL prefixes as text and make every other entry a folder."""
        return None if value is None else [_data_root(str(root)) for root in value]

    @property
    def data_roots(self) -> list[Path]:
        """Folders local data files may come from, resolved."""
        # An explicit list is exactly what may be read: one naming only URL prefixes admits no folder.
        configured = self.allowed_data_roots or [self.artifact_dir, self.data_dir]
        return [root.expanduser().resolve() for root in configured if isinstance(root, Path)]

    @property
    def data_url_roots(self) -> list[str]:
        """Object-store URL prefixes data may be read from; empty: any object-store URL."""
        return [root for root in self.allowed_data_roots or [] if isinstance(root, str)]


def _data_root(text: str) -> Path | str:
    """One allowed data root: a folder, or an object-store URL prefix kept as text.

    A ``Path`` would fold ``s3://bucket`` into ``s3:/bucket``, so URL prefixes stay strings.
    """
    scheme, separator, rest = text.partition("://")
    if not separator:
        return Path(text)
    if scheme.lower() in DATA_URL_SCHEMES and rest.strip("/"):
        return f"{scheme.lower()}://{rest.strip('/')}"
    raise ValueError(
        f"{redact(text)!r} must be a folder or an object-store URL prefix such as "
        f"s3://bucket/datasets (schemes: {', '.join(sorted(DATA_URL_SCHEMES))})"
    )


SettingsT = TypeVar("SettingsT", bound=DurabertSettings)


def env_var_name(location: tuple[str | int, ...]) -> str:
    """Name the environment variable behind a settings field.

    Args:
        location: The field's location, as in a Pydantic error (``("temporal", "address")``).

    Returns:
        ``DURABERT_TEMPORAL__ADDRESS`` for the example above.
    """
    return ENV_PREFIX + "__".join(str(part).upper() for part in location)


def describe_settings_error(error: ValidationError) -> str:
    """Render a settings error with one line per bad environment variable.

    Args:
        error: The error raised when the settings were read.

    Returns:
        Lines such as ``DURABERT_TEMPORAL__ADDRESS: String should match pattern ...``.
    """
    lines = []
    for item in error.errors(include_url=False):
        location = tuple(item["loc"])
        if item["type"] == "extra_forbidden" and location:
            message = "not a durabert setting (check the spelling)"
        else:
            message = item["msg"]
        lines.append(f"  {env_var_name(location) if location else ENV_PREFIX + '*'}: {message}")
    return "invalid durabert settings:\n" + "\n".join(lines)


def load_settings(settings_class: type[SettingsT]) -> SettingsT:
    """Read settings from the environment or exit with a message naming each bad variable.

    Args:
        settings_class: The deployable's settings class.

    Returns:
        The settings.
    """
    unknown = unknown_env_vars(settings_class, os.environ)
    if unknown:
        _exit_with(
            "invalid durabert settings:\n"
            + "\n".join(f"  {name}: not a durabert setting (check the spelling)" for name in unknown)
        )
    try:
        return settings_class()
    except ValidationError as exc:
        _exit_with(describe_settings_error(exc))


def unknown_env_vars(settings_class: type[BaseModel], environ: Mapping[str, str]) -> list[str]:
    """List ``DURABERT_*`` variables that name no setting, so a typo is never silently ignored.

    Args:
        settings_class: The settings class whose fields define the valid names.
        environ: The environment to check.

    Returns:
        The unknown variable names, sorted.
    """
    known = set(_env_names(settings_class, ENV_PREFIX))
    return sorted(
        name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )


def _env_names(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for field_name, field in model.model_fields.items():
        name = prefix + field_name.upper()
        yield name  # a whole section may also be given as JSON
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _env_names(annotation, name + "__")


def _exit_with(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)
