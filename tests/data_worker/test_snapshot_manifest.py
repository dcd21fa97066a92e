"""The typed snapshot manifest: written through the model, old manifests still read and still hit."""

import json
from typing import Any

import pytest
from dw_helpers import json_request
from pydantic import ValidationError

from durabert.data_worker.snapshot import create_snapshot
from durabert.shared.snapshot_layout import MANIFEST_FILE, SPLIT_FILES, SnapshotManifest, read_manifest

OLD_MANIFEST: dict[str, Any] = {
    "created_by_run_id": "pin",
    "data_hash": "8589a7e2179a1cf39799933829656aa303ea6781ce70d58d4b589932b72b08cd",
    "fields": {"label_field": "label", "text_field": "sentence", "text_pair_field": None},
    "files": {"eval": "eval.parquet", "train": "train.parquet"},
    "format": "durabert-snapshot-v1",
    "label_names": ["mixed", "neg", "pos"],
    "num_eval_samples": 10,
    "num_train_samples": 50,
    "snapshot_id": "8589a7e2179a1cf3",
    "snapshot_timestamp": "2026-12-01T11:06:55.981685+00:00",
    "source": {
        "data_files": "p.jsonl",
        "dataset_config": None,
        "dataset_name": "json",
        "eval_fraction": 0.1,
        "eval_split": None,
        "max_eval_samples": 10,
        "max_samples": 50,
        "seed": 7,
        "shuffle_before_select": True,
    },
    "task_type": "classification",
    "versions": {"datasets": "5.2.0", "durabert-data-worker": "0.1.0", "python": "3.11.7"},
}
"""A manifest exactly as the data worker of b90eab6 wrote it (old key names in ``source``)."""


def _pinned_rows() -> list[dict[str, str]]:
    # The rows of test_snapshot_identity's pinned input, whose sampled snapshot OLD_MANIFEST describes.
    return [
        {
            "sentence": f"pinned review {i}: the plot was {'sharp' if i % 3 else 'slow'} ({i * 37 % 101})",
            "label": ["neg", "pos", "mixed"][(i * 7) % 3],
        }
        for i in range(120)
    ]


def test_a_manifest_written_by_the_previous_release_validates() -> None:
    manifest = SnapshotManifest.model_validate(OLD_MANIFEST)
    assert manifest.source.max_train_samples == 50
    assert manifest.source.dataset_config_name is None
    assert manifest.fields.text_field == "sentence"
    assert manifest.files == dict(SPLIT_FILES)


def test_a_store_written_by_the_previous_release_keeps_its_cache_hit(local_settings, write_rows) -> None:
    write_rows("pinned.jsonl", _pinned_rows())
    request = json_request("pinned.jsonl", max_train_samples=50, max_eval_samples=10, seed=7)
    first = create_snapshot(request, local_settings).result
    folder = local_settings.artifact_dir / first.snapshot_path
    (folder / MANIFEST_FILE).write_text(json.dumps(OLD_MANIFEST))  # as the old worker left it

    again = create_snapshot(request, local_settings).result
    assert again.cache_hit
    assert again.snapshot_id == OLD_MANIFEST["snapshot_id"]
    assert again.snapshot_timestamp == OLD_MANIFEST["snapshot_timestamp"]  # read from the old manifest


def test_new_manifests_use_the_new_names_and_read_back(local_settings, write_rows) -> None:
    write_rows("pinned.jsonl", _pinned_rows())
    request = json_request("pinned.jsonl", max_train_samples=50, dataset_config_name=None)
    result = create_snapshot(request, local_settings).result
    folder = local_settings.artifact_dir / result.snapshot_path
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    assert raw["source"]["max_train_samples"] == 50
    assert "max_samples" not in raw["source"]
    assert "dataset_config_name" in raw["source"]
    manifest = read_manifest(folder)
    assert (manifest.snapshot_id, manifest.data_hash) == (result.snapshot_id, result.data_hash)
    assert manifest.label_names == result.label_names


def test_keys_of_a_newer_writer_are_ignored() -> None:
    manifest = SnapshotManifest.model_validate(OLD_MANIFEST | {"written_by_a_later_release": {"x": 1}})
    assert manifest.snapshot_id == OLD_MANIFEST["snapshot_id"]


@pytest.mark.parametrize("name", ["../train.parquet", "/etc/passwd", "sub/train.parquet", ".."])
def test_split_files_must_be_plain_names_in_the_folder(name: str) -> None:
    with pytest.raises(ValidationError, match="files"):
        SnapshotManifest.model_validate(OLD_MANIFEST | {"files": {"train": name, "eval": "eval.parquet"}})


def test_a_manifest_missing_its_fields_is_refused() -> None:
    broken = {key: value for key, value in OLD_MANIFEST.items() if key != "fields"}
    with pytest.raises(ValidationError, match="fields"):
        SnapshotManifest.model_validate(broken)
