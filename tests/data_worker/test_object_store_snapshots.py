"""Snapshots on an object-store artifact root (a real S3 API, served by moto).

The store is the truth: a snapshot is complete there only with its completion marker, a
second request is answered from the store (even by a worker whose work dir is empty), a killed
upload's leftovers are never taken for a snapshot, and a worker with no credentials stops at
start naming the variables.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from dw_helpers import json_request, reviews
from temporalio.exceptions import ApplicationError

from durabert.data_worker.snapshot import create_snapshot
from durabert.shared.cli_support import check_artifact_store
from durabert.shared.errors import ErrorType
from durabert.shared.models import DatasetSnapshotRequest
from durabert.shared.object_store import MARKER_FILE, ObjectStore
from durabert.shared.settings import DurabertSettings

SNAPSHOT_FILES = ["eval.parquet", "manifest.json", "train.parquet"]


@dataclass(frozen=True)
class Bucket:
    """The test's bucket and its artifact root in it."""

    root: str
    """``s3://<bucket>/artifacts``, the artifact root."""
    name: str
    """The bucket's name."""
    client: Any
    """A boto3 client of the server, to look at the objects behind the store's back."""

    def listing(self) -> list[str]:
        """Every object key under the root, relative to it."""
        listing = self.client.list_objects_v2(Bucket=self.name, Prefix="artifacts/")
        return sorted(item["Key"].removeprefix("artifacts/") for item in listing.get("Contents", []))

    def get(self, key: str) -> bytes:
        """An object's content."""
        body: bytes = self.client.get_object(Bucket=self.name, Key=f"artifacts/{key}")["Body"].read()
        return body

    def put(self, key: str, body: bytes) -> None:
        """Write an object behind the store's back."""
        self.client.put_object(Bucket=self.name, Key=f"artifacts/{key}", Body=body)

    def delete(self, key: str) -> None:
        """Delete an object behind the store's back."""
        self.client.delete_object(Bucket=self.name, Key=f"artifacts/{key}")


@pytest.fixture
def bucket(s3_server: Any, s3_root: str) -> Bucket:
    """A new, empty bucket holding the artifact root; the AWS_* variables point at moto."""
    return Bucket(root=s3_root, name=s3_root.removeprefix("s3://").split("/")[0], client=s3_server.client())


def _settings(tmp_path: Path, root: str, work: str = "work", **store: Any) -> DurabertSettings:
    return DurabertSettings(
        artifact_root=root,
        work_dir=tmp_path / work,
        data_dir=tmp_path / "data",
        store={"retry_seconds": 2, **store},
    )


