"""ObjectStore against a real S3 API (moto on loopback) and fsspec's memory and file stores.

What workers rely on: a folder artifact exists only once complete, a download is whole and
verified or absent, leftovers of killed uploads are cleaned without touching complete
artifacts, and store faults are either retried (outages) or refused at once (configuration).
"""

import json
import multiprocessing
import pickle
import time
import uuid
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from durabert.orchestrator.devserver import free_port
from durabert.shared import object_store as object_store_module
from durabert.shared.errors import ErrorType
from durabert.shared.object_store import (
    MARKER_FILE,
    CompletionMarker,
    ObjectStore,
    StoredFile,
    describe_folder,
    is_object_store_url,
    open_object_store,
)
from support.s3 import S3Server


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()
    }


CHECKPOINT = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": bytes(range(256)) * 40,
    "tokenizer/vocab.txt": b"[PAD]\n[CLS]\n",
    "tokenizer/deep/special.json": b"{}",
}


@pytest.fixture
def store(s3_root: str) -> ObjectStore:
    return ObjectStore(s3_root, retry_seconds=30)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every backoff wait of the store's retry loop (the waits still happen)."""
    recorded: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        recorded.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(object_store_module.time, "sleep", sleep)
    return recorded


def test_nested_folder_round_trips_and_the_marker_lists_every_file(
    store: ObjectStore, tmp_path: Path
) -> None:
    source = make_folder(tmp_path / "checkpoint-8", {**CHECKPOINT, ".staging/half.bin": b"x", ".lock": b""})

    written = store.upload_folder(source, "runs/r1/checkpoints/checkpoint-8", writer={"attempt": "a1"})
    copy = tmp_path / "copy" / "checkpoint-8"
    read = store.download_folder("runs/r1/checkpoints/checkpoint-8", copy)

    assert read == written
    assert sorted(written.files) == sorted(CHECKPOINT)  # hidden names are not uploaded
    assert folder_contents(copy) == {**CHECKPOINT, MARKER_FILE: (copy / MARKER_FILE).read_bytes()}
    assert CompletionMarker.model_validate_json((copy / MARKER_FILE).read_bytes()).writer == {"attempt": "a1"}
    assert store.is_complete("runs/r1/checkpoints/checkpoint-8")
    assert store.list_children("runs/r1/checkpoints") == ["checkpoint-8"]


def test_a_folder_without_marker_is_not_an_artifact(store: ObjectStore, tmp_path: Path) -> None:
    store.write_bytes("snapshots/s1/train.parquet", b"rows")

    assert not store.is_complete("snapshots/s1")
    assert store.read_marker("snapshots/s1") is None
    assert store.download_folder("snapshots/s1", tmp_path / "s1") is None
    assert not (tmp_path / "s1").exists()


