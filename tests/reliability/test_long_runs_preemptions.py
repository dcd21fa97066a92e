"""A run on a GPU pool that keeps being preempted: six SIGTERMs of real GPU worker processes.

Workers run as separate processes (their console scripts) on the dev server. Each GPU worker is
sent SIGTERM once it has saved a checkpoint past the step its attempt resumed from (a spot node
reclaimed mid-run), and a fresh one takes its place. With ``max_attempts`` 2 the run still
completes at the planned step: preemptions do not use up the retry budget.
"""

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from durabert.shared.models import BertFineTuneResult
from support.cluster import Cluster
from support.processes import WorkerProcess

pytestmark = pytest.mark.slow

PREEMPTIONS = 6


def _preempt_after_progress(
    cluster: Cluster, worker: WorkerProcess, resumed: int
) -> tuple[int, WorkerProcess]:
    """SIGTERM a GPU worker once it saved a checkpoint past ``resumed``, with a spare ready.

    The spare starts once the doomed worker holds the attempt, and waits while it trains, as a
    spare node of a pool would: it takes the retried attempt the moment the preemption reports.

    Returns:
        The step the worker stopped at, and the spare.
    """
    worker.wait_for(lambda line: line.get("event") == "training process started", 120)
    spare = cluster.start("gpu")
    worker.wait_for(lambda line: line.get("event") == "checkpoint saved" and line["step"] > resumed, 120)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0  # drained: checkpoint written, clean exit
    stopped = worker.wait_for(lambda line: line.get("event") == "training stopped on request", 5)
    return int(stopped["step"]), spare


async def test_six_sigterms_with_max_attempts_2_complete_at_the_planned_step(
    client: Client, cluster: Cluster, tiny_model_dir: Path
) -> None:
    run_id = f"spot-{uuid.uuid4().hex[:6]}"
    config = cluster.config(run_id, tiny_model_dir, max_steps=100, max_attempts=2)
    began = time.monotonic()
    handle = await cluster.start_run(client, config)
    worker = cluster.start("gpu")
    stops = [0]
    for _ in range(PREEMPTIONS):
        stop, worker = await asyncio.to_thread(_preempt_after_progress, cluster, worker, stops[-1])
        stops.append(stop)
    result: BertFineTuneResult = await asyncio.wait_for(handle.result(), timeout=300)
    events = len((await handle.fetch_history()).events)
    print(
        f"{PREEMPTIONS} SIGTERMs, stopped at steps {stops[1:]}: global_step {result.global_step}, "
        f"attempts {result.attempts}, preemptions {result.preemptions}, failed {result.failed_attempts}, "
        f"resumed_from_step {result.resumed_from_step}, {events} history events, "
        f"{time.monotonic() - began:.1f} s"
    )
    cluster.stop_all("durabert-gpu-worker")

    assert stops == sorted(stops)
    assert len(set(stops)) == PREEMPTIONS + 1  # every attempt moved the run forward
    assert result.global_step == config.max_steps
    assert (result.attempts, result.preemptions, result.failed_attempts) == (PREEMPTIONS + 1, PREEMPTIONS, 0)
    assert result.resumed_from_step == stops[-1]  # nothing lost at the last SIGTERM
