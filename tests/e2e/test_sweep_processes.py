"""A 4-trial successive-halving sweep of the tiny BERT with the three workers as processes, through a
GPU worker SIGKILLed mid-attempt (replaced by a new one) and a restart of the orchestrator worker:
every trial completes its rungs, the killed attempt is retried, the best model is published and the
sweep's plot is in the artifact store.

A cancelled sweep stops its training trial on the real GPU worker: the training process is gone,
no trial is left running and the freed slot trains the next run.
"""

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from durabert.orchestrator.cli import execute
from durabert.shared.models import BertFineTuneResult, BertSweepConfig
from support.cluster import SCRIPTS, Cluster, progress_of
from support.processes import WorkerProcess

pytestmark = pytest.mark.slow

TRIALS = 4
KILL_WAIT = 120.0
"""Seconds to wait for a trial's attempt to start on the first GPU worker."""


def sweep_config(cluster: Cluster, model: Path, sweep_id: str) -> BertSweepConfig:
    base = cluster.config("unused", model, max_steps=8, checkpoint_steps=2, batch_size=4, max_seq_length=16)
    return BertSweepConfig(
        sweep_id=sweep_id,
        base=base.model_copy(update={"run_id": None}),
        parameters={"learning_rate": [1e-4, 3e-4, 1e-3, 3e-3]},
        strategy="successive_halving",
        min_steps=4,
        eta=2,
        max_concurrent_trials=2,
    )


async def attempt_started(client: Client, run_ids: list[str]) -> tuple[str, str]:
    """The first trial whose fine-tuning attempt heartbeats, and its workflow run id."""
    while True:
        for run_id in run_ids:
            handle = client.get_workflow_handle(run_id)
            try:
                progress = await progress_of(handle)
            except RPCError:
                continue  # not started yet
            if progress.phase is not None:
                return run_id, (await handle.describe()).run_id or ""
        await asyncio.sleep(0.05)


def restart_orchestrator(cluster: Cluster) -> None:
    """Stop the orchestrator worker process (a graceful drain) and start another."""
    cluster.stop_all(SCRIPTS["orchestrator"])
    cluster.start("orchestrator")


async def test_a_halving_sweep_survives_a_killed_gpu_worker_and_an_orchestrator_restart(
    client: Client, cluster: Cluster, tiny_model_dir: Path
) -> None:
    sweep_id = f"sweep-{uuid.uuid4().hex[:6]}"
    config = sweep_config(cluster, tiny_model_dir, sweep_id)
    run_ids = [f"{sweep_id}-0{n}" for n in range(1, TRIALS + 1)]
    first = cluster.start("gpu")
    handle = await cluster.start_sweep(client, config)
    killed, killed_run = await asyncio.wait_for(attempt_started(client, run_ids), KILL_WAIT)
    first.signal(signal.SIGKILL)
    first.wait(10)
    # A new GPU worker and a restarted orchestrator worker, both at once (each takes seconds to start).
    await asyncio.gather(
        asyncio.to_thread(cluster.start, "gpu"), asyncio.to_thread(restart_orchestrator, cluster)
    )
    result = await asyncio.wait_for(handle.result(), 180)

    states = sorted(trial.state for trial in result.trials)
    assert states == ["completed", "completed", "stopped", "stopped"], result.trials  # the best half go on
    assert all(trial.points[0].step == 4 for trial in result.trials)
    best = next(trial for trial in result.trials if trial.run_id == result.best_run_id)
    assert (best.state, best.global_step, [p.step for p in best.points]) == ("completed", 8, [4, 8])
    assert result.total_steps == TRIALS * 4 + 2 * 4
    # The killed attempt was retried: its rung's run needed more than one attempt.
    killed_result: Any = await client.get_workflow_handle(
        killed, run_id=killed_run, result_type=BertFineTuneResult
    ).result()
    assert killed_result.attempts >= 2
    # Every trial's model is published (usable for inference), and the sweep's plot is stored.
    for run_id in run_ids:
        assert (cluster.run_dir(run_id) / "model" / "config.json").exists()
    report = cluster.settings.artifact_dir / "sweeps" / sweep_id
    assert (report / "metric.png").read_bytes().startswith(b"\x89PNG")
    assert result.report_path == f"sweeps/{sweep_id}"


async def test_cancelling_a_sweep_stops_its_trials_and_frees_the_gpu(
    client: Client, cluster: Cluster, gpu_worker: WorkerProcess, tiny_model_dir: Path
) -> None:
    sweep_id = f"stop-{uuid.uuid4().hex[:6]}"
    base = cluster.config("unused", tiny_model_dir, max_steps=5000)
    config = BertSweepConfig(
        sweep_id=sweep_id,
        base=base.model_copy(update={"run_id": None}),
        parameters={"learning_rate": [1e-4, 3e-4]},
        max_concurrent_trials=2,
    )
    run_ids = [f"{sweep_id}-01", f"{sweep_id}-02"]
    handle = await cluster.start_sweep(client, config)
    # One trial trains in the worker's only slot; the other waits for it.
    await asyncio.wait_for(attempt_started(client, run_ids), KILL_WAIT)
    started = await asyncio.to_thread(
        gpu_worker.wait_for, lambda line: line.get("event") == "training process started", KILL_WAIT
    )

    assert await execute(["cancel", sweep_id, "--wait"], settings=cluster.settings) == 0

    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    for run_id in run_ids:
        trial = await client.get_workflow_handle(run_id).describe()
        assert trial.status == WorkflowExecutionStatus.CANCELED, run_id
    gpu_worker.wait_for(lambda line: line.get("event") == "training stopped", 5)
    assert not Path(f"/proc/{started['pid']}").exists()
    # The slot is free: the next run trains on the same worker.
    after = await cluster.start_run(client, cluster.config(f"after-{sweep_id}", tiny_model_dir, max_steps=2))
    assert (await asyncio.wait_for(after.result(), 120)).global_step == 2
