"""Loading a dataset snapshot from the artifact store and tokenizing it in batches.

Training reads only the snapshot the data worker froze, never the raw source, so every attempt
of a run sees the same rows. The folder's layout and its manifest are defined once, in
:mod:`durabert.shared.snapshot_layout`, for the writer and this reader alike.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import configuration_error, describe_validation_error, not_found
from durabert.shared.models import DatasetSnapshotResult
from durabert.shared.snapshot_layout import MANIFEST_FILE, SnapshotManifest, read_manifest

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass(frozen=True)
class SnapshotFiles:
    """The files of one snapshot on this machine."""

    folder: Path
    """The snapshot folder."""
    train: Path
    """Training split."""
    eval: Path
    """Evaluation split."""


def _missing(snapshot: DatasetSnapshotResult, folder: Path, name: str) -> Exception:
    return not_found(
        f"dataset_snapshot.snapshot_path: snapshot {snapshot.snapshot_id!r} is missing "
        f"{name} under {folder} (was it written to this artifact store?)"
    )


def read_snapshot_manifest(folder: Path, snapshot: DatasetSnapshotResult) -> SnapshotManifest:
    """Read a snapshot folder's manifest and check that it is the snapshot the request names.

    Args:
        folder: The snapshot folder on this machine.
        snapshot: The snapshot the request names.

    Returns:
        The manifest.

    Raises:
        ApplicationError: ``ArtifactNotFoundError`` without a manifest; ``ConfigurationError``
            for a manifest that does not validate or names other content.
    """
    try:
        manifest = read_manifest(folder)
    except OSError:
        raise _missing(snapshot, folder, MANIFEST_FILE) from None
    except ValidationError as exc:
        raise configuration_error(
            f"dataset_snapshot.snapshot_path: {folder / MANIFEST_FILE} is not a snapshot manifest:\n"
            f"{describe_validation_error(exc)}"
        ) from None
    if manifest.data_hash != snapshot.data_hash:
        raise configuration_error(
            f"dataset_snapshot.data_hash: {folder} holds content {manifest.data_hash}, not the requested "
            f"{snapshot.data_hash}"
        )
    return manifest


def locate_snapshot(store: ArtifactStore, snapshot: DatasetSnapshotResult) -> SnapshotFiles:
    """Find a snapshot's files through its manifest, refusing a missing or unfinished snapshot.

    Args:
        store: The artifact store.
        snapshot: The snapshot the request names.

    Returns:
        The snapshot's files.

    Raises:
        ApplicationError: ``ArtifactNotFoundError`` when the folder, its manifest or a split is
            missing; ``ConfigurationError`` when the manifest is invalid or names other content.
    """
    folder = store.resolve(snapshot.snapshot_path)
    manifest = read_snapshot_manifest(folder, snapshot)
    files = SnapshotFiles(folder, manifest.split_path(folder, "train"), manifest.split_path(folder, "eval"))
    for path in (files.train, files.eval):
        if not path.is_file():
            raise _missing(snapshot, folder, path.name)
    return files


STREAM_BATCH_ROWS = 16_384
"""Rows per record batch when a split is copied into its Arrow file: bounds the copy's memory."""


def _check_columns(path: Path, snapshot: DatasetSnapshotResult, columns: list[str]) -> dict[str, str]:
    """The wanted columns by setting name, refusing a split that lacks one (reads only the schema)."""
    wanted = {
        "text_field": snapshot.text_field,
        "label_field": snapshot.label_field,
        **({"text_pair_field": snapshot.text_pair_field} if snapshot.text_pair_field else {}),
    }
    for field, column in wanted.items():
        if column not in columns:
            raise configuration_error(
                f"dataset_snapshot.{field}: column {column!r} is not in {path} "
                f"(columns: {', '.join(columns)})"
            )
    return wanted


def _arrow_file(path: Path, columns: list[str], cache_dir: Path) -> Path:
    """Stream a split's columns from Parquet into an Arrow file, one record batch at a time.

    ``datasets`` memory-maps Arrow files: the split then lives in the page cache, which the
    kernel can evict, instead of the child's heap, so a snapshot larger than the node's memory
    still trains. The copy holds one batch in memory at a time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    # No schema metadata: it may describe columns that are not copied.
    schema = pa.schema([source.schema_arrow.field(column) for column in columns])
    target = cache_dir / f"{path.stem}.arrow"
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in source.iter_batches(batch_size=STREAM_BATCH_ROWS, columns=columns):
            writer.write_batch(batch)
    return target


def _first_bad_label(column: Any, count: int) -> object:
    """A value of the label column that is no class id (None when all are), computed in Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(column) == 0:
        return None
    if not pa.types.is_integer(column.type):
        return column[0].as_py()
    if column.null_count:
        return "null"
    low, high = (value.as_py() for value in pc.min_max(column).values())
    return low if low < 0 else high if high >= count else None


