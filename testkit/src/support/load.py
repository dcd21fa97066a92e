"""Load harness: the three workers as processes on queues of their own, and the loads they serve.

Shared by ``bench/load_bench.py`` (figures for people) and the reliability tests
(``tests/reliability/test_load.py``, ``test_secrets.py``), which assert on the same figures.
"""

import asyncio
import itertools
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from durabert.shared import names
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
)
from support.datasets import write_reviews
from support.processes import WorkerProcess

SCRIPTS = {
    "orchestrator": "durabert-orchestrator-worker",
    "data": "durabert-data-worker",
    "gpu": "durabert-gpu-worker",
}
"""Console script of each role."""
TEXTS = ["the film was wonderful and the cast felt wonderful", "the story was dull and the ending felt dull"]
"""What every inference request classifies."""


@dataclass
class LoadCluster:
    """The three workers as processes, on queues of their own, sharing one artifact store."""

    address: str
    """Temporal frontend the workers connect to."""
    root: Path
    """Folder holding the artifact store, data and worker logs."""
    gpu_slots: int = 1
    """Activity slots of the GPU worker (``DURABERT_GPU__MAX_CONCURRENT_ACTIVITIES``)."""
    torch_threads: int | None = 1
    """``OMP_NUM_THREADS`` of the workers; None leaves torch's default (one per core).

    The tiny model gains nothing from intra-op threads, and on a small CPU shared with the
    server and the other workers an OpenMP pool that spins at every barrier costs far more
    than it gives: measured on the 2-core test machine, a 2-text inference took 3 ms with one
    thread and 15-200 ms with two. A CPU deployment sets it to its cores, as pods set it to
    their CPU limit."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """More environment for every worker (secrets, in the secrets test); wins over the rest."""
    roles: tuple[str, ...] = tuple(SCRIPTS)
    """Roles :meth:`start` starts (a serving benchmark needs no data worker)."""
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    """Running workers by role."""

    def __post_init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.queues = {role: f"{role}-{suffix}" for role in [*SCRIPTS, "inference"]}
        self.artifact_root = self.root / "artifacts"
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Few rows: every run snapshots the same content (one snapshot id, reused).
        self.data_file = write_reviews(self.data_dir / "reviews.jsonl", rows=48)

    @property
    def env(self) -> dict[str, str]:
        """Environment of every worker process: only what is set here, nothing from the caller."""
        return {
            "DURABERT_TEMPORAL__ADDRESS": self.address,
            "DURABERT_ARTIFACT_ROOT": str(self.artifact_root),
            "DURABERT_DATA_DIR": str(self.data_dir),
            "DURABERT_QUEUES__DATA": self.queues["data"],
            "DURABERT_QUEUES__GPU": self.queues["gpu"],
            "DURABERT_QUEUES__INFERENCE": self.queues["inference"],
            "DURABERT_QUEUES__ORCHESTRATOR": self.queues["orchestrator"],
            "DURABERT_GPU__MAX_CONCURRENT_ACTIVITIES": str(self.gpu_slots),
            "DURABERT_GPU__DEVICE": "cpu",
            "DURABERT_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
            **({"OMP_NUM_THREADS": str(self.torch_threads)} if self.torch_threads else {}),
            **self.extra_env,
        }

    def memo(self) -> dict[str, dict[str, str]]:
        """Workflow memo sending activities to this cluster's queues."""
        return {names.QUEUES_MEMO_KEY: {role: self.queues[role] for role in ("data", "gpu", "inference")}}

    def start(self) -> "LoadCluster":
        """Start the workers of :attr:`roles` (all three by default) and wait until each polls."""
        for role in self.roles:
            self.start_worker(role)
        return self

    def start_worker(self, role: str) -> WorkerProcess:
        """Start (or, after :meth:`stop_worker`, restart) one role's worker and wait until it polls."""
        worker = WorkerProcess(SCRIPTS[role], self.env, self.log_dir / f"{role}.log")
        self.workers[role] = worker
        return worker.start(ready_timeout=120)

    def stop_worker(self, role: str) -> None:
        """Kill one role's worker, so it can start again with other settings (``extra_env``)."""
        self.workers.pop(role).stop()

    def stop(self) -> None:
        """Kill every worker process (clean-up)."""
        for worker in self.workers.values():
            worker.stop()

    def peak_memory_mib(self) -> dict[str, float]:
        """Peak resident memory (``VmHWM``) of each worker process so far, in MiB."""
        peaks = {}
        for role, worker in self.workers.items():
            assert worker.process is not None
            peaks[role] = vm_hwm_kib(worker.process.pid) / 1024
        return peaks

    def config(self, run_id: str, model_dir: Path, **overrides: Any) -> BertFineTuneConfig:
        """A tiny, quick training configuration on the cluster's data file."""
        base: dict[str, Any] = {
            "run_id": run_id,
            "model_name": str(model_dir),
            "dataset_name": "json",
            "data_files": str(self.data_file),
            "text_field": "sentence",
            "max_steps": 2,
            "checkpoint_steps": 2,
            "batch_size": 4,
            "max_seq_length": 16,
            "max_eval_samples": 8,
            "learning_rate": 1e-3,
            "use_gpu": False,
            "heartbeat_timeout_seconds": 30,
            "timeouts": {"retry_initial_interval_seconds": 0.5},
        }
        return BertFineTuneConfig.model_validate(base | overrides)

    async def start_run(self, client: Client, config: BertFineTuneConfig) -> WorkflowHandle[Any, Any]:
        """Start one training workflow (workflow id = run id)."""
        return await client.start_workflow(
            names.TRAINING_WORKFLOW,
            config,
            id=config.run_id or "",
            task_queue=self.queues["orchestrator"],
            memo=self.memo(),
            result_type=BertFineTuneResult,
        )

    async def infer(self, client: Client, run_id: str, workflow_id: str) -> BertInferenceResult:
        """Run one inference workflow to its result."""
        result: BertInferenceResult = await client.execute_workflow(
            names.INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id=run_id, texts=TEXTS, max_seq_length=16, use_gpu=False),
            id=workflow_id,
            task_queue=self.queues["orchestrator"],
            memo=self.memo(),
            result_type=BertInferenceResult,
        )
        return result


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a live process, from ``/proc/<pid>/status``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


