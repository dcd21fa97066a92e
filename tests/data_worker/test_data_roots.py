"""Every packaged loader is confined to the allowed roots; nothing resolves against the cwd.

The worker's current directory is set to ``/`` in these tests: there ``etc/passwd`` names a
real file, so a path resolved against the current directory would be read. A refusal must come
before ``datasets`` is asked for anything (``load_dataset`` is replaced by a trap).
"""

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from dw_helpers import json_request, reviews
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from durabert.data_worker import sources
from durabert.data_worker.snapshot import create_snapshot
from durabert.data_worker.sources import packaged_loaders, resolve_source
from durabert.shared.errors import ErrorType
from durabert.shared.models import DatasetSnapshotRequest
from durabert.shared.settings import DurabertSettings

INSTALLED_LOADERS = sorted(packaged_loaders())
"""The installed ``datasets``' packaged loader names (and older releases' names)."""


@pytest.fixture
def trapped_loader(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Replace ``datasets.load_dataset`` with a trap that records calls and reads nothing."""
    calls: list[tuple[Any, ...]] = []

    def trap(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))
        raise AssertionError(f"load_dataset was called: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", trap)
    monkeypatch.chdir("/")
    return calls


def _refused(request: DatasetSnapshotRequest, settings: DurabertSettings, field: str) -> str:
    with pytest.raises(ApplicationError) as caught:
        create_snapshot(request, settings)
    error = caught.value
    assert error.type == ErrorType.INVALID_INPUT, error
    assert error.non_retryable
    assert error.message.startswith(f"{field}: "), error.message
    return error.message


def _request(**fields: Any) -> DatasetSnapshotRequest:
    return DatasetSnapshotRequest.model_validate({"run_id": "roots", **fields})


def test_the_installed_datasets_ships_the_loaders_the_issue_names() -> None:
    # Guards the parametrisation below: an empty or stale list would test nothing.
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    assert set(_PACKAGED_DATASETS_MODULES) <= set(INSTALLED_LOADERS)
    assert {"text", "arrow", "xml", "webdataset", "pandas", "imagefolder", "audiofolder"} <= set(
        INSTALLED_LOADERS
    )


@pytest.mark.parametrize("loader", INSTALLED_LOADERS)
@pytest.mark.parametrize("data_files", ["etc/passwd", "/etc/passwd", ["etc/passwd"], {"train": "etc/passwd"}])
def test_every_packaged_loader_is_confined_with_the_cwd_at_root(
    loader: str, data_files: Any, local_settings, trapped_loader
) -> None:
    assert Path("etc/passwd").is_file()  # the cwd really is /: resolving against it would read this
    message = _refused(_request(dataset_name=loader, data_files=data_files), local_settings, "data_files")
    assert "passwd" in message
    assert trapped_loader == []


@pytest.mark.parametrize("loader", INSTALLED_LOADERS)
def test_a_packaged_loader_without_data_files_is_refused(loader: str, local_settings, trapped_loader) -> None:
    if loader in {"json", "csv", "parquet"}:
        pytest.skip("the contract itself requires data_files for these")
    _refused(_request(dataset_name=loader), local_settings, "data_files")
    assert trapped_loader == []


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("etc", "current directory"), ("./etc", "is not a folder"), ("../../../../etc", "outside the allowed")],
)
def test_a_dataset_name_never_resolves_against_the_cwd(
    name: str, fragment: str, local_settings, trapped_loader
) -> None:
    assert _refused(_request(dataset_name=name), local_settings, "dataset_name").count(fragment) == 1
    assert trapped_loader == []


def test_relative_files_of_another_loader_are_read_from_the_data_folder(
    local_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: with the cwd at /, `text` reads notes.txt from the data folder (its one
    # column is `text`), gets past the roots, and is refused only for its missing label column.
    monkeypatch.chdir("/")
    (local_settings.data_dir / "notes.txt").write_text("first line\nsecond line\n")
    message = _refused(_request(dataset_name="text", data_files="notes.txt"), local_settings, "label_field")
    assert "'label' is not in split 'train' of text files" in message


def test_a_local_folder_relative_to_the_data_folder_is_read(local_settings, monkeypatch) -> None:
    monkeypatch.chdir("/")
    folder = local_settings.data_dir / "reviews"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(f'{{"text": "{r["sentence"]}", "label": "{r["label"]}"}}\n' for r in reviews(20))
    )
    result = create_snapshot(_request(dataset_name="./reviews"), local_settings).result
    assert result.num_train_samples + result.num_eval_samples == 20


@pytest.mark.parametrize(
    ("fields", "refused_field", "fragment"),
    [
        (
            {"text_field": "sentence", "label_field": "sentence"},
            "label_field",
            "'sentence' is also the text_field",
        ),
        ({"text_pair_field": "sentence"}, "text_pair_field", "'sentence' is also the text_field"),
        ({"text_pair_field": "label"}, "text_pair_field", "'label' is also the label_field"),
    ],
)
def test_one_column_for_two_roles_is_refused_before_reading(
    fields: dict[str, str], refused_field: str, fragment: str, local_settings, write_rows, trapped_loader
) -> None:
    path = write_rows("rows.jsonl", reviews(20))
    assert fragment in _refused(json_request(str(path), **fields), local_settings, refused_field)
    assert trapped_loader == []


# -- object-store URL prefixes among the allowed roots ---------------------------------------------


@pytest.fixture
def url_roots_settings(local_settings: DurabertSettings, monkeypatch: pytest.MonkeyPatch) -> DurabertSettings:
    """Settings whose allowed roots are one S3 prefix and the data folder (every backend "installed")."""
    monkeypatch.setattr(sources, "_installed", lambda package: True)
    monkeypatch.setenv(
        "DURABERT_ALLOWED_DATA_ROOTS", json.dumps(["s3://bucket/data/", str(local_settings.data_dir)])
    )
    return DurabertSettings(artifact_root=local_settings.artifact_root, data_dir=local_settings.data_dir)


def test_the_setting_holds_url_prefixes_beside_folders(url_roots_settings: DurabertSettings) -> None:
    assert url_roots_settings.data_url_roots == ["s3://bucket/data"]
    assert url_roots_settings.data_roots == [url_roots_settings.data_dir.resolve()]


@pytest.mark.parametrize("root", ["https://data.example/sets", "hf://datasets/x", "s3://", "zip://a"])
def test_a_url_root_that_is_no_object_store_prefix_is_refused(root: str) -> None:
    with pytest.raises(ValidationError, match="object-store URL prefix"):
        DurabertSettings(allowed_data_roots=[root])


@pytest.mark.parametrize(
    "data_files",
    [
        "s3://bucket/data/train.jsonl",
        "s3a://bucket/data/train.jsonl",  # another name of the same store
        "s3://bucket/data/2024/*.jsonl",
        "s3://bucket/data/train.jsonl?versionId=3",
        ["s3://bucket/data/a.jsonl", "https://elsewhere.example/b.jsonl"],  # http(s) is not confined
    ],
)
def test_object_store_urls_under_an_allowed_prefix_are_admitted(
    data_files: Any, url_roots_settings: DurabertSettings
) -> None:
    resolved = resolve_source(
        json_request(data_files),
        url_roots_settings.data_roots,
        url_roots_settings.data_dir,
        url_roots_settings.data_url_roots,
    )
    assert resolved.data_files == (data_files if isinstance(data_files, list) else [data_files])


@pytest.mark.parametrize(
    "data_files",
    [
        "s3://bucket/data-other/train.jsonl",  # a prefix matches whole segments only
        "s3://bucket/train.jsonl",
        "s3://other-bucket/data/train.jsonl",
        "gs://bucket/data/train.jsonl",  # another store with the same names
        "s3://bucket/data/../private/train.jsonl",
        {"train": "s3://bucket/data/train.jsonl", "validation": "s3://bucket/private/eval.jsonl"},
    ],
)
def test_object_store_urls_outside_the_allowed_prefixes_are_refused(
    data_files: Any, url_roots_settings: DurabertSettings, trapped_loader
) -> None:
    message = _refused(json_request(data_files), url_roots_settings, "data_files")
    assert "s3://bucket/data" in message  # the allowed roots are named
    assert trapped_loader == []


def test_a_hub_dataset_or_its_files_outside_the_prefixes_are_refused(
    url_roots_settings: DurabertSettings, trapped_loader
) -> None:
    message = _refused(_request(dataset_name="s3://bucket/private"), url_roots_settings, "dataset_name")
    assert "outside the allowed data roots" in message
    hub = _request(dataset_name="someone/reviews", data_files="s3://elsewhere/train.jsonl")
    _refused(hub, url_roots_settings, "data_files")
    assert trapped_loader == []


def test_a_local_file_outside_the_folders_is_still_refused(
    url_roots_settings: DurabertSettings, trapped_loader
) -> None:
    _refused(json_request("/etc/passwd"), url_roots_settings, "data_files")
    assert trapped_loader == []


def test_without_url_prefixes_object_store_urls_are_not_confined(
    local_settings: DurabertSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_installed", lambda package: True)
    assert local_settings.data_url_roots == []
    resolved = resolve_source(
        json_request("s3://any-bucket/x.jsonl"),
        local_settings.data_roots,
        local_settings.data_dir,
        local_settings.data_url_roots,
    )
    assert resolved.data_files == ["s3://any-bucket/x.jsonl"]
