"""Snapshots written straight into an artifact store, in the data worker's layout (no data worker needed)."""

from pathlib import Path

from durabert.shared.models import DatasetSnapshotResult
from durabert.shared.snapshot_layout import MANIFEST_FILE, SnapshotFields, SnapshotManifest, SnapshotSource

Split = tuple[list[str], list[int]]
"""Texts and their label ids."""


def write_parquet_snapshot(
    root: Path, train: Split, eval_: Split, *, snapshot_id: str, text_field: str, dataset_name: str
) -> DatasetSnapshotResult:
    """Write ``snapshots/<snapshot_id>/`` (train/eval parquet and a real manifest) under ``root``.

    Labels are ``negative``/``positive`` (ids 0 and 1).

    Returns:
        The snapshot, as the data worker would have answered.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "snapshots" / snapshot_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, (texts, labels) in (("train", train), ("eval", eval_)):
        table = pa.table({text_field: texts, "label": pa.array(labels, pa.int64())})
        pq.write_table(table, folder / f"{name}.parquet")
    result = DatasetSnapshotResult(
        snapshot_id=snapshot_id,
        dataset_name=dataset_name,
        num_train_samples=len(train[0]),
        num_eval_samples=len(eval_[0]),
        data_hash="0" * 64,
        snapshot_timestamp="2026-01-01T00:00:00+00:00",
        snapshot_path=f"snapshots/{snapshot_id}",
        label_names=["negative", "positive"],
        text_field=text_field,
        label_field="label",
    )
    manifest = SnapshotManifest(
        format="durabert-snapshot-v1",
        snapshot_id=snapshot_id,
        data_hash=result.data_hash,
        snapshot_timestamp=result.snapshot_timestamp,
        created_by_run_id="testkit",
        source=SnapshotSource(dataset_name=dataset_name, seed=42),
        fields=SnapshotFields(text_field=text_field, label_field="label"),
        label_names=result.label_names,
        num_train_samples=result.num_train_samples,
        num_eval_samples=result.num_eval_samples,
    )
    (folder / MANIFEST_FILE).write_text(manifest.to_json())
    return result
