"""Each bad input gets its own non-retryable error naming the field and the source."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dw_helpers import json_request, reviews
from temporalio.exceptions import ApplicationError

from durabert.data_worker.snapshot import create_snapshot
from durabert.shared.errors import ErrorType
from durabert.shared.models import DatasetSnapshotRequest
from durabert.shared.settings import DurabertSettings


def _refused(request: DatasetSnapshotRequest, settings: DurabertSettings) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        create_snapshot(request, settings)
    error = caught.value
    assert error.non_retryable, error
    return error


def _rows_with(label: Any) -> list[dict[str, Any]]:
    rows = reviews(20)
    rows[5]["label"] = label
    return rows


Case = Callable[[Callable[..., Path], DurabertSettings], DatasetSnapshotRequest]

CASES: dict[str, tuple[Case, str, str]] = {
    "missing text column": (
        lambda write, s: json_request(str(write("a.jsonl", reviews(20))), text_field="text"),
        "text_field",
        "'text' is not in split 'train' of json files",
    ),
    "missing pair column": (
        lambda write, s: json_request(str(write("a.jsonl", reviews(20))), text_pair_field="hypothesis"),
        "text_pair_field",
        "'hypothesis' is not in split 'train'",
    ),
    "missing label column": (
        lambda write, s: json_request(str(write("a.jsonl", reviews(20))), label_field="stars"),
        "label_field",
        "'stars' is not in split 'train'",
    ),
    "null label": (
        lambda write, s: json_request(str(write("a.jsonl", _rows_with(None)))),
        "label_field",
        "1 null or missing label(s) in split 'train' of json files",
    ),
    "float label": (
        lambda write, s: json_request(
            str(write("a.jsonl", [{"sentence": f"s{i}", "label": i / 2} for i in range(10)]))
        ),
        "label_field",
        "holds double",
    ),
    "single class": (
        lambda write, s: json_request(
            str(write("a.jsonl", [{"sentence": f"s{i}", "label": "only"} for i in range(10)]))
        ),
        "label_field",
        "1 class(es) (only)",
    ),
    "free text as labels": (
        lambda write, s: json_request(
            str(write("a.jsonl", [{"sentence": "x", "label": f"note {i}"} for i in range(10_001)]))
        ),
        "label_field",
        "10001 distinct labels, more than 10,000",
    ),
    "null text": (
        lambda write, s: json_request(
            str(write("a.jsonl", [{"sentence": None if i == 3 else "x", "label": i % 2} for i in range(10)]))
        ),
        "text_field",
        "1 null value(s)",
    ),
    "file outside the data roots": (
        lambda write, s: json_request("/etc/hostname"),
        "data_files",
        "outside the allowed data roots",
    ),
    "escape by dot-dot": (
        lambda write, s: json_request("../../../etc/hostname"),
        "data_files",
        "outside the allowed data roots",
    ),
    "glob matching nothing": (
        lambda write, s: json_request("nothing-*.jsonl"),
        "data_files",
        "matches no file",
    ),
    "missing file": (
        lambda write, s: json_request("absent.jsonl"),
        "data_files",
        "is not a file",
    ),
    "unparseable file": (
        lambda write, s: json_request(str(_write_text(s.data_dir / "bad.jsonl", '{"sentence": "a", "lab'))),
        "data_files",
        "cannot read json files",
    ),
    "local dataset folder outside the roots": (
        lambda write, s: DatasetSnapshotRequest(run_id="r", dataset_name="/etc"),
        "dataset_name",
        "local path outside the allowed data roots",
    ),
    "remote code not allowed": (
        lambda write, s: DatasetSnapshotRequest(run_id="r", dataset_name="glue", trust_remote_code=True),
        "trust_remote_code",
        "DURABERT_DATA__ALLOW_TRUST_REMOTE_CODE",
    ),
    "empty dataset": (
        lambda write, s: json_request(
            str(_write_text(s.data_dir / "empty.csv", "sentence,label\n")), dataset_name="csv"
        ),
        "data_files",
        "empty.csv' has no rows",
    ),
}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _parquet(path: Path, texts: list[str], labels: list[str]) -> Path:
    pq.write_table(
        pa.table({"sentence": pa.array(texts, pa.string()), "label": pa.array(labels, pa.string())}), path
    )
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_naming_the_field(case: str, local_settings, write_rows) -> None:
    build, field, fragment = CASES[case]
    error = _refused(build(write_rows, local_settings), local_settings)
    assert error.type == ErrorType.INVALID_INPUT
    assert error.message.startswith(f"{field}: "), error.message
    assert fragment in error.message


def test_two_rows_without_eval_split_hold_out_one(local_settings) -> None:
    two = _parquet(local_settings.data_dir / "two.parquet", ["a", "b"], ["x", "y"])
    result = create_snapshot(json_request(str(two), dataset_name="parquet"), local_settings).result
    assert (result.num_train_samples, result.num_eval_samples) == (1, 1)


def test_hub_eval_split_with_missing_labels_is_refused(local_settings) -> None:
    # A ClassLabel eval split with -1 ("no label", as in GLUE's test splits) names the field.
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    # Parquet written by datasets keeps the ClassLabel feature, as a hub dataset declares it.
    Dataset.from_dict({"sentence": ["a", "b", "c"], "label": [0, 1, 1]}, features=features).to_parquet(
        str(local_settings.data_dir / "train.parquet")
    )
    Dataset.from_dict({"sentence": ["d", "e"], "label": [1, -1]}, features=features).to_parquet(
        str(local_settings.data_dir / "test.parquet")
    )
    request = json_request(
        {"train": "train.parquet", "test": "test.parquet"}, dataset_name="parquet", eval_split_names=["test"]
    )
    error = _refused(request, local_settings)
    assert error.message.startswith("label_field: "), error.message
    assert "split 'test'" in error.message


def test_remote_code_allowed_by_the_worker_is_not_refused(local_settings, write_rows) -> None:
    # With the worker's permission the flag reaches the loader (datasets 4+ ignores it: it
    # runs no loading scripts at all), so the same request that was refused now succeeds.
    allowed = local_settings.data.model_copy(update={"allow_trust_remote_code": True})
    settings = local_settings.model_copy(update={"data": allowed})
    request = json_request(str(write_rows("a.jsonl", reviews(20))), trust_remote_code=True)
    assert _refused(request, local_settings).message.startswith("trust_remote_code: ")
    assert create_snapshot(request, settings).result.num_train_samples == 18