def _check_labels(dataset: "Dataset", path: Path, snapshot: DatasetSnapshotResult) -> None:
    """Refuse labels that are not class ids, without reading the column into Python objects."""
    count = len(snapshot.label_names)
    bad = _first_bad_label(dataset.data.column(snapshot.label_field), count)
    if bad is not None:
        raise configuration_error(
            f"dataset_snapshot.label_field: {path.name} has label {bad!r}, not an id in "
            f"0..{count - 1} of label_names {snapshot.label_names}"
        )


def _read_split(
    path: Path, snapshot: DatasetSnapshotResult, limit: int | None, seed: int, cache_dir: Path
) -> "Dataset":
    import pyarrow.parquet as pq
    from datasets import Dataset

    wanted = _check_columns(path, snapshot, pq.read_schema(path).names)
    dataset = Dataset.from_file(str(_arrow_file(path, list(wanted.values()), cache_dir)))
    _check_labels(dataset, path, snapshot)
    if limit is not None and len(dataset) > limit:
        # Seeded shuffle first: the first N rows of a label-sorted split would hold one class.
        # Its index mapping goes to a file beside the split (memory-mapped too).
        dataset = dataset.shuffle(
            seed=seed, indices_cache_file_name=str(cache_dir / f"{path.stem}-shuffled.arrow")
        ).select(range(limit))
    return dataset


def _tokenized_fingerprint(parent: str, tokenizer: Any, max_seq_length: int, pair: str | None) -> str:
    """Identify a tokenized split by what decides its content: rows, tokenizer, length, pair column."""
    identity = [
        parent,
        type(tokenizer).__name__,
        str(getattr(tokenizer, "name_or_path", "")),
        str(len(tokenizer)),
        str(max_seq_length),
        str(pair),
    ]
    return hashlib.sha256("\0".join(identity).encode()).hexdigest()[:32]


def load_tokenized(
    files: SnapshotFiles,
    snapshot: DatasetSnapshotResult,
    tokenizer: Any,
    *,
    max_seq_length: int,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
    cache_dir: Path,
) -> tuple["Dataset", "Dataset"]:
    """Read the train and eval splits and tokenize them in batches, into memory-mapped Arrow files.

    Neither the splits nor their tokens are held in the process's memory: each is an Arrow file
    in ``cache_dir`` that ``datasets`` memory-maps, written a batch at a time.

    Args:
        files: The snapshot's files.
        snapshot: The snapshot's description (columns and label names).
        tokenizer: The model's tokenizer.
        max_seq_length: Tokens per example after truncation.
        max_train_samples: Most training rows, taken after a seeded shuffle.
        max_eval_samples: Most evaluation rows, taken after a seeded shuffle.
        seed: Seed of that shuffle.
        cache_dir: An empty folder of this attempt for the Arrow files.

    Returns:
        ``(train, eval)`` with ``input_ids``, ``attention_mask`` (and ``token_type_ids``) and ``labels``.
    """
    pair = snapshot.text_pair_field

    def tokenize(batch: dict[str, list[Any]]) -> Any:
        second = batch[pair] if pair else None
        return tokenizer(batch[snapshot.text_field], second, truncation=True, max_length=max_seq_length)

    splits = []
    for path, limit in ((files.train, max_train_samples), (files.eval, max_eval_samples)):
        dataset = _read_split(path, snapshot, limit, seed, cache_dir)
        text_columns = [column for column in dataset.column_names if column != snapshot.label_field]
        # A fingerprint of our own: by default ``datasets`` pickles the tokenizer (its whole
        # vocabulary) to fingerprint the map, ~0.4 s per split per attempt, for a cache that a
        # fresh folder per attempt never hits anyway.
        fingerprint = _tokenized_fingerprint(dataset._fingerprint, tokenizer, max_seq_length, pair)
        dataset = dataset.map(
            tokenize,
            batched=True,
            remove_columns=text_columns,
            new_fingerprint=fingerprint,
            cache_file_name=str(cache_dir / f"{path.stem}-tokens.arrow"),
            load_from_cache_file=False,
        )
        if snapshot.label_field != "labels":
            dataset = dataset.rename_column(snapshot.label_field, "labels")
        splits.append(dataset)
    if len(splits[0]) == 0:
        raise configuration_error(f"dataset_snapshot: snapshot {snapshot.snapshot_id!r} has no training rows")
    return splits[0], splits[1]
