"""``BertSweepWorkflow`` and ``durabert sweep`` with a stand-in training child under the real workflow name.

The fake child runs one fake ``fine_tune_bert`` activity whose held-out accuracy is a function of the
trial's learning rate and steps, so a test knows which trials halving must promote. The activity is
driven by :class:`FakeTrials`: it records every call, counts how many train at once, fails chosen
runs and can hold every attempt until released (to cancel a sweep, or restart its worker, mid-rung).
"""

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_capture import Captured
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

from durabert.orchestrator import sweep_grid
from durabert.orchestrator.cli import execute
from durabert.orchestrator.sweep_workflow import BertSweepWorkflow
from durabert.shared import names
from durabert.shared.errors import invalid_input
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneResult,
    BertSweepResult,
    SweepProgress,
    SweepReportRequest,
    SweepReportResult,
)
from durabert.shared.settings import DurabertSettings
from support.histories import record_history

RATES = [1e-5, 4e-5, 3e-5, 2e-5]
"""Learning rates of the 4-trial sweeps: accuracy grows with the rate, so trial 02 is best, then 03."""
WAIT_LIMIT = 30.0
"""Seconds a test waits for a state it drives the sweep into (a hang fails rather than blocks)."""


def accuracy(config: BertFineTuneConfig, step: int) -> float:
    """The fake held-out accuracy: better with a larger learning rate and with more steps."""
    return round(0.5 + config.learning_rate * 5000 + step / 1000, 6)


class FakeTrials:
    """The fake ``fine_tune_bert``: records calls, counts concurrency, fails or holds on demand."""

    def __init__(self, failing: Callable[[str], bool] = lambda _: False) -> None:
        self.calls: list[tuple[str, int | None, bool]] = []
        self.steps: dict[str, int] = {}
        self.running = 0
        self.most_running = 0
        self.cancelled: list[str] = []
        self.schedules: list[int | None] = []
        """Each attempt's ``lr_schedule_steps``, in call order."""
        self.failing = failing
        self.release = asyncio.Event()
        self.release.set()
        self.hold_until_running = 0
        """Hold every attempt until this many have trained at once (so overlap never hangs on timing)."""

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(self, config: BertFineTuneConfig) -> BertFineTuneResult:
        """Train "to" max_steps (from the run's last step when continuing); heartbeat while held."""
        assert config.run_id is not None
        self.calls.append((config.run_id, config.max_steps, config.continue_run))
        self.schedules.append(config.lr_schedule_steps)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            while not self.release.is_set() or self.most_running < self.hold_until_running:
                activity.heartbeat()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled.append(config.run_id)
            raise
        finally:
            self.running -= 1
        if self.failing(config.run_id):
            raise invalid_input(f"{config.run_id}: no such model", field="model_name")
        resumed = self.steps.get(config.run_id) if config.continue_run else None
        step = config.max_steps or 10
        self.steps[config.run_id] = step
        return BertFineTuneResult(
            run_id=config.run_id,
            config=config,
            train_loss=0.3,
            eval_metrics={"eval_accuracy": accuracy(config, step), "eval_loss": 1 - accuracy(config, step)},
            training_time_seconds=0.1,
            num_parameters=10,
            total_checkpoints_saved=1,
            global_step=step,
            resumed_from_step=resumed,
            attempts=1,
            device="cpu",
            model_path=f"runs/{config.run_id}/model",
        )


@workflow.defn(name=names.TRAINING_WORKFLOW, sandboxed=False)
class FakeTrialWorkflow:
    """The training workflow's stand-in: one fake attempt on the memo's GPU queue, cancelled with it."""

    @workflow.run
    async def run(self, config: BertFineTuneConfig) -> BertFineTuneResult:
        """Run the attempt; a cancel waits for the attempt to stop, as the real workflow's does."""
        queues = workflow.memo_value(names.QUEUES_MEMO_KEY, default={})
        return await workflow.execute_activity(
            names.FINE_TUNE_BERT,
            config,
            result_type=BertFineTuneResult,
            task_queue=queues["gpu"],
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=5),
            retry_policy=RetryPolicy(maximum_attempts=1),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )


class FakeReports:
    """The fake ``record_sweep``: keeps every report it was asked for."""

    def __init__(self) -> None:
        self.reports: list[BertSweepResult] = []

    @activity.defn(name=names.RECORD_SWEEP)
    async def record(self, request: SweepReportRequest) -> SweepReportResult:
        """Remember the sweep and say where the files would be."""
        self.reports.append(request.sweep)
        return SweepReportResult(report_path=f"sweeps/{request.sweep.sweep_id}", files=["metric.png"])


