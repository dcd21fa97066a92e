"""Object-store data files (s3://) on a worker in offline mode, as workers run here and air-gapped.

``datasets`` refuses every URL with ``HF_HUB_OFFLINE=1``; the data worker fetches object-store
files itself into a private staging folder and loads the local copies. A real S3 API (moto)
serves the files; offline mode is switched on the way ``datasets`` reads it (its ``config``
module took the variable at import time, so the module attributes are patched too).
"""

import fcntl
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub
import pyarrow.parquet as pq
import pytest
from dw_helpers import json_request, reviews
from huggingface_hub.errors import OfflineModeIsEnabled
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.data_worker.activities import SnapshotActivities
from durabert.data_worker.failures import redacted_failure
from durabert.data_worker.staging import STAGING_DIR, remove_leftovers
from durabert.shared.errors import ErrorType
from durabert.shared.models import DatasetSnapshotRequest, DatasetSnapshotResult
from durabert.shared.settings import DurabertSettings


@dataclass(frozen=True)
class DataBucket:
    """A bucket holding data files under ``datasets/``."""

    name: str
    """The bucket's name."""
    client: Any
    """A boto3 client of the server."""

    def put(self, key: str, body: bytes, **options: Any) -> str:
        """Store an object under ``datasets/`` and return its ``s3://`` URL."""
        self.client.put_object(Bucket=self.name, Key=f"datasets/{key}", Body=body, **options)
        return self.url(key)

    def put_rows(self, key: str, rows: Sequence[dict[str, Any]]) -> str:
        """Store rows as JSON lines and return the file's URL."""
        return self.put(key, _jsonl(rows))

    def url(self, key: str) -> str:
        """The ``s3://`` URL of a key under ``datasets/``."""
        return f"s3://{self.name}/datasets/{key}"


def _jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def data_bucket(s3_server: Any, s3_root: str) -> DataBucket:
    """A new bucket; the AWS_* variables point at moto."""
    return DataBucket(name=s3_root.removeprefix("s3://").split("/")[0], client=s3_server.client())


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode, as ``HF_HUB_OFFLINE=1`` in the worker's environment gives it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture
def settings(tmp_path: Path, data_bucket: DataBucket) -> DurabertSettings:
    """A local artifact root; data from the data folder or under the bucket's ``datasets/``."""
    (tmp_path / "data").mkdir()
    return DurabertSettings(
        artifact_root=tmp_path / "artifacts",
        data_dir=tmp_path / "data",
        work_dir=tmp_path / "work",
        allowed_data_roots=[f"s3://{data_bucket.name}/datasets", tmp_path / "data"],
        store={"retry_seconds": 0.5},
    )


def _run(settings: DurabertSettings, request: DatasetSnapshotRequest) -> DatasetSnapshotResult:
    result: DatasetSnapshotResult = ActivityEnvironment().run(
        SnapshotActivities(settings).create_dataset_snapshot, request
    )
    return result


def _refused(settings: DurabertSettings, request: DatasetSnapshotRequest) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        _run(settings, request)
    return caught.value


def _staging_left(settings: DurabertSettings) -> list[str]:
    folder = settings.work_dir / STAGING_DIR
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def _stored_sentences(settings: DurabertSettings, result: DatasetSnapshotResult, split: str) -> list[str]:
    table = pq.read_table(settings.artifact_dir / result.snapshot_path / f"{split}.parquet")
    return [str(value) for value in table.column("sentence").to_pylist()]


