"""The background checkpoint uploader: one upload in flight, each checkpoint reported once uploaded."""

import threading
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker.events import CheckpointEvent
from durabert.gpu_worker.uploads import CheckpointUploader
from durabert.shared.errors import ErrorType, retryable_error


def event(step: int) -> CheckpointEvent:
    return CheckpointEvent(
        step=step, epoch=0.0, path=f"runs/r/checkpoints/checkpoint-{step}", loss=None, max_steps=8
    )


class SlowStore:
    """Stands in for the object store: each upload blocks until the test releases it."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.started = {step: threading.Event() for step in (4, 8)}
        self.release = {step: threading.Event() for step in (4, 8)}

    def push(self, folder: Path) -> None:
        step = int(folder.name.rsplit("-", 1)[1])
        self.log.append(f"upload {step} started")
        self.started[step].set()
        assert self.release[step].wait(30), "the test never released the upload"
        self.log.append(f"upload {step} finished")

    def report(self, reported: CheckpointEvent) -> None:
        self.log.append(f"report {reported.step}")


def test_one_upload_in_flight_and_each_checkpoint_reported_only_after_its_upload(tmp_path):
    store = SlowStore()
    uploader = CheckpointUploader(store.push, store.report)
    uploader.submit(tmp_path / "checkpoint-4", event(4))
    assert store.started[4].wait(30)
    assert uploader.busy
    assert store.log == ["upload 4 started"], "a checkpoint was reported before its upload finished"

    # The next checkpoint is due while the first is still uploading: handing it over waits.
    second = threading.Thread(target=uploader.submit, args=(tmp_path / "checkpoint-8", event(8)))
    second.start()
    second.join(0.5)  # room for a wrong uploader to start the second upload now
    store.release[4].set()
    second.join(30)
    assert store.started[8].wait(30)
    store.release[8].set()
    uploader.wait()
    assert store.log == [
        "upload 4 started",
        "upload 4 finished",
        "report 4",
        "upload 8 started",
        "upload 8 finished",
        "report 8",
    ]
    assert uploader.reported == [4, 8]
    assert not uploader.busy


def test_a_failed_upload_is_never_reported_and_ends_training_at_its_next_step(tmp_path):
    reports: list[int] = []

    def push(folder: Path) -> None:
        raise retryable_error(ErrorType.ARTIFACT_STORE, "artifact store s3://b: cannot upload after 120 s")

    uploader = CheckpointUploader(push, lambda reported: reports.append(reported.step))
    uploader.submit(tmp_path / "checkpoint-4", event(4))
    with pytest.raises(ApplicationError) as info:
        uploader.wait()
    assert info.value.type == ErrorType.ARTIFACT_STORE
    assert not info.value.non_retryable
    with pytest.raises(ApplicationError):
        uploader.raise_if_failed()  # what the callback calls every step
    with pytest.raises(ApplicationError):
        uploader.submit(tmp_path / "checkpoint-8", event(8))
    assert reports == []