@pytest.fixture
def sweep_settings(settings: DurabertSettings, queue_name: str) -> DurabertSettings:
    """Every queue is this test's one random queue."""
    queues = {"orchestrator": queue_name, "data": queue_name, "gpu": queue_name, "inference": queue_name}
    return settings.model_copy(update={"queues": settings.queues.model_copy(update=queues)})


def workflow_worker(client: Client, queue: str) -> Worker:
    return Worker(client, task_queue=queue, workflows=[BertSweepWorkflow, FakeTrialWorkflow])


def activity_worker(client: Client, queue: str, trials: FakeTrials, reports: FakeReports) -> Worker:
    # Heartbeats every 50 ms reach the server (the default throttle waits 4 s here), so a cancel lands soon.
    return Worker(
        client,
        task_queue=queue,
        activities=[trials.fine_tune, reports.record],
        max_heartbeat_throttle_interval=timedelta(milliseconds=50),
        default_heartbeat_throttle_interval=timedelta(milliseconds=50),
    )


@pytest.fixture
def trials() -> FakeTrials:
    return FakeTrials(failing=lambda run_id: run_id.endswith("-03") and "fails" in run_id)


@pytest.fixture
def reports() -> FakeReports:
    return FakeReports()


@pytest.fixture
async def workers(
    client: Client, sweep_settings: DurabertSettings, trials: FakeTrials, reports: FakeReports
) -> AsyncIterator[None]:
    queue = sweep_settings.queues.orchestrator
    async with activity_worker(client, queue, trials, reports), workflow_worker(client, queue):
        yield


def write_sweep(folder: Path, sweep_id: str, **fields: Any) -> Path:
    path = folder / f"{sweep_id}.yaml"
    base = {"dataset_name": "json", "data_files": "reviews.jsonl", "max_steps": 8}
    sweep = {"sweep_id": sweep_id, "base": base, "parameters": {"learning_rate": RATES}} | fields
    path.write_text(yaml.safe_dump(sweep))
    return path


HALVING = {"strategy": "successive_halving", "min_steps": 2, "eta": 2}


async def run_sweep(settings: DurabertSettings, path: Path) -> tuple[int, dict[str, Any], Captured]:
    output = Captured()
    code = await execute(["sweep", str(path), "--wait", "--json"], settings, output=output)
    return code, json.loads(output.stdout), output


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_LIMIT):
        while not condition():
            await asyncio.sleep(0.05)


async def test_halving_promotes_the_best_half_from_their_own_checkpoints(
    client: Client,
    sweep_settings: DurabertSettings,
    workers: None,
    trials: FakeTrials,
    reports: FakeReports,
    tmp_path: Path,
) -> None:
    code, status, output = await run_sweep(sweep_settings, write_sweep(tmp_path, "halve", **HALVING))
    assert code == 0, output.stderr
    sweep = BertSweepResult.model_validate(status["progress"]["sweep"])
    assert sweep.rungs == [2, 4, 8]
    first_rung = {(f"halve-0{n}", 2, False) for n in range(1, 5)}
    assert set(trials.calls[:4]) == first_rung
    # The best half (02, 03) continue to 4 steps, then the best of those (02) to 8, each with continue_run.
    assert sorted(trials.calls[4:6]) == [("halve-02", 4, True), ("halve-03", 4, True)]
    assert trials.calls[6:] == [("halve-02", 8, True)]
    # Every rung keeps the whole run's learning-rate schedule (to base.max_steps).
    assert trials.schedules == [8] * 7
    states = {trial.run_id: trial.state for trial in sweep.trials}
    assert states == {
        "halve-01": "stopped",
        "halve-02": "completed",
        "halve-03": "stopped",
        "halve-04": "stopped",
    }
    best = sweep.trials[1]
    assert (sweep.best_run_id, sweep.best_metric) == ("halve-02", best.metric)
    assert best.metric == accuracy(BertFineTuneConfig.model_validate(best.params | {"dataset_name": "x"}), 8)
    assert [point.step for point in best.points] == [2, 4, 8]
    # 4 trials x 2 steps + 2 x (4 - 2) + 1 x (8 - 4): resumed steps are not counted twice.
    assert sweep.total_steps == 16
    assert [trial.params["learning_rate"] for trial in sweep.trials] == RATES
    assert len(reports.reports) == 3  # a report after each rung
    assert sweep.report_path == "sweeps/halve"
    await record_history(client.get_workflow_handle("halve"), "sweep")


