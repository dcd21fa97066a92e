"""durabert's shared contract: models, names, errors, settings, logging and Temporal plumbing.

Every role imports its cross-process vocabulary from here; nothing here imports an ML library.
"""

from durabert.shared import activities, names
from durabert.shared.artifacts import ArtifactStore, write_json_atomic
from durabert.shared.client import TemporalUnreachableError, connect_client
from durabert.shared.errors import (
    NON_RETRYABLE_ERROR_TYPES,
    ErrorType,
    configuration_error,
    describe_validation_error,
    invalid_input,
    not_found,
    parse_input,
)
from durabert.shared.logging import bind_run_id, configure_logging, get_logger
from durabert.shared.models import (
    DEFAULT_MODEL_NAME,
    MAX_INFERENCE_TEXT_CHARS,
    MAX_INFERENCE_TEXTS,
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    CheckpointInfo,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    TrainingProgress,
)
from durabert.shared.runner import WorkerSpec, run_worker
from durabert.shared.settings import DurabertSettings, load_settings

__all__ = [
    "DEFAULT_MODEL_NAME",
    "MAX_INFERENCE_TEXTS",
    "MAX_INFERENCE_TEXT_CHARS",
    "NON_RETRYABLE_ERROR_TYPES",
    "ArtifactStore",
    "BertFineTuneConfig",
    "BertFineTuneRequest",
    "BertFineTuneResult",
    "BertInferenceRequest",
    "BertInferenceResult",
    "CheckpointInfo",
    "DatasetSnapshotRequest",
    "DatasetSnapshotResult",
    "DurabertSettings",
    "ErrorType",
    "TemporalUnreachableError",
    "TrainingProgress",
    "WorkerSpec",
    "activities",
    "bind_run_id",
    "configuration_error",
    "configure_logging",
    "connect_client",
    "describe_validation_error",
    "get_logger",
    "invalid_input",
    "load_settings",
    "names",
    "not_found",
    "parse_input",
    "run_worker",
    "write_json_atomic",
]
