"""Long runs, workflow side: bounded history, preemption-proof retries, continue-as-new, run-id reuse.

The real training workflow against the real dev server, with the GPU activity faked under its
real name (see ``fake_training``) and the real ``claim_run`` on the data queue. The fake
attempts report what the real GPU worker reports: heartbeat details while training, a
``TrainingHeartbeat`` as the details of the error an attempt ends with.
"""

import asyncio
import json
from pathlib import Path

import pytest
from fake_training import (
    FakeWorkers,
    config,
    event_types,
    heartbeat,
    new_run_id,
    preempted,
    result_for,
    resumed_step,
)
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from durabert.orchestrator.workflows import CheckpointedBertTrainingWorkflow
from durabert.shared import names
from durabert.shared.errors import ErrorType
from durabert.shared.models import BertFineTuneRequest, BertFineTuneResult, TrainingProgress
from support.histories import record_history

HISTORY_BUDGET = 150
"""Most history events a run without failures may have, whatever its step count (issue 11)."""


@pytest.mark.parametrize("max_steps", [200, 2000, 20_000])
async def test_a_run_without_failures_stays_within_the_history_budget(
    client: Client, artifact_root: Path, max_steps: int
) -> None:
    heartbeats = 0

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        nonlocal heartbeats
        # What the GPU worker reports with a checkpoint every 5 steps (a loss log every step):
        # one heartbeat per step, naming the newest checkpoint. The old code sent a signal for
        # each (about 3.8 history events apiece); heartbeats cost none.
        for step in range(1, max_steps + 1):
            activity.heartbeat(heartbeat(request, step, step - step % 5 or None).model_dump(mode="json"))
            heartbeats += 1
        return result_for(request, resumed=None, total_checkpoints_saved=max_steps // 5)

    run_id = new_run_id("long")
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        handle = await fake.start(config(run_id=run_id, max_steps=max_steps, checkpoint_steps=5), run_id)
        result = await handle.result()
        events = await event_types(handle)
        progress = await handle.query(CheckpointedBertTrainingWorkflow.get_progress)
        if max_steps == 2000:
            await record_history(handle, "training_no_failures")

    print(f"history of a {max_steps}-step run, checkpoint every 5 steps: {len(events)} events")
    assert heartbeats == max_steps
    assert result.global_step == max_steps
    assert len(events) <= HISTORY_BUDGET, events
    assert "WORKFLOW_EXECUTION_SIGNALED" not in events
    # Claim, snapshot and one attempt: the same events whatever the step count.
    assert events.count("ACTIVITY_TASK_SCHEDULED") == 3
    assert (progress.step, progress.checkpoints_saved, progress.stage) == (
        max_steps,
        max_steps // 5,
        "completed",
    )


async def test_six_preemptions_with_max_attempts_2_complete_at_the_planned_step(
    client: Client, artifact_root: Path
) -> None:
    requests: list[BertFineTuneRequest] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        requests.append(request)
        if request.attempt <= 6:
            # Each preempted attempt saved a checkpoint 100 steps past the one it resumed from.
            raise preempted(request, saved=(resumed_step(request) or 0) + 100)
        return result_for(request, resumed=resumed_step(request))

    run_id = new_run_id("spot")
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        handle = await fake.start(config(run_id=run_id, max_steps=1000, max_attempts=2), run_id)
        result = await handle.result()
        progress = await handle.query(CheckpointedBertTrainingWorkflow.get_progress)
        await record_history(handle, "training_preempted_six_times")

    assert [resumed_step(r) for r in requests] == [None, 100, 200, 300, 400, 500, 600]
    assert [r.fence.seq for r in requests if r.fence] == [1, 2, 3, 4, 5, 6, 7]
    assert (result.global_step, result.resumed_from_step) == (1000, 600)
    assert (result.attempts, result.preemptions, result.failed_attempts) == (7, 6, 0)
    assert (progress.preemptions, progress.failures, progress.resumes) == (6, 0, 6)


async def test_an_attempt_killed_with_its_worker_resumes_from_its_last_heartbeat(
    client: Client, artifact_root: Path
) -> None:
    requests: list[BertFineTuneRequest] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        requests.append(request)
        if request.attempt == 1:
            # The worker goes silent after reporting checkpoint-15 (as if SIGKILLed with its
            # node): the heartbeat timeout ends the attempt, its last details reach the workflow.
            activity.heartbeat(heartbeat(request, step=17, saved=15).model_dump(mode="json"))
            await asyncio.Event().wait()
        return result_for(request, resumed=resumed_step(request))

    run_id = new_run_id("silent")
    cfg = config(run_id=run_id, max_attempts=1, heartbeat_timeout_seconds=5)
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        result = await fake.train(cfg, run_id)

    assert [resumed_step(r) for r in requests] == [None, 15]
    # max_attempts=1 and still a second attempt: a timed-out attempt that saved progress is free.
    assert (result.attempts, result.preemptions, result.failed_attempts) == (2, 1, 0)


async def test_preemptions_stop_at_max_preemptions(client: Client, artifact_root: Path) -> None:
    attempts: list[int] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        attempts.append(request.attempt)
        raise preempted(request, saved=request.attempt * 5)

    run_id = new_run_id("forever")
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(config(run_id=run_id, max_preemptions=3, max_attempts=5), run_id)
        progress = await client.get_workflow_handle(run_id).query(
            CheckpointedBertTrainingWorkflow.get_progress
        )

    assert attempts == [1, 2, 3, 4]
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable
    assert "preempted 4 times, more than max_preemptions=3" in cause.message
    assert (progress.stage, progress.preemptions, progress.failures) == ("failed", 4, 0)
    assert progress.latest_checkpoint is not None
    assert progress.latest_checkpoint.step == 20


async def test_forced_continue_as_new_carries_the_state_and_completes(
    client: Client, artifact_root: Path
) -> None:
    requests: list[BertFineTuneRequest] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        requests.append(request)
        if request.attempt <= 3:
            raise preempted(request, saved=request.attempt * 5)
        return result_for(request, resumed=resumed_step(request))

    run_id = new_run_id("can")
    # Every history is longer than 1 event, so the workflow continues as new between all attempts.
    cfg = config(run_id=run_id, max_attempts=1, timeouts={"continue_as_new_after_events": 1})
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        started = await fake.start(cfg, run_id)
        result = await started.result()  # follows the chain to its last execution
        first = client.get_workflow_handle(run_id, run_id=started.first_execution_run_id)
        latest = client.get_workflow_handle(run_id)
        progress = await latest.query(CheckpointedBertTrainingWorkflow.get_progress)
        first_events = await event_types(first)
        last_events = await event_types(latest)
        claims = len(fake.snapshot_requests)
        await record_history(first, "training_continued_as_new")

    assert first_events[-1] == "WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
    assert last_events[-1] == "WORKFLOW_EXECUTION_COMPLETED"
    assert "ACTIVITY_TASK_SCHEDULED" in last_events
    # One chain: the fence names the first execution in every attempt; seq goes on counting.
    assert {r.fence.chain_id for r in requests if r.fence} == {started.first_execution_run_id}
    assert [r.fence.seq for r in requests if r.fence] == [1, 2, 3, 4]
    assert [resumed_step(r) for r in requests] == [None, 5, 10, 15]
    assert claims == 1  # the snapshot (and the claim) are not taken again
    assert (result.attempts, result.preemptions, result.failed_attempts) == (4, 3, 0)
    assert isinstance(progress, TrainingProgress)
    assert (progress.continued_as_new, progress.snapshot_id, progress.stage) == (3, "abc123", "completed")


async def test_a_reused_run_id_is_refused_at_the_claim(client: Client, artifact_root: Path) -> None:
    calls: list[str] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        calls.append(request.run_id)
        return result_for(request, resumed=None)

    run_id = new_run_id("once")
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        await fake.train(config(run_id=run_id), run_id)
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(config(run_id=run_id, learning_rate=1e-3, seed=7), run_id)
        events = await event_types(client.get_workflow_handle(run_id))
        snapshots = len(fake.snapshot_requests)

    cause = info.value.cause.cause  # ActivityError (claim_run) -> ApplicationError
    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorType.RUN_ID_IN_USE
    assert f"run_id {run_id!r} is in use" in cause.message
    assert "continue_run: true" in cause.message
    assert "new run id" in cause.message
    assert calls == [run_id]  # the second run never reached a GPU ...
    assert snapshots == 1  # ... nor the data worker's snapshot
    assert events.count("ACTIVITY_TASK_SCHEDULED") == 1


async def test_continue_run_extends_a_finished_run_and_records_the_change(
    client: Client, artifact_root: Path
) -> None:
    requests: list[BertFineTuneRequest] = []

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        requests.append(request)
        return result_for(request, resumed=20 if request.config.continue_run else None)

    run_id = new_run_id("extend")
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        await fake.train(config(run_id=run_id, max_steps=20), run_id)
        handle = await fake.start(config(run_id=run_id, max_steps=40, continue_run=True), run_id)
        result = await handle.result()
        chain = handle.first_execution_run_id

    record = json.loads((artifact_root / "runs" / run_id / "run.json").read_text())
    assert result.global_step == 40
    assert record["chain_id"] == chain
    assert [c["config_changes"] for c in record["continuations"]] == [{"max_steps": [20, 40]}]
    assert requests[-1].fence is not None
    assert requests[-1].fence.chain_id == chain


async def test_continue_run_with_nothing_to_continue_is_refused(client: Client, artifact_root: Path) -> None:
    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        raise AssertionError("must not be reached")

    run_id = new_run_id("nothing")
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        with pytest.raises(WorkflowFailureError) as info:
            await fake.train(config(run_id=run_id, continue_run=True), run_id)
    cause = info.value.cause.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorType.CONFIGURATION
    assert "nothing to continue" in cause.message