async def test_a_long_history_continues_as_new_between_rungs_with_the_same_outcome(
    client: Client, sweep_settings: DurabertSettings, workers: None, trials: FakeTrials, tmp_path: Path
) -> None:
    base = {"dataset_name": "json", "data_files": "reviews.jsonl", "max_steps": 8}
    base["timeouts"] = {"continue_as_new_after_events": 1}  # type: ignore[assignment]
    code, status, output = await run_sweep(
        sweep_settings, write_sweep(tmp_path, "chain", base=base, **HALVING)
    )
    assert code == 0, output.stderr
    sweep = BertSweepResult.model_validate(status["progress"]["sweep"])
    assert (sweep.best_run_id, sweep.total_steps) == ("chain-02", 16)
    assert sorted(trials.calls[4:6]) == [("chain-02", 4, True), ("chain-03", 4, True)]
    assert trials.calls[6:] == [("chain-02", 8, True)]
    progress = await client.get_workflow_handle("chain").query(
        names.GET_PROGRESS_QUERY, result_type=SweepProgress
    )
    assert progress.continued_as_new == 2  # after rungs 0 and 1, never after the last


async def test_sweep_status_marks_the_best_trial_and_names_the_plot(
    sweep_settings: DurabertSettings, workers: None, tmp_path: Path
) -> None:
    code, _, output = await run_sweep(sweep_settings, write_sweep(tmp_path, "table", **HALVING))
    assert code == 0, output.stderr
    shown = Captured()
    assert await execute(["sweep", "status", "table"], sweep_settings, output=shown) == 0, shown.stderr
    lines = shown.stdout.splitlines()
    best_row = next(line for line in lines if "table-02" in line)
    assert best_row.lstrip("│ ").startswith("*")
    assert "learning_rate=4e-05" in best_row
    assert "completed" in best_row
    assert "*" not in next(line for line in lines if "table-01" in line)
    assert "best table-02 (eval_accuracy 0.7080)" in shown.stdout
    assert f"plot: {sweep_settings.artifact_dir / 'sweeps' / 'table' / 'metric.png'}" in shown.stdout
    # `durabert status` of a sweep id points to the command that shows it.
    told = Captured()
    assert await execute(["status", "table"], sweep_settings, output=told) == 0, told.stderr
    assert "table is a BertSweepWorkflow workflow, not a training run: see durabert sweep status table" in (
        told.stdout + told.stderr
    )


async def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(
    sweep_settings: DurabertSettings, workers: None, tmp_path: Path
) -> None:
    code, status, output = await run_sweep(sweep_settings, write_sweep(tmp_path, "fails", **HALVING))
    assert code == 0, output.stderr
    sweep = BertSweepResult.model_validate(status["progress"]["sweep"])
    failed = sweep.trials[2]
    assert (failed.run_id, failed.state) == ("fails-03", "failed")
    assert "fails-03: no such model" in (failed.error or "")
    # 03 would have been promoted: the quota (4 // 2) goes to the finished trials, so 04 takes its place.
    states = {trial.run_id: trial.state for trial in sweep.trials}
    assert states == {
        "fails-01": "stopped",
        "fails-02": "completed",
        "fails-03": "failed",
        "fails-04": "stopped",
    }
    assert [point.step for point in sweep.trials[3].points] == [2, 4]
    assert sweep.best_run_id == "fails-02"


async def test_a_sweep_whose_every_trial_fails_fails(
    client: Client, sweep_settings: DurabertSettings, tmp_path: Path, reports: FakeReports
) -> None:
    everything_fails = FakeTrials(failing=lambda _: True)
    queue = sweep_settings.queues.orchestrator
    async with activity_worker(client, queue, everything_fails, reports), workflow_worker(client, queue):
        code, status, _ = await run_sweep(sweep_settings, write_sweep(tmp_path, "doomed", **HALVING))
    assert code == 1
    assert status["status"] == "failed"
    assert (
        "every trial of sweep doomed failed; the first: doomed-01: model_name: doomed-01: no such model"
        in status["error"]
    )
    assert len(everything_fails.calls) == 4  # no rung after the first


async def test_at_most_max_concurrent_trials_train_at_once(
    sweep_settings: DurabertSettings, workers: None, trials: FakeTrials, tmp_path: Path
) -> None:
    rates = [1e-5, 2e-5, 3e-5, 4e-5, 5e-5]
    trials.hold_until_running = 2  # the first two wait for each other: the bound is reached, not just kept
    path = write_sweep(tmp_path, "bounded", parameters={"learning_rate": rates}, max_concurrent_trials=2)
    code, status, output = await run_sweep(sweep_settings, path)
    assert code == 0, output.stderr
    assert len(trials.calls) == 5
    assert trials.most_running == 2
    assert status["progress"]["sweep"]["best_run_id"] == "bounded-05"


