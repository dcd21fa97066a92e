"""Worker processes (the three console scripts) sharing one artifact store, on queues of their own.

Used by the end-to-end and reliability tests: start roles, build tiny-model configs, start
runs, wait for progress and count what a run trained from its history records.
"""

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from durabert.orchestrator.devserver import DevServer
from durabert.shared import names
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneResult,
    BertSweepConfig,
    BertSweepResult,
    TrainingHeartbeat,
    TrainingProgress,
)
from durabert.shared.settings import DurabertSettings
from support.datasets import write_reviews
from support.processes import WorkerProcess

CHECKPOINT_STEPS = 5
SCRIPTS = {
    "orchestrator": "durabert-orchestrator-worker",
    "data": "durabert-data-worker",
    "gpu": "durabert-gpu-worker",
}


@dataclass
class Cluster:
    """Worker processes sharing one artifact store, on queues of their own."""

    settings: DurabertSettings
    env: dict[str, str]
    log_dir: Path
    workers: list[WorkerProcess]
    data_file: Path

    def start(self, role: str, **env: str) -> WorkerProcess:
        script = SCRIPTS.get(role, SCRIPTS["gpu"])
        worker = WorkerProcess(script, self.env | env, self.log_dir / f"{role}-{len(self.workers)}.log")
        self.workers.append(worker.start())
        return worker

    def config(self, run_id: str, model: Path, **overrides: Any) -> BertFineTuneConfig:
        base: dict[str, Any] = {
            "run_id": run_id,
            "model_name": str(model),
            "dataset_name": "json",
            "data_files": str(self.data_file),
            "text_field": "sentence",
            "max_steps": 30,
            "checkpoint_steps": CHECKPOINT_STEPS,
            "batch_size": 8,
            "max_seq_length": 32,
            "learning_rate": 1e-3,
            "use_gpu": False,
            "heartbeat_timeout_seconds": 5,
            "timeouts": {"retry_initial_interval_seconds": 0.5},
        }
        return BertFineTuneConfig.model_validate(base | overrides)

    async def start_run(self, client: Client, config: BertFineTuneConfig) -> WorkflowHandle[Any, Any]:
        return await self._start(client, names.TRAINING_WORKFLOW, config, config.run_id, BertFineTuneResult)

    async def start_sweep(self, client: Client, config: BertSweepConfig) -> WorkflowHandle[Any, Any]:
        return await self._start(client, names.SWEEP_WORKFLOW, config, config.sweep_id, BertSweepResult)

    async def _start(
        self, client: Client, workflow: str, config: Any, workflow_id: str | None, result_type: type
    ) -> WorkflowHandle[Any, Any]:
        """Start a workflow on the orchestrator queue, with the queues in its memo as the CLI does."""
        return await client.start_workflow(
            workflow,
            config,
            id=workflow_id or "",
            task_queue=self.settings.queues.orchestrator,
            memo=self.settings.queue_memo(),
            result_type=result_type,
        )

    def run_dir(self, run_id: str) -> Path:
        return self.settings.artifact_dir / "runs" / run_id

    def stop_all(self, script: str | None = None) -> None:
        for worker in self.workers:
            if script is None or worker.script == script:
                worker.stop()


def make_cluster(
    address: str, root: Path, rows: int = 400, artifact_root: str | None = None, **env: str
) -> Cluster:
    """A cluster description (no worker started yet) against the server at ``address``.

    ``artifact_root`` is a folder under ``root`` unless given (an object-store URL, say).
    """
    suffix = uuid.uuid4().hex[:8]
    settings = DurabertSettings(
        temporal={"address": address},
        artifact_root=artifact_root or root / "artifacts",
        data_dir=root / "data",
        queues={
            "data": f"data-{suffix}",
            "gpu": f"gpu-{suffix}",
            "inference": f"infer-{suffix}",
            "orchestrator": f"orch-{suffix}",
        },
    )
    base_env = {
        "DURABERT_TEMPORAL__ADDRESS": address,
        "DURABERT_ARTIFACT_ROOT": settings.artifact_root,
        "DURABERT_DATA_DIR": str(settings.data_dir),
        "DURABERT_QUEUES__DATA": settings.queues.data,
        "DURABERT_QUEUES__GPU": settings.queues.gpu,
        "DURABERT_QUEUES__INFERENCE": settings.queues.inference,
        "DURABERT_QUEUES__ORCHESTRATOR": settings.queues.orchestrator,
        "DURABERT_LOG_FORMAT": "json",
        "DURABERT_WORKER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "30",
        "DURABERT_GPU__DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    data_file = write_reviews(settings.data_dir / "reviews.jsonl", rows=rows)
    return Cluster(settings, base_env | env, log_dir, [], data_file)


async def progress_of(handle: WorkflowHandle[Any, Any]) -> TrainingProgress:
    """The workflow's durable progress merged with the running attempt's live heartbeat."""
    progress = await handle.query(names.GET_PROGRESS_QUERY, result_type=TrainingProgress)
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == names.FINE_TUNE_BERT and pending.heartbeat_details.payloads:
            values = await pydantic_data_converter.decode(pending.heartbeat_details.payloads)
            return progress.with_heartbeat(TrainingHeartbeat.model_validate(values[0]))
    return progress


async def wait_progress(
    handle: WorkflowHandle[Any, Any], done: Any, timeout: float = 120
) -> TrainingProgress:
    async def poll() -> TrainingProgress:
        while True:
            progress = await progress_of(handle)
            if done(progress):
                return progress
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(poll(), timeout)


def steps_trained(history: list[Any]) -> int:
    """Steps each attempt trained (last logged step minus its resume point), summed.

    ``history`` holds the typed records of ``durabert.gpu_worker.history.read``.
    """
    starts = {r.attempt: r.resumed_from_step or 0 for r in history if r.kind == "attempt"}
    last: dict[int, int] = {}
    for record in history:
        if record.kind in ("loss", "checkpoint"):
            last[record.attempt] = max(last.get(record.attempt, 0), record.step)
    return sum(last.get(a, start) - start for a, start in starts.items())


def kill_pid(pid: int, signum: int) -> bool:
    """Send a signal to a process that may be gone already; True when it was delivered."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An orchestrator and a data worker process for the module; GPU workers come per test."""
    cluster = make_cluster(dev_server.address, tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start("orchestrator")
        cluster.start("data")
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def gpu_worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    """A GPU worker for one test; every GPU worker the test started is gone afterwards."""
    yield cluster.start("gpu")
    cluster.stop_all(SCRIPTS["gpu"])
