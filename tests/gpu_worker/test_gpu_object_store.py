"""The GPU worker on an object-store artifact root (moto's S3): workers that share no folder.

Each attempt works in its own work dir (its private local copy) and meets the others only in
the store: checkpoints are uploaded (marker last) and reported once complete there, a fresh
node resumes from the store's newest complete checkpoint, the final model and the history are
uploaded, and inference on an empty work dir downloads the model once.
"""

import json
import threading
import time

import pytest
from gpu_helpers import make_job, make_request, write_snapshot
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.gpu_worker import checkpoints, history
from durabert.gpu_worker import mirror as mirror_module
from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.events import CheckpointEvent, StoppedEvent, TrainingStopped
from durabert.gpu_worker.fencing import RunFence, read_store_fence
from durabert.gpu_worker.mirror import RunMirror
from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.gpu_worker.supervisor import ChildExited, TrainingChild
from durabert.gpu_worker.training import run_training
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.cli_support import check_artifact_store
from durabert.shared.models import AttemptFence, BertInferenceRequest
from durabert.shared.object_store import ObjectStore
from durabert.shared.settings import DurabertSettings, StoreSettings

pytestmark = pytest.mark.slow

CHECKPOINTS = "runs/run-1/checkpoints"


def node(root: str, tmp_path, name: str, **settings) -> DurabertSettings:
    """Settings of one worker machine: the shared store, its own (initially empty) work dir."""
    return DurabertSettings(
        artifact_root=root,
        work_dir=tmp_path / name,
        data_dir=tmp_path / "data",
        log_format="json",
        store={"retry_seconds": 60},
        **settings,
    )


def upload_snapshot(root: str, tmp_path, **rows):
    """Write a snapshot the way the data worker does and put it in the store; return its result."""
    local = tmp_path / "data-worker"
    snapshot = write_snapshot(local, **rows)
    ObjectStore(root).upload_folder(local / snapshot.snapshot_path, snapshot.snapshot_path)
    return snapshot


def stop_after_step(step: int, objects: ObjectStore, reported: list[CheckpointEvent]):
    """An emit that records reported checkpoints (checking each is complete in the store) and stops."""
    stop = threading.Event()

    def emit(event):
        if isinstance(event, CheckpointEvent):
            assert objects.is_complete(event.path), f"{event.path} was reported before it was in the store"
            reported.append(event)
        if getattr(event, "kind", None) == "progress" and event.step >= step:
            stop.set()

    return emit, stop


def test_a_fresh_node_resumes_from_the_stores_newest_complete_checkpoint_and_uploads_the_model(
    s3_root, tmp_path, tiny_model_dir
):
    objects = ObjectStore(s3_root)
    snapshot = upload_snapshot(s3_root, tmp_path)
    request = make_request(tiny_model_dir, snapshot, max_steps=16, checkpoint_steps=4)

    # Attempt 1 on node A: checkpoints at 4, 8 and (the stop's) 10, each reported once in the store.
    reported: list[CheckpointEvent] = []
    emit, stop = stop_after_step(9, objects, reported)
    with pytest.raises(TrainingStopped) as stopped:
        run_training(make_job(request, node(s3_root, tmp_path, "node-a")), emit, stop)
    assert [event.step for event in reported] == [4, 8, 10]
    assert stopped.value.checkpoint == f"{CHECKPOINTS}/checkpoint-{stopped.value.step}"
    stored = objects.read_marker(stopped.value.checkpoint)
    assert stored is not None, "the stop returned before its checkpoint was in the store"
    local = ArtifactStore(tmp_path / "node-a" / "artifacts").resolve(stopped.value.checkpoint)
    written = {path.name for path in local.iterdir() if path.name != checkpoints.COMPLETE_MARKER}
    assert set(stored.files) == written  # the Trainer's files, the marker written after them
    assert objects.list_children(CHECKPOINTS) == ["checkpoint-10", "checkpoint-8"]  # save_total_limit 2

    # Attempt 2 on node B, whose work dir is empty: it resumes from checkpoint-10 out of the store.
    result = run_training(
        make_job(request, node(s3_root, tmp_path, "node-b"), attempt=2), lambda e: None, threading.Event()
    )
    assert result.resumed_from_step == 10
    assert result.global_step == 16
    assert result.model_path == "runs/run-1/model"
    assert objects.is_complete("runs/run-1/model")
    assert objects.is_complete(f"{CHECKPOINTS}/checkpoint-16")
    manifest = json.loads(objects.read_bytes(f"runs/run-1/model/{MODEL_MANIFEST}"))
    assert manifest["resume_points"] == [10]
    assert [entry["activity_attempt"] for entry in manifest["attempts"]] == [1, 2]
    # The history of both attempts is in the store, for operators and the next attempt.
    lines = objects.read_bytes(f"runs/run-1/{history.HISTORY_FILE}").decode().splitlines()
    attempts = [record for record in map(json.loads, lines) if record["kind"] == "attempt"]
    assert [record["resumed_from_step"] for record in attempts] == [None, 10]


