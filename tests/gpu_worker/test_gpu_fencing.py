"""Fenced attempts: one writer per run folder; a superseded attempt stops before it writes or deletes."""

import asyncio

import pytest
from gpu_helpers import make_job, make_request, write_snapshot
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker import checkpoints, history
from durabert.gpu_worker.events import CheckpointEvent, DoneEvent, ErrorEvent
from durabert.gpu_worker.fencing import RunFence, read_fence
from durabert.gpu_worker.supervisor import ChildExited, TrainingChild
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.models import AttemptFence, BertFineTuneConfig, RunClaimRequest
from durabert.shared.run_record import claim_run
from durabert.shared.settings import DurabertSettings


def fence(seq: int, chain: str = "chain-1") -> AttemptFence:
    return AttemptFence(workflow_id="run-1", chain_id=chain, seq=seq)


def test_a_newer_attempt_takes_over_and_the_older_one_can_neither_write_nor_restart(tmp_path):
    store = ArtifactStore(tmp_path)
    older, newer = RunFence(store, "run-1", fence(1)), RunFence(store, "run-1", fence(2))
    older.take_over()
    with older.guard("write"):
        pass
    newer.take_over()
    assert read_fence(store.run_dir("run-1")) == fence(2)
    wrote = []
    with pytest.raises(ApplicationError) as info, older.guard("publish checkpoint-8"):
        wrote.append(True)
    assert not wrote, "a superseded attempt's guarded write ran"
    assert info.value.type == "AttemptSupersededError"
    assert info.value.non_retryable
    assert "attempt 2 of workflow chain chain-1" in info.value.message
    assert "publish checkpoint-8" in info.value.message
    with pytest.raises(ApplicationError):
        older.take_over()  # a late start of the older attempt does not win the folder back


def test_an_attempt_of_a_chain_that_no_longer_owns_the_run_does_not_start(tmp_path):
    store = ArtifactStore(tmp_path)
    config = BertFineTuneConfig(dataset_name="json", data_files="x.jsonl", max_steps=8)
    claim_run(store, RunClaimRequest(run_id="run-1", chain_id="chain-1", config=config))
    (store.run_dir("run-1") / "history.jsonl").write_text("")  # the first run left artifacts
    continued = config.model_copy(update={"max_steps": 16, "continue_run": True})
    claim_run(store, RunClaimRequest(run_id="run-1", chain_id="chain-2", continue_run=True, config=continued))
    with pytest.raises(ApplicationError) as info:
        RunFence(store, "run-1", fence(9, chain="chain-1")).take_over()
    assert info.value.type == "AttemptSupersededError"
    RunFence(store, "run-1", fence(1, chain="chain-2")).take_over()


async def next_of(child: TrainingChild, kinds: tuple[type, ...], timeout: float = 120):
    while True:
        event = await child.next_event(timeout)
        assert event is not None, "the child went silent"
        if isinstance(event, kinds):
            return event


async def test_two_racing_attempts_one_is_fenced_off_and_nothing_is_lost(tmp_path, tiny_model_dir):
    root = tmp_path / "artifacts"
    store = ArtifactStore(root)
    snapshot = write_snapshot(root, train_rows=128)
    settings = DurabertSettings(artifact_root=root, data_dir=tmp_path / "data", log_format="json")
    request = make_request(tiny_model_dir, snapshot, max_steps=48, checkpoint_steps=4, save_total_limit=50)
    old = TrainingChild(make_job(request.model_copy(update={"fence": fence(1)}), settings))
    new = TrainingChild(make_job(request.model_copy(update={"fence": fence(2), "attempt": 2}), settings, 2))
    try:
        await old.start()
        first = await next_of(old, (CheckpointEvent,))
        # The workflow gave up on the old attempt (cut off from Temporal) and started a new one.
        await new.start()
        outcomes = await asyncio.gather(
            next_of(old, (DoneEvent, ErrorEvent)), next_of(new, (DoneEvent, ErrorEvent), timeout=180)
        )
    finally:
        old.close()
        new.close()
    fenced, finished = outcomes
    assert isinstance(fenced, ErrorEvent), f"the old attempt was not fenced off: {fenced}"
    assert fenced.error_type == "AttemptSupersededError"
    assert fenced.non_retryable
    assert isinstance(finished, DoneEvent)
    assert finished.result.global_step == 48
    assert finished.result.resumed_from_step >= first.step

    # Every published checkpoint is whole (content-checked), and after the take-over only the
    # new attempt wrote: its own checkpoints and history records.
    published = checkpoints.list_checkpoints(store.checkpoints_dir("run-1"))
    assert all(checkpoints.is_complete(c.path, content=True) for c in published)
    resumed = finished.result.resumed_from_step
    writers = {c.step: checkpoints.writer_of(c.path)["seq"] for c in published}
    assert all(seq == 2 for step, seq in writers.items() if step > resumed), writers
    assert writers[48] == 2
    records = history.read(store.run_dir("run-1"))
    take_over = next(
        i for i, r in enumerate(records) if isinstance(r, history.AttemptRecord) and r.attempt == 2
    )
    assert all(r.attempt == 2 for r in records[take_over:]), (
        "the fenced-off attempt wrote history after the take-over"
    )
    assert not list((store.checkpoints_dir("run-1") / ".staging").glob("*/checkpoint-*"))
    with pytest.raises(ChildExited):
        await old.next_event(1)
