"""The layout of a dataset snapshot folder and its typed manifest, for writers and readers alike.

The data worker writes snapshots and the GPU worker reads them, both through this module.

``<artifact_root>/snapshots/<snapshot_id>/`` holds ``train.parquet`` and ``eval.parquet``
(the text column(s) under their own names, label ids as int64) and ``manifest.json``. The data
worker writes the folder under a temporary name and renames it into place, manifest last, so a
folder under its final name is complete when its manifest validates, names the expected hash
and lists split files that exist.

Manifests outlive the code that wrote them: every manifest written since the first release must
keep validating (old key names are accepted as aliases), and keys a newer writer adds are ignored
by older readers rather than refused.
"""

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Final, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from durabert.shared.models import DataFiles
from durabert.shared.redaction import redact, redact_value

MANIFEST_FILE: Final = "manifest.json"
"""The snapshot's manifest; the folder is renamed into place only after it is written."""
SPLIT_FILES: Final[Mapping[str, str]] = MappingProxyType({"train": "train.parquet", "eval": "eval.parquet"})
"""Split name to its file in a snapshot folder."""


class _ManifestPart(BaseModel):
    # Unknown keys are ignored, not refused: a manifest written by a newer data worker must
    # stay readable by an older GPU worker during a rolling upgrade.
    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True, populate_by_name=True)


class SnapshotSource(_ManifestPart):
    """Where the snapshot's rows came from and how they were sampled (for people; not hashed)."""

    dataset_name: str
    """``dataset_name`` as requested (URL credentials removed)."""
    dataset_config_name: str | None = Field(
        default=None, validation_alias=AliasChoices("dataset_config_name", "dataset_config")
    )
    """Source configuration name; manifests before 0.2 call it ``dataset_config``."""
    data_files: DataFiles | None = None
    """``data_files`` as requested (URL credentials removed)."""
    eval_split: str | None = None
    """The source split used for evaluation; None when eval rows were held out of train."""
    eval_fraction: float | None = None
    """Share of train held out for evaluation; None when the source had an eval split."""
    seed: int
    """Seed of the content-keyed shuffle."""
    shuffle_before_select: bool = True
    """Whether rows were shuffled before ``max_*_samples`` were taken."""
    max_train_samples: int | None = Field(
        default=None, validation_alias=AliasChoices("max_train_samples", "max_samples")
    )
    """Most training rows kept; manifests before 0.2 call it ``max_samples``."""
    max_eval_samples: int | None = None
    """Most evaluation rows kept."""

    @field_validator("dataset_name")
    @classmethod
    def _redact_name(cls, value: str) -> str:
        # Redacted on the way in, so no writer can put a credential into a manifest.
        return redact(value)

    @field_validator("data_files")
    @classmethod
    def _redact_files(cls, value: DataFiles | None) -> DataFiles | None:
        redacted: DataFiles | None = redact_value(value)
        return redacted


class SnapshotFields(_ManifestPart):
    """The columns of the stored splits."""

    text_field: str
    """Text column."""
    text_pair_field: str | None = None
    """Second text column, for sentence-pair tasks."""
    label_field: str
    """Label column (int64 ids into ``label_names``)."""


class SnapshotManifest(_ManifestPart):
    """``manifest.json`` of a snapshot folder."""

    format: str
    """Version of the hashed byte layout (``durabert-snapshot-v1``)."""
    snapshot_id: str = Field(min_length=1)
    """The folder's name: the first 16 hex characters of ``data_hash``."""
    data_hash: str = Field(min_length=1)
    """SHA-256 over the stored splits, their columns and label names."""
    snapshot_timestamp: str
    """ISO 8601 time the snapshot was written."""
    created_by_run_id: str
    """Run whose request first wrote the snapshot (later runs reuse it by content)."""
    source: SnapshotSource
    """Where the rows came from."""
    fields: SnapshotFields
    """The stored columns."""
    task_type: Literal["classification"] = "classification"
    """Task the snapshot was built for."""
    label_names: list[str] = Field(min_length=1)
    """Sorted class names; a stored label id indexes this list."""
    num_train_samples: int = Field(ge=0)
    """Rows in ``train``."""
    num_eval_samples: int = Field(ge=0)
    """Rows in ``eval``."""
    files: dict[str, str] = Field(default_factory=lambda: dict(SPLIT_FILES))
    """Split name to its file in the folder."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Versions of Python and the libraries that wrote the snapshot."""

    @field_validator("files")
    @classmethod
    def _plain_split_files(cls, value: dict[str, str]) -> dict[str, str]:
        # The names are joined to the snapshot folder: a manifest must not point a reader elsewhere.
        if set(value) != set(SPLIT_FILES):
            raise ValueError(f"must name exactly the splits {sorted(SPLIT_FILES)}")
        for name in value.values():
            if PurePosixPath(name).name != name or name in {"", ".", ".."} or "\\" in name:
                raise ValueError(f"{name!r} is not a plain file name inside the snapshot folder")
        return value

    def split_path(self, folder: Path, split: Literal["train", "eval"]) -> Path:
        """Where one split's file lies.

        Args:
            folder: The snapshot folder on this machine.
            split: ``train`` or ``eval``.

        Returns:
            The split file's path.
        """
        return folder / self.files[split]

    def to_json(self) -> str:
        """Serialise the manifest as it is written to disk.

        Returns:
            Indented JSON with sorted keys and a final newline (stable diffs between snapshots).
        """
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def read_manifest(folder: Path) -> SnapshotManifest:
    """Read and validate a snapshot folder's manifest.

    Args:
        folder: A snapshot folder.

    Returns:
        The manifest.

    Raises:
        OSError: The manifest cannot be read (missing folder or file).
        pydantic.ValidationError: The file is not a valid manifest (also for malformed JSON).
    """
    return SnapshotManifest.model_validate_json((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