def test_a_damaged_object_fails_verification_and_leaves_the_older_copy_alone(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.upload_folder(make_folder(tmp_path / "v1", CHECKPOINT), "runs/r1/model")
    local = tmp_path / "cache" / "model"
    store.download_folder("runs/r1/model", local)
    before = folder_contents(local)
    store.write_bytes("runs/r1/model/config.json", b'{"hidden_size": 9}')  # same size, other bytes

    with pytest.raises(ApplicationError) as raised:
        store.download_folder("runs/r1/model", local)

    assert raised.value.type == ErrorType.ARTIFACT_STORE
    assert not raised.value.non_retryable
    assert "runs/r1/model/config.json" in str(raised.value)
    assert folder_contents(local) == before
    assert sorted(path.name for path in local.parent.iterdir()) == ["model"]  # no partial download left


def test_a_damaged_object_leaves_no_folder_when_there_was_none(store: ObjectStore, tmp_path: Path) -> None:
    store.upload_folder(make_folder(tmp_path / "v1", CHECKPOINT), "runs/r1/model")
    store.write_bytes("runs/r1/model/model.safetensors", b"truncated")

    with pytest.raises(ApplicationError, match="does not match its completion marker"):
        store.download_folder("runs/r1/model", tmp_path / "cache" / "model")

    assert list((tmp_path / "cache").iterdir()) == []


def test_a_download_replaces_an_older_local_copy_whole(store: ObjectStore, tmp_path: Path) -> None:
    local = tmp_path / "cache" / "snapshot"
    store.upload_folder(make_folder(tmp_path / "v1", {"a.txt": b"1", "old/b.txt": b"2"}), "snapshots/s1")
    store.download_folder("snapshots/s1", local)
    store.upload_folder(make_folder(tmp_path / "v2", {"a.txt": b"one", "new/c.txt": b"3"}), "snapshots/s1")

    store.download_folder("snapshots/s1", local)

    contents = folder_contents(local)
    contents.pop(MARKER_FILE)
    assert contents == {"a.txt": b"one", "new/c.txt": b"3"}  # nothing of the old copy is mixed in
    assert sorted(path.name for path in local.parent.iterdir()) == ["snapshot"]


def test_remove_incomplete_deletes_only_markerless_leftovers_old_enough(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.upload_folder(make_folder(tmp_path / "done", CHECKPOINT), "runs/r1/checkpoints/checkpoint-4")
    store.write_bytes("runs/r1/checkpoints/checkpoint-8/model.safetensors", b"half")
    store.write_bytes("runs/r1/checkpoints/notes.txt", b"a plain object, not an artifact")

    assert store.remove_incomplete("runs/r1/checkpoints", older_than_seconds=3600) == []
    assert store.remove_incomplete("runs/r1/checkpoints", older_than_seconds=0) == [
        "runs/r1/checkpoints/checkpoint-8"
    ]
    assert store.list_children("runs/r1/checkpoints") == ["checkpoint-4", "notes.txt"]
    assert store.is_complete("runs/r1/checkpoints/checkpoint-4")
    assert store.download_folder("runs/r1/checkpoints/checkpoint-4", tmp_path / "copy") is not None


def test_list_children_of_a_missing_prefix_is_empty(store: ObjectStore) -> None:
    assert store.list_children("runs/never-written/checkpoints") == []
    assert store.read_bytes("runs/never-written/run.json") is None
    store.delete_prefix("runs/never-written")  # deleting nothing is fine


def test_check_access_passes_on_a_usable_store_and_leaves_nothing(store: ObjectStore) -> None:
    store.check_access()

    assert store.list_children("") == []


def test_a_missing_bucket_is_a_configuration_error_naming_the_root(s3_root: str, sleeps: list[float]) -> None:
    store = ObjectStore(f"s3://durabert-missing-{uuid.uuid4().hex[:8]}/artifacts", retry_seconds=30)

    with pytest.raises(ApplicationError) as raised:
        store.check_access()

    assert raised.value.type == ErrorType.CONFIGURATION
    assert "DURABERT_ARTIFACT_ROOT" in str(raised.value)
    assert sleeps == []


def test_refused_credentials_fail_at_once_naming_the_variables(
    s3_server: S3Server, s3_root: str, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-6f1c")
    store = ObjectStore(s3_root, retry_seconds=3600)

    with s3_server.authentication(), pytest.raises(ApplicationError) as raised:
        store.check_access()

    message = str(raised.value)
    assert raised.value.type == ErrorType.CONFIGURATION
    assert raised.value.non_retryable
    assert "AWS_ACCESS_KEY_ID" in message
    assert "AWS_SECRET_ACCESS_KEY" in message
    assert "wrong-secret-6f1c" not in message
    assert sleeps == []  # not retried


def test_an_unreachable_store_is_retried_with_backoff_then_a_retryable_error(
    s3_root: str, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-5d2e")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    # Generous enough that a slow first call (botocore sets itself up on it) leaves room for retries.
    store = ObjectStore(s3_root, retry_seconds=6)

    with pytest.raises(ApplicationError) as raised:
        store.read_bytes("runs/r1/run.json")

    message = str(raised.value)
    assert raised.value.type == ErrorType.ARTIFACT_STORE
    assert not raised.value.non_retryable
    assert s3_root in message
    assert "secret-5d2e" not in message
    assert len(sleeps) >= 2
    assert sleeps == sorted(sleeps)
    assert sleeps[1] > sleeps[0]


def test_a_call_during_a_short_outage_succeeds_after_it(
    s3_server: S3Server, store: ObjectStore, tmp_path: Path, sleeps: list[float]
) -> None:
    store.upload_folder(make_folder(tmp_path / "v1", CHECKPOINT), "runs/r1/model")

    back = s3_server.outage(2.0)
    try:
        copied = store.download_folder("runs/r1/model", tmp_path / "copy")
    finally:
        back.join()

    assert copied is not None
    assert folder_contents(tmp_path / "copy")["model.safetensors"] == CHECKPOINT["model.safetensors"]
    assert sleeps  # the outage was seen, and outlasted


def _read_in_child(store: ObjectStore, key: str, results: "multiprocessing.Queue[bytes | None]") -> None:
    results.put(store.read_bytes(key))


def test_a_store_opened_before_a_fork_works_in_the_child(store: ObjectStore) -> None:
    store.write_bytes("runs/r1/run.json", b"{}")
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[bytes | None] = context.Queue()

    child = context.Process(target=_read_in_child, args=(store, "runs/r1/run.json", results))
    child.start()
    value = results.get(timeout=60)
    child.join(timeout=60)

    assert value == b"{}"
    assert child.exitcode == 0


def test_a_pickled_store_opens_its_own_client(store: ObjectStore) -> None:
    store.write_bytes("runs/r1/run.json", b"{}")

    assert pickle.loads(pickle.dumps(store)).read_bytes("runs/r1/run.json") == b"{}"


def test_keys_and_marker_names_must_stay_inside_the_root(tmp_path: Path) -> None:
    store = ObjectStore(f"memory://durabert-{uuid.uuid4().hex[:8]}", retry_seconds=30)
    hostile = CompletionMarker(files={}, completed_at="now").model_dump()
    hostile["files"] = {"../../outside.txt": StoredFile(size=1, sha256="0" * 64).model_dump()}
    store.write_bytes(f"runs/r1/model/{MARKER_FILE}", json.dumps(hostile).encode())

    with pytest.raises(ApplicationError) as raised:
        store.read_bytes("runs/../../etc/passwd")

    assert raised.value.type == ErrorType.CONFIGURATION
    assert store.read_marker("runs/r1/model") is None
    assert store.download_folder("runs/r1/model", tmp_path / "model") is None
    assert not (tmp_path.parent / "outside.txt").exists()


def test_a_file_url_root_takes_nested_keys(tmp_path: Path) -> None:
    store = ObjectStore((tmp_path / "store").as_uri(), retry_seconds=30)

    store.upload_folder(make_folder(tmp_path / "v1", CHECKPOINT), "snapshots/s1")

    assert store.download_folder("snapshots/s1", tmp_path / "copy") is not None
    assert (tmp_path / "store" / "snapshots" / "s1" / "tokenizer" / "deep" / "special.json").exists()


def test_only_urls_open_a_store(tmp_path: Path) -> None:
    assert not is_object_store_url(str(tmp_path))
    assert open_object_store(str(tmp_path)) is None
    assert isinstance(open_object_store("memory://durabert-x"), ObjectStore)


def test_an_unsupported_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ApplicationError, match="ftp:// is not supported") as raised:
        ObjectStore("ftp://host/artifacts")

    assert raised.value.type == ErrorType.CONFIGURATION


def test_an_upload_reuses_a_given_description_and_refuses_a_stale_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(f"file://{tmp_path / 'bucket'}")
    folder = make_folder(tmp_path / "checkpoint-4", {"model.safetensors": b"weights", "state.json": b"{}"})
    known = describe_folder(folder)
    # A checkpoint's own marker already holds every checksum: the upload must not hash again.
    monkeypatch.setattr(object_store_module, "describe_folder", _no_hashing)
    marker = store.upload_folder(folder, "runs/r/checkpoints/checkpoint-4", files=known)
    assert marker.files == known
    assert store.download_folder("runs/r/checkpoints/checkpoint-4", tmp_path / "copy") is not None

    (folder / "model.safetensors").write_bytes(b"weights, rewritten since")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        store.upload_folder(folder, "runs/r/checkpoints/checkpoint-5", files=known)
    assert not store.is_complete("runs/r/checkpoints/checkpoint-5")


def _no_hashing(folder: Path) -> dict[str, StoredFile]:
    raise AssertionError(f"{folder} was hashed again")