def test_a_markerless_checkpoint_in_the_store_is_never_resumed_from(s3_root, tmp_path, tiny_model_dir):
    objects = ObjectStore(s3_root)
    snapshot = upload_snapshot(s3_root, tmp_path)
    request = make_request(tiny_model_dir, snapshot, max_steps=4, checkpoint_steps=4)
    reported: list[CheckpointEvent] = []
    emit, stop = stop_after_step(1, objects, reported)
    with pytest.raises(TrainingStopped):
        run_training(make_job(request, node(s3_root, tmp_path, "node-a")), emit, stop)
    # A newer checkpoint whose upload was killed before its marker: every file, no marker.
    complete = objects.read_marker(f"{CHECKPOINTS}/checkpoint-2")
    assert complete is not None
    for name in complete.files:
        data = objects.read_bytes(f"{CHECKPOINTS}/checkpoint-2/{name}")
        objects.write_bytes(f"{CHECKPOINTS}/checkpoint-3/{name}", data)
    result = run_training(
        make_job(request, node(s3_root, tmp_path, "node-b"), attempt=2), lambda e: None, threading.Event()
    )
    assert result.resumed_from_step == 2
    assert not objects.is_complete(f"{CHECKPOINTS}/checkpoint-3")


async def test_inference_on_an_empty_work_dir_downloads_the_model_once_and_serves_it_warm(
    s3_root, tmp_path, tiny_model_dir
):
    snapshot = upload_snapshot(s3_root, tmp_path)
    request = make_request(tiny_model_dir, snapshot, run_id="served", max_steps=4, checkpoint_steps=4)
    run_training(make_job(request, node(s3_root, tmp_path, "trainer")), lambda e: None, threading.Event())

    activities = GpuActivities(node(s3_root, tmp_path, "server"))
    assert activities.mirror is not None
    downloads: list[str] = []
    download = activities.mirror.objects.download_folder

    def counted(prefix, folder):
        downloads.append(prefix)
        return download(prefix, folder)

    activities.mirror.objects.download_folder = counted  # type: ignore[method-assign]
    texts = ["the film was wonderful", "the script felt dull"]

    async def infer(run_id: str):
        call = BertInferenceRequest(run_id=run_id, texts=texts, use_gpu=False)
        return await ActivityEnvironment().run(activities.run_bert_inference, call)

    first = await infer("served")
    second = await infer("served")
    assert downloads == ["runs/served/model"]
    assert activities.cache.loads == 1
    assert second.predicted_labels == first.predicted_labels
    assert first.label_names == ["negative", "positive"]
    with pytest.raises(ApplicationError) as missing:
        await infer("never-trained")
    assert missing.value.type == "ArtifactNotFoundError"


def test_a_20_s_store_outage_during_training_loses_nothing(s3_root, s3_server, tmp_path, tiny_model_dir):
    objects = ObjectStore(s3_root)
    snapshot = upload_snapshot(s3_root, tmp_path)
    request = make_request(tiny_model_dir, snapshot, max_steps=12, checkpoint_steps=4, save_total_limit=3)
    reported: list[int] = []
    outages: list[threading.Thread] = []

    def emit(event):
        if isinstance(event, CheckpointEvent):
            reported.append(event.step)
            if not outages:  # the store goes away for 20 s right after the first checkpoint is in it
                outages.append(s3_server.outage(20))

    result = run_training(make_job(request, node(s3_root, tmp_path, "node-a")), emit, threading.Event())
    outages[0].join()
    assert reported == [4, 8, 12]
    assert result.global_step == 12
    assert objects.list_children(CHECKPOINTS) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    assert all(objects.is_complete(f"{CHECKPOINTS}/checkpoint-{step}") for step in reported)
    assert objects.is_complete("runs/run-1/model")


def test_the_worker_refuses_to_start_when_the_store_refuses_its_credentials(
    s3_root, s3_server, tmp_path, capsys
):
    settings = node(s3_root, tmp_path, "node-a")
    with s3_server.authentication(), pytest.raises(SystemExit) as exited:
        check_artifact_store(settings)
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert "AWS_ACCESS_KEY_ID" in message
    assert "testing" not in message  # the test's key id and secret: never in a message
    check_artifact_store(settings)  # accepted credentials: the worker starts


def test_the_store_fence_stops_an_older_attempt_before_it_uploads(tmp_path):
    root = f"file://{tmp_path / 'bucket'}"
    objects = ObjectStore(root)
    local_a, local_b = ArtifactStore(tmp_path / "a"), ArtifactStore(tmp_path / "b")
    fence = [AttemptFence(workflow_id="run-1", chain_id="chain-1", seq=seq) for seq in (1, 2)]
    older = RunFence(local_a, "run-1", fence[0], objects)
    newer = RunFence(local_b, "run-1", fence[1], objects)
    older.take_over()
    older.check_store("upload checkpoint-4")
    newer.take_over()  # on another machine: the local folders have nothing in common
    assert read_store_fence(objects, "run-1") == fence[1]
    with older.guard("publish checkpoint-8"):
        pass  # its own local copy is still its own
    with pytest.raises(ApplicationError) as info:
        older.check_store("upload checkpoint-8")
    assert info.value.type == "AttemptSupersededError"
    assert "upload checkpoint-8" in info.value.message
    with pytest.raises(ApplicationError):
        older.take_over()  # a late restart of the older attempt does not win the run back


