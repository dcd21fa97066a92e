"""Faults of a real cluster, injected into worker processes running against a local Temporal server.

Every test here runs the three console scripts as separate processes (as in production)
on queues of their own, and measures what a fault cost: steps trained twice, snapshots
seen half-written, checkpoints lost. The figures go to docs/reliability.md.
"""

import asyncio
import io
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import WorkflowAlreadyStartedError

from durabert.orchestrator.cli import Output, execute
from durabert.orchestrator.devserver import DevServer, free_port
from durabert.shared import names
from durabert.shared.models import BertFineTuneResult
from support.chaos import chaos_soak, reference_eval_loss
from support.cluster import Cluster, make_cluster, progress_of, steps_trained, wait_progress
from support.datasets import write_reviews
from support.processes import WorkerProcess

pytestmark = pytest.mark.slow

SOAK_SEED = 7
SOAK_KILLS = 3
SOAK_STEPS = 300
SOAK_INTERVAL = 20


def _history(cluster: Cluster, run_id: str) -> list[dict[str, Any]]:
    from durabert.gpu_worker import history

    return history.read(cluster.run_dir(run_id))


def _process_gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


def _run_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- 1. chaos soak ------------------------------------------------------------------------------


async def test_chaos_soak_random_sigkills_lose_at_most_one_interval_each(
    client: Client, cluster: Cluster, tiny_model_dir: Path
) -> None:
    report, result, config = await chaos_soak(
        client,
        cluster,
        tiny_model_dir,
        run_id=_run_id("soak"),
        seed=SOAK_SEED,
        kills=SOAK_KILLS,
        max_steps=SOAK_STEPS,
        checkpoint_steps=SOAK_INTERVAL,
    )
    cluster.stop_all("durabert-gpu-worker")
    started = time.monotonic()
    report.reference_eval_loss = await asyncio.to_thread(reference_eval_loss, cluster, config, result)
    report.reference_seconds = time.monotonic() - started
    print("soak figures:", json.dumps(report.as_dict()))

    assert len(report.kill_log) == SOAK_KILLS
    assert report.global_step == SOAK_STEPS
    assert report.attempts == SOAK_KILLS + 1
    assert abs(report.eval_loss - report.reference_eval_loss) <= 1e-4
    assert SOAK_STEPS <= report.steps_trained <= SOAK_STEPS + SOAK_KILLS * SOAK_INTERVAL


# --- 3. data worker killed mid-snapshot --------------------------------------------------------