async def fine_tune_span(handle: WorkflowHandle[Any, Any]) -> tuple[datetime | None, datetime | None]:
    """When the workflow's (last) fine-tuning activity started and completed, from its history."""
    scheduled: set[int] = set()
    started = completed = None
    async for event in handle.fetch_history_events():
        kind = event.event_type
        if (
            kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and event.activity_task_scheduled_event_attributes.activity_type.name == names.FINE_TUNE_BERT
        ):
            scheduled.add(event.event_id)
        elif (
            kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            and event.activity_task_started_event_attributes.scheduled_event_id in scheduled
        ):
            started = event.event_time.ToDatetime()
        elif (
            kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            and event.activity_task_completed_event_attributes.scheduled_event_id in scheduled
        ):
            completed = event.event_time.ToDatetime()
    return started, completed


def overlapping(spans: list[tuple[datetime, datetime]]) -> list[tuple[int, int]]:
    """Pairs of neighbouring spans (sorted by start) where the later starts before the earlier ends."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    return [(a, b) for a, b in itertools.pairwise(order) if spans[b][0] < spans[a][1]]


TRAINING_ENDS = frozenset(
    {
        "training finished",
        "training stopped",
        "training failed",
        "training crashed",
        "training process exited without a result",
    }
)
"""GPU worker log events that end a training process (the child's own, or its supervisor's)."""


def most_trainings_at_once(lines: list[dict[str, Any]]) -> int:
    """Most training processes running at once, from a GPU worker's log lines in order.

    ``training process started`` (the supervisor) opens a run's process; any of
    :data:`TRAINING_ENDS` for that run closes it.
    """
    running: set[str] = set()
    most = 0
    for line in lines:
        event, run_id = line.get("event"), str(line.get("run_id"))
        if event == "training process started":
            running.add(run_id)
            most = max(most, len(running))
        elif event in TRAINING_ENDS:
            running.discard(run_id)
    return most


@dataclass
class TrainingLoad:
    """What a training load run produced."""

    run_ids: list[str]
    """Run ids, in submission order."""
    results: list[BertFineTuneResult]
    """Each run's result, in the same order."""
    spans: list[tuple[datetime, datetime]]
    """Each run's fine-tuning activity (started, completed), from its history."""
    seconds: float
    """Wall time from the first start to the last result."""

    def summary(self) -> dict[str, Any]:
        """Figures for people."""
        return {
            "runs": len(self.run_ids),
            "wall_seconds": round(self.seconds, 1),
            "seconds_per_run": round(self.seconds / len(self.run_ids), 2),
            "overlapping_fine_tunes": len(overlapping(self.spans)),
        }


