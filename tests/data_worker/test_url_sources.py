"""Data URLs: credentials never leave the worker, and URLs that cannot be read are refused at once.

No network: a URL source is "read" by a stand-in for ``load_dataset`` that serves local rows
(and checks that it was given the URL *with* its credentials, which reading needs), or that
fails with a message echoing the URL, as fsspec and ``datasets`` do.
"""

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from dw_helpers import reviews
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.data_worker import sources
from durabert.data_worker.activities import SnapshotActivities
from durabert.shared.errors import ErrorType
from durabert.shared.logging import configure_logging
from durabert.shared.models import DatasetSnapshotRequest
from durabert.shared.redaction import REDACTED, redact

SECRETS = ("s3cr3t-pass", "tok-123456", "AKIAEXAMPLEKEY", "sig-abcdef", "cred-xyz", "amz-sig-999")
URLS = [
    "https://alice:s3cr3t-pass@data.example.com/reviews/train.jsonl",
    "https://tok-123456@data.example.com/train.jsonl",
    "s3://bucket/train.jsonl?AWSAccessKeyId=AKIAEXAMPLEKEY&Signature=sig-abcdef&Expires=1700000000",
    "https://bucket.s3.amazonaws.com/t.jsonl?X-Amz-Credential=cred-xyz&X-Amz-Signature=amz-sig-999&X-Amz-Date=1",
    "https://host.example.com/train.jsonl?token=tok-123456&page=2",
    "https://acct.blob.core.windows.net/c/train.jsonl?sv=2022&sig=sig-abcdef",
]
LOADER_URLS = [url for url in URLS if url.startswith("https://")]
"""URLs that datasets itself reads (object-store URLs are staged by the worker first)."""


