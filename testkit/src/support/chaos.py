"""The chaos soak: one training run whose GPU worker is SIGKILLed at random moments, each time replaced.

Shared by ``tests/reliability/test_faults.py`` (a fixed seed in ``make test``) and
``bench/soak.py`` (any seed, kill count and length). A kill lands a random number of steps
past a random point of the plan (so mid-interval) plus a random delay, and is either a
lost worker process (its training child notices the broken pipe, checkpoints and stops) or a
lost node (worker and child killed together: whatever the child trained since its last
checkpoint is gone). The uninterrupted reference is the plain training function, run
in-process on the same snapshot.
"""

import asyncio
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

from durabert.shared.models import BertFineTuneConfig, BertFineTuneRequest, BertFineTuneResult
from support.cluster import Cluster, kill_pid, progress_of, steps_trained
from support.processes import WorkerProcess


@dataclass
class SoakReport:
    """What a soak did and what it cost."""

    seed: int
    kills: int
    max_steps: int
    checkpoint_steps: int
    global_step: int = 0
    attempts: int = 0
    eval_loss: float = float("nan")
    reference_eval_loss: float = float("nan")
    steps_trained: int = 0
    seconds: float = 0.0
    reference_seconds: float = 0.0
    kill_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def extra_steps(self) -> int:
        """Steps trained beyond the plan (retrained after kills)."""
        return self.steps_trained - self.max_steps

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"extra_steps": self.extra_steps}


def _running(cluster: Cluster, attempt: int) -> WorkerProcess:
    """The live GPU worker that runs the workflow's ``attempt`` (waits for its log line)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for worker in cluster.workers:
            if (
                worker.script != "durabert-gpu-worker"
                or worker.process is None
                or worker.process.poll() is not None
            ):
                continue
            starts = [line for line in worker.lines if line.get("event") == "fine-tuning attempt starting"]
            if starts and starts[-1].get("attempt") == attempt:
                return worker
        time.sleep(0.05)
    raise AssertionError(f"no live GPU worker runs attempt {attempt}")


def _last_child_pid(worker: WorkerProcess) -> int | None:
    started = [line for line in worker.lines if line.get("event") == "training process started"]
    return int(started[-1]["pid"]) if started else None


async def chaos_soak(
    client: Client,
    cluster: Cluster,
    model: Path,
    *,
    run_id: str,
    seed: int,
    kills: int,
    max_steps: int,
    checkpoint_steps: int,
    timeout: float = 600,
) -> tuple[SoakReport, BertFineTuneResult, BertFineTuneConfig]:
    """Run the soak and return its report, the run's result and config (reference not yet run)."""
    rng = random.Random(seed)
    report = SoakReport(seed, kills, max_steps, checkpoint_steps)
    config = cluster.config(
        run_id,
        model,
        max_steps=max_steps,
        checkpoint_steps=checkpoint_steps,
        max_attempts=kills + 3,
        timeouts={"retry_initial_interval_seconds": 0.2, "retry_maximum_interval_seconds": 1},
    )
    started = time.monotonic()
    # A warm standby replaces each killed worker (as another replica would); a fresh standby
    # starts right after each kill. A cold start would add its torch imports (~10 s) per kill.
    standby = cluster.start("gpu")
    handle = await cluster.start_run(client, config)
    for index in range(kills):
        attempt = index + 1
        # Aim somewhere in this kill's share of the plan, off the checkpoint grid.
        share = max_steps * (index + 1) // (kills + 1)
        target = max(1, share + rng.randint(-checkpoint_steps, checkpoint_steps))
        if index == 0:
            standby = cluster.start("gpu")
        # The worker's own log says when the attempt passed the target: heartbeats reach the
        # server every few seconds, and the tiny model trains hundreds of steps a second.
        worker = await asyncio.to_thread(_running, cluster, attempt)
        line = await asyncio.to_thread(
            worker.wait_for,
            lambda line, t=target: line.get("event") == "checkpoint saved" and line["step"] >= t,
            timeout,
        )
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        node = rng.random() < 0.5
        child = _last_child_pid(worker)
        if node and child is not None:
            kill_pid(child, signal.SIGKILL)  # the child first: it must not get to checkpoint
        worker.signal(signal.SIGKILL)
        worker.wait(timeout=30)
        report.kill_log.append(
            {
                "attempt": attempt,
                "mode": "node" if node else "worker",
                "latest_checkpoint": line["step"],
                "at_seconds": round(time.monotonic() - started, 1),
            }
        )
        standby = cluster.start("gpu")
    del standby
    result: BertFineTuneResult = await asyncio.wait_for(handle.result(), timeout=timeout)
    report.seconds = time.monotonic() - started
    progress = await progress_of(handle)
    report.global_step = result.global_step
    report.attempts = progress.attempt
    report.eval_loss = float((result.eval_metrics or {}).get("eval_loss", float("nan")))
    from durabert.gpu_worker import history

    report.steps_trained = steps_trained(history.read(cluster.run_dir(run_id)))
    return report, result, config


def reference_eval_loss(cluster: Cluster, config: BertFineTuneConfig, result: BertFineTuneResult) -> float:
    """Train the same config on the same snapshot uninterrupted, in this process; its eval loss."""
    from durabert.gpu_worker.events import TrainJob
    from durabert.gpu_worker.training import run_training

    assert result.dataset_snapshot is not None
    run_id = f"{config.run_id}-ref"
    reference = config.model_copy(update={"run_id": run_id})
    job = TrainJob(
        request=BertFineTuneRequest(
            run_id=run_id, config=reference, dataset_snapshot=result.dataset_snapshot
        ),
        settings=cluster.settings,
        device="cpu",
    )
    outcome = run_training(job, lambda _event: None, threading.Event())
    assert isinstance(outcome, BertFineTuneResult)
    return float((outcome.eval_metrics or {})["eval_loss"])