@pytest.mark.usefixtures("offline")
def test_a_glob_of_s3_files_is_snapshotted_offline_with_the_id_of_a_local_copy(
    settings: DurabertSettings, data_bucket: DataBucket
) -> None:
    rows = reviews(50)
    data_bucket.put_rows("reviews/part-1.jsonl", rows[:30])
    data_bucket.put_rows("reviews/part-2.jsonl", rows[30:])
    data_bucket.put("reviews/notes.txt", b"not data")  # the glob must not pick it up
    pattern = data_bucket.url("reviews/part-*.jsonl")

    from_s3 = _run(settings, json_request(pattern))
    assert from_s3.num_train_samples + from_s3.num_eval_samples == 50
    manifest = json.loads((settings.artifact_dir / from_s3.snapshot_path / "manifest.json").read_text())
    assert manifest["source"]["data_files"] == pattern  # the request's URL, not where it was staged
    assert _staging_left(settings) == []

    for name, part in (("part-1.jsonl", rows[:30]), ("part-2.jsonl", rows[30:])):
        (settings.data_dir / name).write_bytes(_jsonl(part))
    from_disk = _run(settings, json_request(str(settings.data_dir / "part-*.jsonl")))
    assert from_disk.snapshot_id == from_s3.snapshot_id
    assert from_disk.cache_hit


@pytest.mark.usefixtures("offline")
def test_a_split_dict_of_s3_files_keeps_its_splits_and_file_order(
    settings: DurabertSettings, data_bucket: DataBucket
) -> None:
    rows = reviews(40)
    first = data_bucket.put_rows("split/train-b.jsonl", rows[:15])
    second = data_bucket.put_rows("split/train-a.jsonl", rows[15:30])
    validation = data_bucket.put_rows("split/validation.jsonl", rows[30:])
    request = json_request({"train": [first, second], "validation": validation}, shuffle_before_select=False)

    result = _run(settings, request)
    assert (result.num_train_samples, result.num_eval_samples) == (30, 10)
    assert _stored_sentences(settings, result, "train") == [row["sentence"] for row in rows[:30]]
    assert _stored_sentences(settings, result, "eval") == [row["sentence"] for row in rows[30:]]
    assert _staging_left(settings) == []


@pytest.mark.usefixtures("offline")
def test_a_glob_matching_nothing_or_outside_the_roots_downloads_nothing(
    settings: DurabertSettings, data_bucket: DataBucket
) -> None:
    data_bucket.put_rows("reviews/part-1.jsonl", reviews(10))
    nothing = _refused(settings, json_request(data_bucket.url("reviews/none-*.jsonl")))
    assert nothing.type == ErrorType.INVALID_INPUT
    assert nothing.message.startswith("data_files: ")
    assert "matches no file" in nothing.message

    # One entry is allowed, the other not: nothing is fetched, not even the allowed one.
    outside = f"s3://{data_bucket.name}/private/*.jsonl"
    refused = _refused(settings, json_request([data_bucket.url("reviews/part-1.jsonl"), outside]))
    assert refused.type == ErrorType.INVALID_INPUT
    assert "outside the allowed data roots" in refused.message
    assert not (settings.work_dir / STAGING_DIR).exists()


@pytest.mark.usefixtures("offline")
def test_the_staging_folder_is_removed_when_the_snapshot_fails(
    settings: DurabertSettings, data_bucket: DataBucket
) -> None:
    data_bucket.put_rows("broken/part-1.jsonl", reviews(10))
    data_bucket.put("broken/part-2.jsonl", b'{"sentence": "cut off", "lab')
    error = _refused(settings, json_request(data_bucket.url("broken/*.jsonl")))
    assert error.type == ErrorType.INVALID_INPUT
    assert (settings.work_dir / STAGING_DIR).exists()  # it was staged ...
    assert _staging_left(settings) == []  # ... and removed


def test_refused_credentials_and_a_missing_bucket_are_configuration_errors(
    s3_server: Any, settings: DurabertSettings, data_bucket: DataBucket
) -> None:
    url = data_bucket.put_rows("reviews/part-1.jsonl", reviews(10))
    with s3_server.authentication():
        refused = _refused(settings, json_request(url))
    assert refused.type == ErrorType.CONFIGURATION
    assert refused.non_retryable
    assert "AWS_ACCESS_KEY_ID" in refused.message

    missing = "s3://durabert-no-such-bucket/datasets/a.jsonl"
    unconfined = settings.model_copy(update={"allowed_data_roots": None})
    error = _refused(unconfined, json_request(missing))
    assert error.type == ErrorType.CONFIGURATION
    assert "does not exist" in error.message
    assert "AWS_ENDPOINT_URL" in error.message