def _secrets_in(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


@pytest.mark.parametrize("url", URLS)
def test_redact_removes_credentials_and_keeps_the_rest(url: str) -> None:
    redacted = redact(url)
    assert _secrets_in(redacted) == []
    assert REDACTED in redacted
    assert redacted.split("://")[0] == url.split("://")[0]
    assert "train.jsonl" in redacted or "t.jsonl" in redacted
    assert redact(f"cannot open {url!r}: 403") == f"cannot open {redacted!r}: 403"  # inside messages too


def test_redact_keeps_harmless_urls_and_parameters() -> None:
    for text in ("https://host/x.jsonl?page=2&Expires=1", "/data/a.jsonl", "hf://datasets/a/b/c.parquet"):
        assert redact(text) == text


@pytest.fixture
def backends_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend every fsspec package is installed, so the stand-in loader is reached."""
    monkeypatch.setattr(sources, "_installed", lambda package: True)


def _serve_rows(monkeypatch: pytest.MonkeyPatch, url: str) -> list[Any]:
    seen: list[Any] = []

    def load(path: str, name: Any = None, *, data_files: Any = None, **_: Any) -> datasets.DatasetDict:
        seen.append(data_files)
        rows = reviews(40)
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})

    monkeypatch.setattr(datasets, "load_dataset", load)
    # Online, whatever the shell says: offline, http(s) sources are refused before any loader runs.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return seen


def _run_activity(settings: Any, request: DatasetSnapshotRequest) -> Any:
    return ActivityEnvironment().run(SnapshotActivities(settings).create_dataset_snapshot, request)


@pytest.mark.usefixtures("backends_installed")
@pytest.mark.parametrize("url", LOADER_URLS)
def test_a_snapshot_of_a_url_with_credentials_never_shows_them(
    url: str, local_settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "DEBUG")
    seen = _serve_rows(monkeypatch, url)
    request = DatasetSnapshotRequest(
        run_id="creds", dataset_name="json", data_files=url, text_field="sentence"
    )
    result = _run_activity(local_settings, request)

    assert seen == [[url]]  # the loader got the real URL: reading needs the credentials
    manifest = (local_settings.artifact_dir / result.snapshot_path / "manifest.json").read_text()
    logs = capsys.readouterr().err
    assert "snapshot created" in logs  # the logs were captured, so their silence means something
    for written in (manifest, result.model_dump_json(), logs):
        assert _secrets_in(written) == [], written
    assert redact(url) in json.loads(manifest)["source"]["data_files"]


@pytest.mark.usefixtures("backends_installed")
def test_an_object_store_url_with_a_query_string_is_refused_without_its_secrets(
    local_settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The worker reads s3:// with its own credentials; a signed query cannot be used and must not leak.
    configure_logging("json", "DEBUG")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset was called"))
    request = DatasetSnapshotRequest(
        run_id="creds", dataset_name="json", data_files=URLS[2], text_field="sentence"
    )
    with pytest.raises(ApplicationError, match="query string") as caught:
        _run_activity(local_settings, request)
    assert caught.value.type == ErrorType.INVALID_INPUT
    assert caught.value.message.startswith("data_files: ")
    assert _secrets_in(caught.value.message) == []
    assert _secrets_in(capsys.readouterr().err) == []


@pytest.mark.usefixtures("backends_installed")
@pytest.mark.parametrize("failure", [ValueError, FileNotFoundError, PermissionError])
def test_a_loader_error_that_echoes_the_url_is_redacted(
    failure: type[Exception],
    local_settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "DEBUG")
    url = URLS[0]

    def fail(*_: Any, **__: Any) -> None:
        raise failure(f"Error reading {url}: 403 Forbidden (?X-Amz-Signature=amz-sig-999)")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    request = DatasetSnapshotRequest(
        run_id="creds", dataset_name="csv", data_files=[url], text_field="sentence"
    )
    with pytest.raises(ApplicationError) as caught:
        _run_activity(local_settings, request)
    error = caught.value
    assert "403 Forbidden" in error.message
    assert _secrets_in(error.message) == [], error.message
    assert error.__cause__ is None  # the unredacted original is not sent along as the cause
    assert _secrets_in(capsys.readouterr().err) == []


@pytest.mark.parametrize(
    ("url", "package"),
    [
        ("https://alice:s3cr3t-pass@data.example.com/train.jsonl", "aiohttp"),
        ("s3://bucket/train.jsonl?AWSAccessKeyId=AKIAEXAMPLEKEY&Signature=sig-abcdef", "s3fs"),
        ("gs://bucket/train.jsonl", "gcsfs"),
        ("az://container/train.jsonl", "adlfs"),
        ("abfs://container/train.jsonl", "adlfs"),
    ],
)
@pytest.mark.parametrize("field", ["data_files", "dataset_name"])
def test_a_url_without_its_fsspec_package_is_refused_at_once(
    url: str, package: str, field: str, local_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_installed", lambda name: name != package)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset was called"))
    fields = {"data_files": url} if field == "data_files" else {"dataset_name": url}
    request = DatasetSnapshotRequest.model_validate({"run_id": "nofs", "dataset_name": "json", **fields})
    with pytest.raises(ApplicationError) as caught:
        _run_activity(local_settings, request)
    error = caught.value
    assert error.type == ErrorType.CONFIGURATION
    assert error.non_retryable
    assert error.message.startswith(f"{field}: ")
    assert package in error.message
    assert _secrets_in(error.message) == []


def test_missing_packages_are_checked_for_real(local_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the stand-in: the check asks the import system (this environment has no s3fs).
    import importlib.util

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset was called"))
    request = DatasetSnapshotRequest(run_id="nofs", dataset_name="parquet", data_files="s3://b/train.parquet")
    with pytest.raises(ApplicationError, match="s3fs") as caught:
        _run_activity(local_settings, request)
    assert caught.value.type == ErrorType.CONFIGURATION


def test_local_files_need_no_package(local_settings, write_rows, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_installed", lambda name: False)
    path: Path = write_rows("rows.jsonl", reviews(20))
    request = DatasetSnapshotRequest(
        run_id="local", dataset_name="json", data_files=str(path), text_field="sentence"
    )
    assert _run_activity(local_settings, request).num_train_samples == 18


def test_a_snapshot_reads_s3_data_files_with_the_workers_credentials(
    s3_server: Any, s3_root: str, local_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real S3 API (moto): datasets reads s3:// through s3fs with the AWS_* variables that
    # s3_root set, AWS_ENDPOINT_URL included; no storage options are passed.
    bucket = s3_root.removeprefix("s3://").split("/")[0]
    body = "".join(json.dumps(row) + "\n" for row in reviews(30)).encode()
    s3_server.client().put_object(Bucket=bucket, Key="datasets/reviews/train.jsonl", Body=body)
    monkeypatch.setenv(
        "DURABERT_ALLOWED_DATA_ROOTS", json.dumps([f"s3://{bucket}/datasets", str(local_settings.data_dir)])
    )
    settings = type(local_settings)(
        artifact_root=local_settings.artifact_root, data_dir=local_settings.data_dir
    )
    url = f"s3://{bucket}/datasets/reviews/train.jsonl"
    request = DatasetSnapshotRequest(
        run_id="s3-data", dataset_name="json", data_files=url, text_field="sentence"
    )

    result = _run_activity(settings, request)
    assert result.num_train_samples + result.num_eval_samples == 30
    manifest = json.loads((settings.artifact_dir / result.snapshot_path / "manifest.json").read_text())
    assert manifest["source"]["data_files"] == url

    outside = request.model_copy(update={"data_files": f"s3://{bucket}/private/train.jsonl"})
    with pytest.raises(ApplicationError, match="outside the allowed data roots") as caught:
        _run_activity(settings, outside)
    assert caught.value.type == ErrorType.INVALID_INPUT