async def training_load(
    client: Client, cluster: LoadCluster, model_dir: Path, runs: int, **overrides: Any
) -> TrainingLoad:
    """Start ``runs`` training workflows at once and wait for all of them.

    Args:
        client: Client of the cluster's server.
        cluster: The running workers.
        model_dir: Base model folder (the tiny BERT).
        runs: How many workflows to start.
        **overrides: Configuration fields to change (``max_steps``, ...).

    Returns:
        Results and fine-tuning spans.
    """
    prefix = f"load-{uuid.uuid4().hex[:6]}"
    run_ids = [f"{prefix}-{index:03d}" for index in range(runs)]
    began = time.monotonic()
    handles = await asyncio.gather(
        *(cluster.start_run(client, cluster.config(run_id, model_dir, **overrides)) for run_id in run_ids)
    )
    results = list(await asyncio.gather(*(handle.result() for handle in handles)))
    seconds = time.monotonic() - began
    spans = []
    for handle in handles:
        started, completed = await fine_tune_span(handle)
        assert started is not None, f"{handle.id}: no fine-tuning start in its history"
        assert completed is not None, f"{handle.id}: no fine-tuning completion in its history"
        spans.append((started, completed))
    return TrainingLoad(run_ids, results, spans, seconds)


@dataclass
class InferenceLoad:
    """What an inference load run produced."""

    latencies: list[float]
    """Seconds from start to result of each successful request."""
    failures: list[str]
    """``repr`` of each failed request's error."""
    seconds: float
    """Wall time of the whole load."""
    clients: int
    """Concurrent clients."""

    def percentile(self, fraction: float) -> float:
        """Latency at ``fraction`` (0.5 for the median), nearest rank."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]

    def summary(self) -> dict[str, Any]:
        """Figures for people."""
        done = len(self.latencies)
        return {
            "requests": done + len(self.failures),
            "clients": self.clients,
            "failures": len(self.failures),
            "wall_seconds": round(self.seconds, 2),
            "throughput_per_second": round(done / self.seconds, 1),
            "p50_ms": round(1000 * self.percentile(0.5), 1),
            "p99_ms": round(1000 * self.percentile(0.99), 1),
            "mean_ms": round(1000 * statistics.fmean(self.latencies), 1),
            "max_ms": round(1000 * max(self.latencies), 1),
        }


async def inference_load(
    address: str, cluster: LoadCluster, run_id: str, requests: int, clients: int
) -> InferenceLoad:
    """Send ``requests`` inference workflows from ``clients`` concurrent client connections.

    Each client is its own Temporal connection and sends its share one after the other
    (a request waits for its result before the next), so ``clients`` requests are in
    flight at any time. One warm-up request (loading the model) comes first and is not counted.

    Args:
        address: Temporal frontend.
        cluster: The running workers.
        run_id: A finished run whose model to use.
        requests: Total inference workflows.
        clients: Concurrent clients.

    Returns:
        Latencies and failures.
    """
    connections = await asyncio.gather(
        *(Client.connect(address, data_converter=pydantic_data_converter) for _ in range(clients))
    )
    prefix = f"infer-{uuid.uuid4().hex[:6]}"
    await cluster.infer(connections[0], run_id, f"{prefix}-warmup")
    pending: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        pending.put_nowait(index)
    latencies: list[float] = []
    failures: list[str] = []

    async def client_loop(connection: Client) -> None:
        while not pending.empty():
            index = pending.get_nowait()
            sent = time.perf_counter()
            try:
                result = await cluster.infer(connection, run_id, f"{prefix}-{index:04d}")
                if len(result.predicted_labels) != len(TEXTS):
                    raise AssertionError(f"{len(result.predicted_labels)} predictions for {len(TEXTS)} texts")
            except Exception as exc:
                failures.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - sent)

    began = time.perf_counter()
    await asyncio.gather(*(client_loop(connection) for connection in connections))
    return InferenceLoad(latencies, failures, time.perf_counter() - began, clients)