def test_an_unreachable_store_is_retried_and_then_reported_as_retryable(
    s3_server: Any, settings: DurabertSettings, data_bucket: DataBucket
) -> None:
    url = data_bucket.put_rows("reviews/part-1.jsonl", reviews(10))
    s3_server.set_reachable(False)
    try:
        error = _refused(settings, json_request(url))
    finally:
        s3_server.set_reachable(True)
    assert error.type == ErrorType.ARTIFACT_STORE
    assert not error.non_retryable
    assert "after 0.5 s of retries" in error.message
    assert _run(settings, json_request(url)).num_train_samples > 0  # the next attempt succeeds


def test_an_object_store_folder_as_dataset_name_is_refused(
    settings: DurabertSettings, data_bucket: DataBucket
) -> None:
    folder = data_bucket.url("reviews")
    request = DatasetSnapshotRequest(run_id="folder", dataset_name=folder, text_field="sentence")
    error = _refused(settings, request)
    assert error.type == ErrorType.INVALID_INPUT
    assert error.message.startswith("dataset_name: ")
    assert f"{folder}/*.jsonl" in error.message


def test_an_http_url_in_offline_mode_is_a_configuration_error(
    s3_server: Any, settings: DurabertSettings, data_bucket: DataBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto serves the object over plain HTTP too: the URL works online, so offline mode is the cause.
    data_bucket.put("web/train.jsonl", _jsonl(reviews(20)), ACL="public-read")
    url = f"{s3_server.endpoint_url}/{data_bucket.name}/datasets/web/train.jsonl"
    assert _run(settings, json_request(url)).num_train_samples > 0

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    error = _refused(settings, json_request(url, run_id="offline"))
    assert error.type == ErrorType.CONFIGURATION
    assert error.non_retryable
    assert "HF_HUB_OFFLINE=1" in error.message


def test_an_offline_refusal_from_the_loader_is_never_retried(
    settings: DurabertSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As datasets reports an uncached hub dataset offline: a ConnectionError caused by the refusal.
    def load(path: str, *_: Any, **__: Any) -> None:
        try:
            raise OfflineModeIsEnabled("Offline mode is enabled.")
        except OfflineModeIsEnabled as refusal:
            raise ConnectionError(
                f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)"
            ) from refusal

    monkeypatch.setattr(datasets, "load_dataset", load)
    error = _refused(settings, DatasetSnapshotRequest(run_id="hub", dataset_name="someone/reviews"))
    assert error.type == ErrorType.CONFIGURATION
    assert error.non_retryable
    assert "someone/reviews" in error.message
    assert "HF_HUB_OFFLINE=1" in error.message


def test_an_offline_refusal_reaching_the_activity_unwrapped_is_not_retried() -> None:
    failure = redacted_failure(
        OfflineModeIsEnabled("Offline mode is enabled. Tried to reach https://u:pw@host/x")
    )
    assert failure.type == ErrorType.CONFIGURATION
    assert failure.non_retryable
    assert "pw@" not in failure.message
    assert (
        redacted_failure(ConnectionError("connection reset")).non_retryable is False
    )  # others still retried


def test_leftovers_of_a_killed_staging_are_removed_and_running_ones_kept(tmp_path: Path) -> None:
    parent = tmp_path / STAGING_DIR
    for name in ("killed", "running"):
        (parent / name / "files").mkdir(parents=True)
        (parent / name / "files" / "a.jsonl").write_text("{}\n")
        (parent / f"{name}.lock").touch()
    with (parent / "running.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert remove_leftovers(parent) == ["killed"]
    assert sorted(path.name for path in parent.iterdir()) == ["running", "running.lock"]
