"""Every packaged loader is confined to the allowed roots; nothing resolves against the cwd.

The worker's current directory is set to ``/`` in these tests: there ``etc/passwd`` names a
real file, so a path resolved against the current directory would be read. A refusal must come
before ``datasets`` is asked for anything (``load_dataset`` is replaced by a trap).
"""

from pathlib import Path
from typing import Any

import datasets
import pytest
from dw_helpers import json_request, reviews
from temporalio.exceptions import ApplicationError

from durabert.data_worker.snapshot import create_snapshot
from durabert.data_worker.sources import packaged_loaders
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