async def test_cancelling_a_sweep_cancels_every_trial_and_waits_for_them(
    client: Client, sweep_settings: DurabertSettings, workers: None, trials: FakeTrials, tmp_path: Path
) -> None:
    trials.release.clear()
    output = Captured()
    path = write_sweep(tmp_path, "stopme", max_concurrent_trials=3)
    assert await execute(["sweep", str(path)], sweep_settings, output=output) == 0, output.stderr
    await eventually(lambda: trials.running == 3)
    # `durabert cancel` takes a sweep id as it takes a run id; --wait returns once the sweep closed.
    cancelled = Captured()
    assert await execute(["cancel", "stopme", "--wait"], sweep_settings, output=cancelled) == 0, (
        cancelled.stderr
    )
    assert "run stopme is canceled" in cancelled.stdout
    # Every attempt that trained was cancelled and had stopped before the sweep closed.
    assert sorted(trials.cancelled) == ["stopme-01", "stopme-02", "stopme-03"]
    assert trials.running == 0
    for number in range(1, 4):
        child = await client.get_workflow_handle(f"stopme-0{number}").describe()
        assert child.status == WorkflowExecutionStatus.CANCELED
    shown = Captured()
    assert await execute(["sweep", "status", "stopme", "--json"], sweep_settings, output=shown) == 1
    status = json.loads(shown.stdout)
    assert status["status"] == "canceled"
    states = [trial["state"] for trial in status["progress"]["sweep"]["trials"]]
    assert states == ["cancelled"] * 4  # the fourth never started


async def test_a_sweep_survives_a_restart_of_its_orchestrator_worker(
    client: Client, sweep_settings: DurabertSettings, trials: FakeTrials, reports: FakeReports, tmp_path: Path
) -> None:
    queue = sweep_settings.queues.orchestrator
    trials.release.clear()
    path = write_sweep(tmp_path, "survivor", **HALVING)
    async with activity_worker(client, queue, trials, reports):
        async with workflow_worker(client, queue):
            output = Captured()
            assert await execute(["sweep", str(path)], sweep_settings, output=output) == 0, output.stderr
            await eventually(lambda: trials.running == 4)
        # The orchestrator worker is gone while the first rung trains; a new one takes over.
        trials.release.set()
        async with workflow_worker(client, queue):
            result = await client.get_workflow_handle("survivor", result_type=BertSweepResult).result()
    assert result.best_run_id == "survivor-02"
    assert [call[:2] for call in trials.calls[6:]] == [("survivor-02", 8)]
    assert result.total_steps == 16


async def test_sweep_status_of_an_unknown_sweep_says_so(sweep_settings: DurabertSettings) -> None:
    output = Captured()
    assert await execute(["sweep", "status", "no-such-sweep"], sweep_settings, output=output) == 1
    assert "no run named no-such-sweep" in output.stderr


async def test_a_bad_sweep_file_is_refused_before_temporal_is_contacted(tmp_path: Path) -> None:
    nowhere = DurabertSettings(temporal={"address": "127.0.0.1:9"}, artifact_root=tmp_path)
    output = Captured()
    path = write_sweep(tmp_path, "bad", strategy="successive_halving")
    assert await asyncio.wait_for(execute(["sweep", str(path)], nowhere, output=output), 10) == 2
    assert "needs base.max_steps (last rung) and min_steps (first rung)" in output.stderr


@pytest.mark.parametrize("seed", [3, None])
async def test_num_trials_samples_the_grid_reproducibly(
    sweep_settings: DurabertSettings, workers: None, tmp_path: Path, seed: int | None
) -> None:
    sweep_id = f"sampled-{seed if seed is not None else 'drawn'}"
    fields: dict[str, Any] = {"num_trials": 2} | ({"seed": seed} if seed is not None else {})
    code, status, output = await run_sweep(sweep_settings, write_sweep(tmp_path, sweep_id, **fields))
    assert code == 0, output.stderr
    sweep = BertSweepResult.model_validate(status["progress"]["sweep"])
    assert sweep.seed is not None  # drawn by the workflow when the file gives none, and reported
    assert seed is None or sweep.seed == seed
    grid = sweep_grid.grid_points({"learning_rate": RATES})
    assert [trial.params for trial in sweep.trials] == sweep_grid.sample_points(
        grid, 2, random.Random(sweep.seed)
    )
    assert [trial.run_id for trial in sweep.trials] == [f"{sweep_id}-01", f"{sweep_id}-02"]
