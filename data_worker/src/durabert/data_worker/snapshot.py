"""Building a content-addressed dataset snapshot, as plain functions (no Temporal needed).

The steps: confine and load the source, check the columns, turn labels into sorted names
and ids, order rows by a seeded content key (a shuffle the input order cannot change), hold
out eval rows when the source has no eval split, take ``max_*_samples``, hash the result,
and write it under ``snapshots/<snapshot_id>/`` unless that snapshot already exists. With an
object-store artifact root the snapshot is written in the worker's local copy and uploaded, or
found complete in the store (:mod:`.store_mirror`).
"""

import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata

import numpy as np
import pyarrow as pa
from temporalio.exceptions import ApplicationError

from durabert.data_worker.columns import Fields, encode_labels, request_fields, select_columns
from durabert.data_worker.failures import redacted_failure
from durabert.data_worker.hashing import HASH_FORMAT, content_order, snapshot_id_for, stream_hash
from durabert.data_worker.sources import describe_source, load_source, resolve_source, source_field
from durabert.data_worker.staging import StagingArea
from durabert.data_worker.store import SplitWriter, publish_snapshot, streaming_writer
from durabert.data_worker.store_mirror import publish_to_store, snapshot_key
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import invalid_input
from durabert.shared.models import DatasetSnapshotRequest, DatasetSnapshotResult
from durabert.shared.object_store import open_object_store
from durabert.shared.redaction import redact
from durabert.shared.settings import DurabertSettings
from durabert.shared.snapshot_layout import SPLIT_FILES, SnapshotFields, SnapshotManifest, SnapshotSource

Progress = Callable[[str], None]
"""Called with a stage name between steps and slices of long work; may raise to stop."""

TASK_TYPE = "classification"
"""The only task type a snapshot is built for today."""


def _noop(_: str) -> None:
    return None