@pytest.fixture
def request_rows(tmp_path: Path) -> DatasetSnapshotRequest:
    """A JSON request over 60 rows in the test's data folder."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in reviews(60)))
    return json_request("rows.jsonl")


def test_a_snapshot_is_uploaded_with_its_marker_and_answered_from_the_store(
    tmp_path: Path, bucket: Bucket, request_rows: DatasetSnapshotRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = create_snapshot(request_rows, _settings(tmp_path, bucket.root)).result
    assert not first.cache_hit
    assert first.snapshot_path == f"snapshots/{first.snapshot_id}"  # the same key as on a local root
    prefix = f"snapshots/{first.snapshot_id}/"
    assert bucket.listing() == [prefix + name for name in sorted([*SNAPSHOT_FILES, MARKER_FILE])]
    # The local copy was scratch: the worker keeps nothing once the store holds the snapshot.
    assert not (tmp_path / "work" / "artifacts" / first.snapshot_path).exists()

    # Another worker, whose work dir is empty, is answered from the store: nothing is uploaded.
    monkeypatch.setattr(ObjectStore, "upload_folder", lambda *a, **k: pytest.fail("uploaded again"))
    second = create_snapshot(request_rows, _settings(tmp_path, bucket.root, work="other-work")).result
    assert second.cache_hit
    assert (second.snapshot_id, second.snapshot_timestamp) == (first.snapshot_id, first.snapshot_timestamp)
    assert not (tmp_path / "other-work" / "artifacts" / "snapshots" / first.snapshot_id).exists()


def test_the_uploaded_snapshot_downloads_whole_and_verified(
    tmp_path: Path, bucket: Bucket, request_rows: DatasetSnapshotRequest
) -> None:
    result = create_snapshot(request_rows, _settings(tmp_path, bucket.root)).result
    copy = tmp_path / "gpu-copy"
    marker = ObjectStore(bucket.root, retry_seconds=2).download_folder(result.snapshot_path, copy)
    assert marker is not None
    assert sorted(marker.files) == SNAPSHOT_FILES
    assert marker.writer["run_id"] == request_rows.run_id
    assert pq.read_table(copy / "train.parquet").num_rows == result.num_train_samples


def test_a_markerless_leftover_is_never_reused(
    tmp_path: Path, bucket: Bucket, request_rows: DatasetSnapshotRequest
) -> None:
    settings = _settings(tmp_path, bucket.root)
    first = create_snapshot(request_rows, settings).result
    # A killed upload: the right manifest and a damaged split file, but no completion marker.
    bucket.delete(f"{first.snapshot_path}/{MARKER_FILE}")
    bucket.put(f"{first.snapshot_path}/train.parquet", b"half a file")

    rebuilt = create_snapshot(request_rows, settings).result
    assert not rebuilt.cache_hit
    assert rebuilt.snapshot_id == first.snapshot_id
    copy = tmp_path / "copy"
    assert ObjectStore(bucket.root, retry_seconds=2).download_folder(rebuilt.snapshot_path, copy)
    assert pq.read_table(copy / "train.parquet").num_rows == first.num_train_samples


def test_old_leftovers_are_cleaned_before_an_upload_and_complete_snapshots_kept(
    tmp_path: Path, bucket: Bucket, request_rows: DatasetSnapshotRequest
) -> None:
    settings = _settings(tmp_path, bucket.root, leftover_age_seconds=0)
    bucket.put("snapshots/0123456789abcdef/train.parquet", b"a killed upload")
    kept = create_snapshot(json_request("rows.jsonl", seed=7), settings).result
    assert not any(key.startswith("snapshots/0123456789abcdef/") for key in bucket.listing())

    other = create_snapshot(request_rows, settings).result  # another upload: the first is complete
    assert other.snapshot_id != kept.snapshot_id
    assert f"snapshots/{kept.snapshot_id}/{MARKER_FILE}" in bucket.listing()


def test_a_complete_snapshot_of_other_content_under_the_id_is_refused(
    tmp_path: Path, bucket: Bucket, request_rows: DatasetSnapshotRequest
) -> None:
    settings = _settings(tmp_path, bucket.root)
    first = create_snapshot(request_rows, settings).result
    key = f"{first.snapshot_path}/manifest.json"
    bucket.put(key, bucket.get(key).replace(first.data_hash.encode(), b"f" * len(first.data_hash)))
    before = bucket.listing()

    with pytest.raises(ApplicationError) as caught:
        create_snapshot(request_rows, settings)
    assert caught.value.type == ErrorType.CONFIGURATION
    assert "taken by other content" in caught.value.message
    assert bucket.listing() == before


def test_a_local_copy_whose_upload_failed_is_uploaded_by_the_retry(
    tmp_path: Path, bucket: Bucket, request_rows: DatasetSnapshotRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, bucket.root)
    upload = ObjectStore.upload_folder

    def unreachable(*_: Any, **__: Any) -> None:
        raise ApplicationError("store unreachable", type=ErrorType.ARTIFACT_STORE)

    monkeypatch.setattr(ObjectStore, "upload_folder", unreachable)
    with pytest.raises(ApplicationError, match="unreachable"):
        create_snapshot(request_rows, settings)
    local = [path.name for path in (settings.artifact_dir / "snapshots").iterdir()]
    assert [name for name in local if not name.startswith(".")] != []  # kept for the retry
    assert bucket.listing() == []

    monkeypatch.setattr(ObjectStore, "upload_folder", upload)  # not undo(): that drops the AWS_* too
    retried = create_snapshot(request_rows, settings).result
    assert not retried.cache_hit  # the store did not hold it: it was published now
    assert f"{retried.snapshot_path}/{MARKER_FILE}" in bucket.listing()
    assert not (settings.artifact_dir / retried.snapshot_path).exists()


def test_a_worker_whose_key_is_refused_stops_at_start_naming_the_variables(
    tmp_path: Path, bucket: Bucket, s3_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with s3_server.authentication(), pytest.raises(SystemExit) as caught:
        check_artifact_store(_settings(tmp_path, bucket.root))
    assert caught.value.code == 2
    assert "AWS_ACCESS_KEY_ID" in capsys.readouterr().err


def test_a_worker_without_credentials_stops_at_start_naming_them(
    tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    # Nothing else may supply credentials: no shared files (instance metadata is off in s3_root).
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(SystemExit) as caught:
        check_artifact_store(_settings(tmp_path, bucket.root))
    assert caught.value.code == 2
    assert "AWS_ACCESS_KEY_ID" in capsys.readouterr().err


def test_a_missing_bucket_stops_the_worker_at_start(
    tmp_path: Path, bucket: Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        check_artifact_store(_settings(tmp_path, f"s3://{bucket.name}-missing/artifacts"))
    assert caught.value.code == 2
    assert "DURABERT_ARTIFACT_ROOT" in capsys.readouterr().err
    check_artifact_store(_settings(tmp_path, bucket.root))  # the existing bucket passes


def test_a_local_root_is_not_checked(tmp_path: Path) -> None:
    check_artifact_store(DurabertSettings(artifact_root=tmp_path / "artifacts"))
    assert not (tmp_path / "artifacts").exists()  # nothing was written to probe it
