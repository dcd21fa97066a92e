"""Snapshot folders are either absent or complete; existing content is reused, not rewritten."""

import json
import os

import pyarrow.parquet as pq
import pytest
from dw_helpers import json_request, reviews

from durabert.data_worker import store
from durabert.data_worker.snapshot import create_snapshot
from durabert.shared.artifacts import ArtifactStore


def _snapshots(settings) -> list[str]:
    folder = settings.artifact_dir / "snapshots"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_interrupted_write_is_not_complete_and_the_retry_succeeds(
    local_settings, write_rows, monkeypatch
) -> None:
    write_rows("rows.jsonl", reviews(100))
    request = json_request("rows.jsonl")
    calls = []

    def crash(temporary, final) -> None:
        # The data and manifest are written; the worker dies before the rename.
        calls.append(sorted(path.name for path in temporary.iterdir()))
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(store, "_rename_into_place", crash)
    with pytest.raises(OSError, match="simulated crash"):
        create_snapshot(request, local_settings)
    assert calls == [["eval.parquet", "manifest.json", "train.parquet"]]
    assert _snapshots(local_settings) == []  # nothing left that could pass for a snapshot

    monkeypatch.undo()
    retried = create_snapshot(request, local_settings).result
    assert not retried.cache_hit
    assert _snapshots(local_settings) == [retried.snapshot_id]
    again = create_snapshot(request, local_settings).result
    assert again.cache_hit
    assert again.snapshot_timestamp == retried.snapshot_timestamp


def test_killed_writers_leftovers_are_ignored_and_replaced(local_settings, write_rows) -> None:
    write_rows("rows.jsonl", reviews(60))
    request = json_request("rows.jsonl")
    first = create_snapshot(request, local_settings).result
    folder = ArtifactStore(local_settings.artifact_dir).resolve(first.snapshot_path)
    # A worker killed outright (SIGKILL) leaves its temporary folder; a foreign copy left a
    # folder without manifest under the final name. Neither may count as complete.
    leftover = folder.parent / f"{store.TEMP_PREFIX}{first.snapshot_id}-dead"
    os.rename(folder, leftover)
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"half a file")

    rebuilt = create_snapshot(request, local_settings).result
    assert not rebuilt.cache_hit
    assert rebuilt.snapshot_id == first.snapshot_id
    assert pq.read_table(folder / "train.parquet").num_rows == first.num_train_samples
    assert leftover.exists()  # a temporary folder is never read, whatever it holds

    (folder / "eval.parquet").unlink()  # a manifest whose files are gone is not complete either
    assert not create_snapshot(request, local_settings).result.cache_hit


def test_stored_files_and_manifest(local_settings, write_rows) -> None:
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": ["b", "a", "c"][i % 3]} for i in range(30)]
    write_rows("pairs.jsonl", rows)
    request = json_request(
        "pairs.jsonl",
        text_field="premise",
        text_pair_field="hypothesis",
        label_field="gold",
        eval_fraction=0.2,
    )
    result = create_snapshot(request, local_settings).result
    assert result.label_names == ["a", "b", "c"]
    assert result.dataset_schema == {
        "text_field": "premise",
        "text_pair_field": "hypothesis",
        "label_field": "gold",
        "task_type": "classification",
        "num_labels": "3",
    }
    assert result.snapshot_path == f"snapshots/{result.snapshot_id}"
    folder = local_settings.artifact_dir / result.snapshot_path
    train = pq.read_table(folder / "train.parquet")
    evaluation = pq.read_table(folder / "eval.parquet")
    assert train.column_names == ["premise", "hypothesis", "gold"]
    assert str(train.schema.field("gold").type) == "int64"
    assert (train.num_rows, evaluation.num_rows) == (24, 6)
    stored = train.to_pylist() + evaluation.to_pylist()
    expected = sorted((r["premise"], r["hypothesis"], result.label_names.index(r["gold"])) for r in rows)
    assert sorted((r["premise"], r["hypothesis"], r["gold"]) for r in stored) == expected
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["data_hash"] == result.data_hash
    assert manifest["source"]["eval_split"] is None
    assert manifest["source"]["eval_fraction"] == 0.2
    assert manifest["num_train_samples"] == 24
    assert {"datasets", "pyarrow", "python"} <= set(manifest["versions"])


def test_source_eval_split_is_used_and_shuffle_can_be_turned_off(local_settings, write_rows) -> None:
    write_rows("train.jsonl", reviews(40))
    write_rows("validation.jsonl", reviews(12))
    files = {"train": "train.jsonl", "validation": "validation.jsonl"}
    result = create_snapshot(json_request(files), local_settings).result
    assert (result.num_train_samples, result.num_eval_samples) == (40, 12)

    kept = create_snapshot(
        json_request(files, shuffle_before_select=False, max_samples=5), local_settings
    ).result
    train = pq.read_table(local_settings.artifact_dir / kept.snapshot_path / "train.parquet")
    assert train.column("sentence").to_pylist() == [row["sentence"] for row in reviews(5)]