@dataclass(frozen=True)
class SnapshotOutcome:
    """A snapshot and what it took to get it."""

    result: DatasetSnapshotResult
    """The snapshot, as the activity returns it."""
    seconds: float
    """Wall time of the whole request."""


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("durabert-data-worker", "durabert-shared", "datasets", "pyarrow", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def _holdout_size(rows: int, fraction: float, source: str) -> int:
    """Rows to hold out for eval: at least one, and at least one left for training."""
    if rows < 2:
        raise invalid_input(
            f"{source} has {rows} training row(s) and no eval split; holding out eval_fraction "
            "needs at least two rows",
            field="eval_fraction",
        )
    return min(max(1, round(rows * fraction)), rows - 1)


def split_rows(
    train: pa.Table,
    eval_table: pa.Table | None,
    request: DatasetSnapshotRequest,
    columns: list[str],
    source: str,
) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """Choose the stored rows of each split, in stored order.

    With ``shuffle_before_select`` (the default) rows are ordered by a seeded content key,
    so sampling and the held-out split depend on the content and the seed only. Without it
    the source order is kept: ``max_*_samples`` take the first rows and the held-out eval rows
    are the last ones.

    Args:
        train: The train split (labels already ids).
        eval_table: The source's eval split, or None to hold out ``eval_fraction`` of train.
        request: The request (seed, fractions, limits).
        columns: The columns that make up a row's content.
        source: Human description of the source, for messages.

    Returns:
        Train row indices, eval row indices, and the table the eval indices refer to.
    """

    def ordered(table: pa.Table) -> np.ndarray:
        if request.shuffle_before_select:
            return content_order(table, columns, request.seed)
        return np.arange(table.num_rows, dtype=np.int64)

    train_order = ordered(train)
    if eval_table is None:
        held = _holdout_size(len(train_order), request.eval_fraction, source)
        if request.shuffle_before_select:
            eval_order, train_order = train_order[:held], train_order[held:]
        else:
            eval_order, train_order = train_order[-held:], train_order[:-held]
        eval_source = train
    else:
        eval_order, eval_source = ordered(eval_table), eval_table
    return train_order[: request.max_train_samples], eval_order[: request.max_eval_samples], eval_source


def _check_rows(table: pa.Table, split: str, request: DatasetSnapshotRequest, source: str) -> None:
    if table.num_rows == 0:
        field = "eval_split_names" if split != "train" else source_field(request)
        raise invalid_input(f"split {split!r} of {source} is empty", field=field)


@dataclass(frozen=True)
class _Labelled:
    """The source's rows reduced to the requested columns, labels as ids."""

    tables: dict[str, pa.Table]
    """Keyed by the source's split names (``train`` and the eval split, if any)."""
    eval_split: str | None
    """The source's eval split, or None when eval rows are held out of train."""
    fields: Fields
    """The stored columns."""
    label_names: list[str]
    """Sorted class names."""


def _check_remote_code(request: DatasetSnapshotRequest, settings: DurabertSettings) -> None:
    if request.trust_remote_code and not settings.data.allow_trust_remote_code:
        raise invalid_input(
            "this worker does not run dataset loading code from the hub; set "
            "DURABERT_DATA__ALLOW_TRUST_REMOTE_CODE=true on the data worker to allow it",
            field="trust_remote_code",
        )


def _load_labelled(
    request: DatasetSnapshotRequest, settings: DurabertSettings, progress: Progress, staging: StagingArea
) -> _Labelled:
    """Check the request, confine, stage and load its source, keep its columns and encode its labels."""
    _check_remote_code(request, settings)
    fields = request_fields(request)  # before anything is read: a bad pairing needs no data
    data_dir = settings.data_dir.expanduser().resolve()
    confined = resolve_source(request, settings.data_roots, data_dir, settings.data_url_roots)
    resolved = staging.stage(confined)  # object-store files as local copies: datasets may be offline
    source = describe_source(request)
    progress("loading")
    loaded = load_source(request, resolved, trust_remote_code=request.trust_remote_code)
    # Parsing the source (JSON, CSV) leaves Arrow's allocator holding freed blocks that numpy
    # (another allocator) cannot reuse: hand them back before ordering and hashing.
    pa.default_memory_pool().release_unused()
    progress("loaded")
    # Keyed by the source's split names, so that messages name the split the user knows.
    raw = {"train": select_columns(loaded.train, fields, "train", source)}
    if loaded.eval is not None and loaded.eval_split is not None:
        raw[loaded.eval_split] = select_columns(loaded.eval, fields, loaded.eval_split, source)
    for split, table in raw.items():
        _check_rows(table, split, request, source)
    tables, label_names = encode_labels(raw, fields.label, source, loaded.class_names)
    progress("labelled")
    return _Labelled(tables, loaded.eval_split, fields, label_names)


def _manifest(
    request: DatasetSnapshotRequest, labelled: _Labelled, digest: str, counts: dict[str, int]
) -> SnapshotManifest:
    held_out = labelled.eval_split is None
    return SnapshotManifest(
        format=HASH_FORMAT,
        snapshot_id=snapshot_id_for(digest),
        data_hash=digest,
        snapshot_timestamp=datetime.now(UTC).isoformat(),
        created_by_run_id=request.run_id,
        source=SnapshotSource(
            dataset_name=request.dataset_name,  # the model removes URL credentials
            dataset_config_name=request.dataset_config_name,
            data_files=request.data_files,
            eval_split=labelled.eval_split,
            eval_fraction=request.eval_fraction if held_out else None,
            seed=request.seed,
            shuffle_before_select=request.shuffle_before_select,
            max_train_samples=request.max_train_samples,
            max_eval_samples=request.max_eval_samples,
        ),
        fields=SnapshotFields(
            text_field=labelled.fields.text,
            text_pair_field=labelled.fields.text_pair,
            label_field=labelled.fields.label,
        ),
        task_type=TASK_TYPE,
        label_names=labelled.label_names,
        num_train_samples=counts["train"],
        num_eval_samples=counts["eval"],
        files=dict(SPLIT_FILES),
        versions=_library_versions(),
    )


def _result(
    request: DatasetSnapshotRequest, manifest: SnapshotManifest, path: str, cache_hit: bool
) -> DatasetSnapshotResult:
    fields = manifest.fields
    schema = {
        "text_field": fields.text_field,
        "label_field": fields.label_field,
        "task_type": manifest.task_type,
        "num_labels": str(len(manifest.label_names)),
    }
    if fields.text_pair_field:
        schema["text_pair_field"] = fields.text_pair_field
    return DatasetSnapshotResult(
        snapshot_id=manifest.snapshot_id,
        dataset_name=redact(request.dataset_name),
        dataset_config_name=request.dataset_config_name,
        num_train_samples=manifest.num_train_samples,
        num_eval_samples=manifest.num_eval_samples,
        data_hash=manifest.data_hash,
        snapshot_timestamp=manifest.snapshot_timestamp,
        snapshot_path=path,
        label_names=manifest.label_names,
        text_field=fields.text_field,
        text_pair_field=fields.text_pair_field,
        label_field=fields.label_field,
        cache_hit=cache_hit,
        dataset_schema=schema,
    )


def _build(
    request: DatasetSnapshotRequest, settings: DurabertSettings, progress: Progress
) -> DatasetSnapshotResult:
    # Staged files and their datasets cache back the loaded tables until the snapshot is written.
    with StagingArea(settings, progress) as staging:
        return _build_from(request, settings, progress, staging)


def _build_from(
    request: DatasetSnapshotRequest, settings: DurabertSettings, progress: Progress, staging: StagingArea
) -> DatasetSnapshotResult:
    labelled = _load_labelled(request, settings, progress, staging)
    columns = labelled.fields.stored
    # The tables stay as loaded (chunked, memory-mapped from the datasets cache): ordering, hashing
    # and writing read them in place and copy one batch at a time, so memory never holds a second
    # copy of the dataset (combining chunks and taking whole splits once held two).
    tables = labelled.tables
    eval_table = tables[labelled.eval_split] if labelled.eval_split is not None else None
    source = describe_source(request)
    train_rows, eval_rows, eval_source = split_rows(tables["train"], eval_table, request, columns, source)
    progress("ordered")
    stored = {"train": (tables["train"], train_rows), "eval": (eval_source, eval_rows)}
    digest = stream_hash(stored, columns, labelled.label_names, progress)
    manifest = _manifest(request, labelled, digest, {"train": len(train_rows), "eval": len(eval_rows)})
    published, cache_hit = _publish(settings, manifest, streaming_writer(stored, columns), progress)
    return _result(request, published, snapshot_key(published.snapshot_id), cache_hit)


def _publish(
    settings: DurabertSettings, manifest: SnapshotManifest, write_splits: SplitWriter, progress: Progress
) -> tuple[SnapshotManifest, bool]:
    """Publish into the local artifact folder, or through the local copy into the object store."""
    local = ArtifactStore(settings.artifact_dir)
    objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
    if objects is None:
        return publish_snapshot(local, manifest, write_splits, progress)
    return publish_to_store(
        objects,
        local,
        manifest,
        write_splits,
        progress,
        leftover_age_seconds=settings.store.leftover_age_seconds,
        writer={"role": "data", "host": socket.gethostname(), "run_id": manifest.created_by_run_id},
    )


def create_snapshot(
    request: DatasetSnapshotRequest, settings: DurabertSettings, progress: Progress = _noop
) -> SnapshotOutcome:
    """Freeze the request's dataset into ``snapshots/<snapshot_id>/``, or reuse the existing one.

    Args:
        request: What to snapshot.
        settings: Worker settings (artifact root, allowed data roots, remote-code policy).
        progress: Called between steps; raising from it stops the work (cancellation).

    Returns:
        The snapshot and the seconds it took.

    Raises:
        ApplicationError: ``InvalidInputError`` naming the field for bad input,
            ``ConfigurationError`` when the source cannot be loaded as asked. Messages never
            hold URL credentials.
    """
    started = time.monotonic()
    try:
        result = _build(request, settings, progress)
    except ApplicationError as exc:
        # Loader messages and their causes may echo a data URL with its credentials.
        raise redacted_failure(exc) from None
    return SnapshotOutcome(result=result, seconds=time.monotonic() - started)