async def until_exit(child: TrainingChild, allowance: float) -> StoppedEvent | None:
    """Read a stopping child's events until it exits; its ``StoppedEvent``, if it sent one."""
    stopped = None
    while True:
        try:
            event = await child.next_event(timeout=allowance)
        except ChildExited:
            return stopped
        assert event is not None, "no word from the stopping child within its allowance"
        stopped = event if isinstance(event, StoppedEvent) else stopped


async def test_a_stopped_child_exits_once_its_checkpoint_is_in_the_store(s3_root, tmp_path, tiny_model_dir):
    objects = ObjectStore(s3_root)
    snapshot = upload_snapshot(s3_root, tmp_path, train_rows=256)
    settings = node(s3_root, tmp_path, "node-a")
    request = make_request(tiny_model_dir, snapshot, max_steps=500, checkpoint_steps=4)
    child = TrainingChild(make_job(request, settings))
    await child.start()
    try:
        while True:
            event = await child.next_event(timeout=120)
            if isinstance(event, CheckpointEvent):
                break
        asked = time.monotonic()
        child.request_stop()
        stopped = await until_exit(child, settings.worker.child_stop_seconds)
        code = await child.wait_exit(settings.worker.child_stop_seconds)
        took = time.monotonic() - asked
    finally:
        child.close()
    print(f"stop to exit against moto: {took:.2f} s (allowance {settings.worker.child_stop_seconds:.0f} s)")
    assert code == 0
    assert stopped is not None
    assert stopped.checkpoint is not None
    assert objects.is_complete(stopped.checkpoint)


class RecordedLog:
    """Stands in for a module's structlog logger: keeps the warnings' events."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def info(self, event: str, **fields: object) -> None:
        pass

    def warning(self, event: str, **fields: object) -> None:
        self.warnings.append(event)


def put_checkpoint(objects: ObjectStore, tmp_path, step: int, *, marker: bool = True) -> str:
    """Put a small ``checkpoint-<step>`` of run-1 in the store (without its marker: an upload cut short)."""
    folder = tmp_path / "writer" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights at step %d" % step)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    key = f"{CHECKPOINTS}/checkpoint-{step}"
    if marker:
        objects.upload_folder(folder, key)
    else:
        for path in folder.iterdir():
            objects.write_bytes(f"{key}/{path.name}", path.read_bytes())
    return key


def test_the_requested_checkpoint_comes_from_the_store_and_one_it_lacks_is_named_so(tmp_path, monkeypatch):
    objects = ObjectStore(f"file://{tmp_path / 'bucket'}")
    older, newest = put_checkpoint(objects, tmp_path, 4), put_checkpoint(objects, tmp_path, 8)
    cut_short = put_checkpoint(objects, tmp_path, 12, marker=False)
    local = ArtifactStore(tmp_path / "fresh-node" / "artifacts")
    mirror = RunMirror(objects, local, StoreSettings())
    logged = RecordedLog()
    monkeypatch.setattr(mirror_module, "log", logged)
    monkeypatch.setattr(checkpoints, "log", logged)

    # The workflow knows checkpoint-4 (the last heartbeat's); the child saved checkpoint-8 after
    # its parent died. A fresh node's empty copy gets both: both are candidates, as on a folder.
    requested = mirror.pull_checkpoints("run-1", older)
    assert requested == local.resolve(older)
    assert checkpoints.is_complete(requested)
    assert checkpoints.is_complete(local.resolve(newest))
    assert checkpoints.choose_resume_checkpoint(local.checkpoints_dir("run-1"), requested).step == 8
    assert logged.warnings == []

    # Requested but not usable: the log says why, and nothing else claims otherwise.
    assert mirror.pull_checkpoints("run-1", cut_short) is None
    assert mirror.pull_checkpoints("run-1", f"{CHECKPOINTS}/checkpoint-16") is None
    assert logged.warnings == [
        "ignoring requested checkpoint: incomplete in the store",
        "ignoring requested checkpoint: not in the store",
    ]

    # The same words on a shared folder, where the artifact folder is the store.
    logged.warnings.clear()
    directory = local.checkpoints_dir("run-1")
    (directory / "checkpoint-10").mkdir()  # files of a save that never finished: no marker
    (directory / "checkpoint-10" / "model.safetensors").write_bytes(b"half")
    for missing in ("checkpoint-10", "checkpoint-16"):
        assert (
            checkpoints.choose_resume_checkpoint(local.checkpoints_dir("other-run"), directory / missing)
            is None
        )
    assert [warning.split(" (")[0] for warning in logged.warnings] == [
        "ignoring requested checkpoint: incomplete",
        "ignoring requested checkpoint: not in the store",
    ]