class _SnapshotWatcher:
    """Polls the snapshots folder; records every name seen and any final-named folder seen incomplete."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: set[str] = set()
        self.partial: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                entries = list(os.scandir(self.folder))
            except FileNotFoundError:
                entries = []
            for entry in entries:
                self.seen.add(entry.name)
                if entry.name.startswith("."):
                    continue  # a temporary name: never read by anyone
                folder = Path(entry.path)
                files = ("manifest.json", "train.parquet", "eval.parquet")
                if not all((folder / name).is_file() for name in files):
                    self.partial.append(entry.name)
            time.sleep(0.002)

    def __enter__(self) -> "_SnapshotWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_data_worker_killed_mid_snapshot_never_shows_a_partial_snapshot(
    client: Client, cluster: Cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from durabert.data_worker.snapshot import create_snapshot

    data_file = write_reviews(cluster.settings.data_dir / "big.jsonl", rows=150_000, seed=3)
    run_id = _run_id("snapkill")
    config = cluster.config(
        run_id,
        tiny_model_dir,
        data_files=str(data_file),
        timeouts={"retry_initial_interval_seconds": 0.2, "snapshot_heartbeat_timeout_seconds": 5},
    )
    (data_worker,) = [
        w
        for w in cluster.workers
        if w.script == "durabert-data-worker" and w.process and w.process.poll() is None
    ]
    snapshots = cluster.settings.artifact_dir / "snapshots"
    # Snapshots of earlier tests in this module share the store: only new names count.
    preexisting = set(os.listdir(snapshots)) if snapshots.exists() else set()
    with _SnapshotWatcher(snapshots) as watcher:
        handle = await cluster.start_run(client, config)
        # Kill the worker while its temporary folder exists: mid-write.
        deadline = time.monotonic() + 120
        while not any(name.startswith(".tmp-") for name in watcher.seen):
            assert time.monotonic() < deadline, "the snapshot was never written"
            await asyncio.sleep(0.001)
        data_worker.signal(signal.SIGKILL)
        killed_while = sorted(watcher.seen - preexisting)
        data_worker.wait(timeout=30)
        cluster.start("data")
        progress = await wait_progress(handle, lambda p: p.snapshot_id is not None, timeout=120)
    await handle.terminate("test done: only the snapshot mattered")

    # The killed attempt left only a temporary name; nothing with a final name was ever partial.
    assert all(name.startswith(".tmp-") for name in killed_while)
    assert watcher.partial == []
    assert progress.snapshot_id in watcher.seen
    # The retry's id is the one an undisturbed snapshot of the same data gets.
    clean = cluster.settings.model_copy(update={"artifact_root": str(tmp_path / "clean")})
    expected = await asyncio.to_thread(create_snapshot, config.snapshot_request(run_id), clean)
    assert progress.snapshot_id == expected.result.snapshot_id
    final = snapshots / progress.snapshot_id
    assert json.loads((final / "manifest.json").read_text())["data_hash"] == expected.result.data_hash


# --- 4. a damaged checkpoint is skipped ---------------------------------------------------------


async def test_truncated_checkpoint_is_skipped_and_the_older_one_used(
    client: Client, cluster: Cluster, gpu_worker: WorkerProcess, tiny_model_dir: Path
) -> None:
    from durabert.gpu_worker import checkpoints

    run_id = _run_id("trunc")
    config = cluster.config(run_id, tiny_model_dir, max_steps=120, checkpoint_steps=10)
    handle = await cluster.start_run(client, config)
    # Aimed from the worker's own log: it reacts within milliseconds, long before step 120.
    await asyncio.to_thread(
        gpu_worker.wait_for, lambda line: line.get("event") == "checkpoint saved" and line["step"] >= 20, 120
    )
    gpu_worker.signal(signal.SIGTERM)  # a clean stop: it checkpoints, the next attempt starts at once
    assert gpu_worker.wait(timeout=60) == 0
    stopped = gpu_worker.wait_for(lambda line: line.get("event") == "training stopped", timeout=5)
    folder = cluster.settings.artifact_dir / stopped["checkpoint"]
    older = [
        c.step for c in checkpoints.list_checkpoints(folder.parent) if c.step < stopped["checkpoint_step"]
    ]
    assert checkpoints.is_complete(folder)
    # The newest checkpoint's optimizer state is cut to nothing on disk; its marker still says complete.
    (folder / "optimizer.pt").write_bytes(b"")

    replacement = cluster.start("gpu")
    result = await asyncio.wait_for(handle.result(), timeout=180)

    assert result.global_step == config.max_steps
    warning = replacement.wait_for(lambda line: "damaged checkpoint" in line.get("event", ""), timeout=5)
    assert warning["step"] == stopped["checkpoint_step"]
    assert "optimizer.pt" in warning["problem"]
    attempts = [r for r in _history(cluster, run_id) if r.kind == "attempt"]
    assert attempts[-1].resumed_from_step == max(older)


# --- 5. the artifact store fills up -------------------------------------------------------------


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip()}")


async def test_full_artifact_store_fails_clearly_and_keeps_earlier_checkpoints(
    client: Client, cluster: Cluster, gpu_worker: WorkerProcess, tiny_model_dir: Path
) -> None:
    from durabert.gpu_worker import checkpoints

    run_id = _run_id("full")
    checkpoints_dir = cluster.run_dir(run_id) / "checkpoints"
    # One tiny-model checkpoint is ~12.8 MB: the second save runs out of space half-way.
    _mount_tmpfs(checkpoints_dir, "20m")
    try:
        config = cluster.config(run_id, tiny_model_dir, max_steps=40, checkpoint_steps=10, max_attempts=2)
        handle = await cluster.start_run(client, config)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=180)
        progress = await progress_of(handle)
        kept = checkpoints.list_checkpoints(checkpoints_dir)
        complete = [c.step for c in kept if c.complete]
    finally:
        subprocess.run(["umount", "-l", str(checkpoints_dir)], check=False)

    message = str(failure.value.cause.cause)  # workflow failure <- activity error <- application error
    assert "artifact store" in message
    assert "full" in message
    assert failure.value.cause.cause.type == "ArtifactStoreError"
    assert progress.stage == "failed"
    assert progress.error is not None
    assert "artifact store" in progress.error
    assert progress.attempt == 2  # retried once (an operator may free space), then reported
    assert complete == [10]  # the earlier checkpoint is intact and still complete


# --- 6. one run id, two starts ------------------------------------------------------------------


def _captured() -> Output:
    return Output(
        out=Console(file=io.StringIO(), width=200, color_system=None),
        err=Console(file=io.StringIO(), width=200, color_system=None),
    )


def _text(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


async def test_second_start_with_the_same_run_id_is_refused(
    client: Client, cluster: Cluster, gpu_worker: WorkerProcess, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run_id = _run_id("twice")
    config = cluster.config(run_id, tiny_model_dir, max_steps=5000)
    config_file = tmp_path / "run.json"
    config_file.write_text(config.model_dump_json(exclude_none=True))
    first_out = _captured()
    assert await execute(["train", str(config_file)], settings=cluster.settings, output=first_out) == 0
    handle = client.get_workflow_handle(run_id)
    await wait_progress(handle, lambda p: p.latest_checkpoint is not None)

    # The CLI: refused with exit 1 and a message naming the run.
    second_out = _captured()
    code = await execute(["train", str(config_file)], settings=cluster.settings, output=second_out)
    assert code == 1
    assert f"run {run_id} is already running" in _text(second_out.err)
    # The client, with FAIL and with the server's default policy: refused too.
    for policy in (WorkflowIDConflictPolicy.FAIL, WorkflowIDConflictPolicy.UNSPECIFIED):
        with pytest.raises(WorkflowAlreadyStartedError):
            await client.start_workflow(
                names.TRAINING_WORKFLOW,
                config,
                id=run_id,
                task_queue=cluster.settings.queues.orchestrator,
                memo=cluster.settings.queue_memo(),
                id_conflict_policy=policy,
            )
    # Another workflow id carrying the same run_id fails before any activity runs.
    other_id = _run_id("other")
    other = await client.start_workflow(
        names.TRAINING_WORKFLOW,
        config,
        id=other_id,
        task_queue=cluster.settings.queues.orchestrator,
        memo=cluster.settings.queue_memo(),
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(other.result(), timeout=60)
    assert "run_id" in str(failure.value.cause)

    assert await execute(["cancel", run_id, "--wait"], settings=cluster.settings, output=_captured()) == 0
    records = _history(cluster, run_id)
    assert [r.attempt for r in records if r.kind == "attempt"] == [1]
    assert {r.attempt for r in records} == {1}  # only the first run's one attempt ever wrote here
    assert not cluster.run_dir(other_id).exists()


# --- 7. SIGTERM -------------------------------------------------------------------------------


async def test_sigterm_while_idle_exits_zero_at_once(cluster: Cluster) -> None:
    slow_drain = {"DURABERT_WORKER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "60"}
    workers = [cluster.start(role, **slow_drain) for role in ("orchestrator", "data", "gpu")]
    exits: dict[str, tuple[int, float]] = {}
    for worker in workers:
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.process is not None
        code = worker.process.wait(timeout=60)  # the process itself (its log pipe may outlive it)
        exits[worker.script] = (code, round(time.monotonic() - started, 2))
        worker.wait(timeout=10)
    print("idle SIGTERM exits:", exits)
    for code, seconds in exits.values():
        assert code == 0
        assert seconds < 5  # the 60 s drain allowance is not waited for when nothing runs


async def test_sigterm_while_training_checkpoints_then_exits_within_the_timeout(
    client: Client, cluster: Cluster, tiny_model_dir: Path
) -> None:
    from durabert.gpu_worker import checkpoints

    worker = cluster.start("gpu", DURABERT_WORKER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS="60")
    try:
        run_id = _run_id("term")
        handle = await cluster.start_run(client, cluster.config(run_id, tiny_model_dir, max_steps=5000))
        await wait_progress(handle, lambda p: p.step >= 7)
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.process is not None
        code = worker.process.wait(timeout=60)
        seconds = time.monotonic() - started
        worker.wait(timeout=10)
        stopped = worker.wait_for(lambda line: line.get("event") == "training stopped", timeout=5)
        # The training child's own line: the step it reached, and the newest complete checkpoint.
        reached = worker.wait_for(lambda line: line.get("event") == "training stopped on request", timeout=5)
        child = worker.wait_for(lambda line: line.get("event") == "training process started", timeout=5)
        await handle.terminate("test done")
    finally:
        worker.stop()
    print(f"SIGTERM while training: exit {code} after {seconds:.2f} s at step {reached['step']}")
    assert code == 0
    assert seconds < 60
    assert _process_gone(child["pid"])  # the worker took its training child with it
    assert stopped["checkpoint"] is not None
    assert checkpoints.is_complete(cluster.settings.artifact_dir / stopped["checkpoint"])
    # It stopped early (of 5000 steps) and saved where it stopped, not only at the last
    # periodic checkpoint (every 5 steps): the drain checkpoints on the way out, and that
    # checkpoint is the one the activity reports.
    assert 7 <= reached["step"] < 5000
    assert reached["checkpoint"]["step"] == reached["step"]
    assert Path(stopped["checkpoint"]).name == f"checkpoint-{reached['step']}"


# --- 2. the Temporal server goes away for 20 seconds -------------------------------------------

OUTAGE_SECONDS = 20


async def test_server_outage_mid_training_workers_reconnect_and_nothing_is_lost(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A server of its own (same database file across the restart): the session's is untouched.
    server = DevServer(tmp_path / "temporal", port=free_port())
    server.start()
    cluster = make_cluster(server.address, tmp_path / "cluster")
    try:
        workers = [cluster.start(role) for role in ("orchestrator", "data", "gpu")]
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        run_id = _run_id("outage")
        config = cluster.config(run_id, tiny_model_dir, max_steps=120, checkpoint_steps=10)
        handle = await cluster.start_run(client, config)
        before = await wait_progress(handle, lambda p: p.latest_checkpoint is not None)
        server.stop()
        down_at = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        server.start()
        outage = time.monotonic() - down_at
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        handle = client.get_workflow_handle(run_id, result_type=BertFineTuneResult)
        result = await asyncio.wait_for(handle.result(), timeout=240)
        progress = await progress_of(handle)
        alive = [worker.process is not None and worker.process.poll() is None for worker in workers]
        records = _history(cluster, run_id)
    finally:
        cluster.stop_all()
        server.stop()

    trained = steps_trained(records)
    print(
        f"outage {outage:.1f} s from step {before.step}: attempts {progress.attempt}, "
        f"steps trained {trained} of {config.max_steps}"
    )
    assert result.global_step == config.max_steps
    assert all(alive)  # the same three processes served before and after: they reconnected
    assert trained <= config.max_steps + config.checkpoint_steps
