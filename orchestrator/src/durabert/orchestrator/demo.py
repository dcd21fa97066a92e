"""``make demo``: the whole product on one machine, with a forced GPU-worker crash and resume.

Starts a local Temporal server and the three workers as separate processes, fetches the
Rotten Tomatoes snippets, fine-tunes the packaged all-MiniLM-L6-v2 on them, SIGKILLs the GPU
worker after its first checkpoint and starts a fresh one, shows the run resume, runs
inference, prints the figures, and stops everything it started, by PID.

It drives the processes and the Temporal client only; no ML library is imported here.
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml
from temporalio.client import Client, WorkflowHandle

from durabert.orchestrator.devserver import DevServer
from durabert.shared import names
from durabert.shared.client import connect_client
from durabert.shared.models import (
    BertFineTuneConfig,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    TrainingProgress,
)
from durabert.shared.settings import DurabertSettings

DEMO_SENTENCES = [
    "A warm, funny and beautifully acted film that stays with you.",
    "The plot is a mess and the jokes fall flat.",
    "An instant classic: I would watch it again tomorrow.",
    "Two hours of my life I will never get back.",
]
BIN_DIR = Path(sys.executable).parent
WORKER_SCRIPTS = {
    "orchestrator": "durabert-orchestrator-worker",
    "data": "durabert-data-worker",
    "gpu": "durabert-gpu-worker",
}


def demo_config(data_file: Path, run_id: str) -> BertFineTuneConfig:
    """The demo's training run: a few hundred steps of MiniLM, a couple of minutes on 2 cores.

    Args:
        data_file: The JSONL written by the demo data step.
        run_id: The run's id.

    Returns:
        The config.
    """
    return BertFineTuneConfig(
        run_id=run_id,
        dataset_name="json",
        data_files=str(data_file),
        text_field="sentence",
        label_field="label",
        max_train_samples=4000,
        max_eval_samples=600,
        max_steps=200,
        batch_size=16,
        max_seq_length=64,
        learning_rate=1e-4,
        checkpoint_steps=40,
        heartbeat_timeout_seconds=10,
        max_attempts=4,
        timeouts={"retry_initial_interval_seconds": 1.0},
    )


@dataclass
class Processes:
    """The worker processes the demo started, so it can stop exactly those."""

    env: dict[str, str]
    log_dir: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, role: str, tag: str = "") -> subprocess.Popen[bytes]:
        """Start one worker role; its JSON log goes to ``<log_dir>/<role><tag>.log``."""
        log = (self.log_dir / f"{role}{tag}.log").open("wb")
        self.logs.append(log)
        process = subprocess.Popen(
            [str(BIN_DIR / WORKER_SCRIPTS[role])], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.running[role] = process
        return process

    def stop_all(self) -> None:
        """SIGTERM every worker, wait for it to drain, SIGKILL what does not stop."""
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


def say(message: str) -> None:
    """Print one line of the demo's narration."""
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fetch_data(data_dir: Path) -> Path:
    """Run the data worker's demo data step (downloads a pinned sdist from the package index)."""
    subprocess.run(
        [sys.executable, "-m", "durabert.data_worker.demo_data", "--data-dir", str(data_dir)], check=True
    )
    return data_dir / "vader_movie_reviews.jsonl"


async def wait_for_workers(client: Client, settings: DurabertSettings, timeout: float = 120) -> None:
    """Wait until each task queue has a poller, so the run starts on live workers."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    wanted = [
        (settings.queues.orchestrator, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
        (settings.queues.data, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
        (settings.queues.gpu, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
    ]
    deadline = time.monotonic() + timeout
    for queue, kind in wanted:
        while True:
            response = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
                )
            )
            if response.pollers:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no worker polls {queue}; see the worker logs")
            await asyncio.sleep(0.5)


async def follow(
    handle: WorkflowHandle[object, BertFineTuneResult],
    processes: Processes,
    kill: bool,
) -> tuple[BertFineTuneResult, float | None]:
    """Print progress until the run ends; SIGKILL the GPU worker after its first checkpoint.

    Returns:
        The result and the time the kill happened (None without a kill).
    """
    killed_at: float | None = None
    last = ""
    task = asyncio.ensure_future(handle.result())
    while not task.done():
        progress = await handle.query(names.GET_PROGRESS_QUERY, result_type=TrainingProgress)
        line = (
            f"{progress.stage}: step {progress.step}/{progress.max_steps or '?'}"
            f" loss {progress.loss if progress.loss is None else round(progress.loss, 4)}"
            f" checkpoints {progress.checkpoints_saved} attempt {progress.attempt}"
            f" resumes {progress.resumes}"
        )
        if line != last:
            say(line)
            last = line
        if kill and killed_at is None and progress.latest_checkpoint is not None:
            gpu = processes.running["gpu"]
            say(
                f"checkpoint at step {progress.latest_checkpoint.step} is complete: "
                f"SIGKILL the GPU worker (pid {gpu.pid}) to simulate a preempted node"
            )
            gpu.send_signal(signal.SIGKILL)
            gpu.wait()
            killed_at = time.monotonic()
            fresh = processes.start("gpu", tag="-2")
            say(f"started a fresh GPU worker (pid {fresh.pid}); the dead one is noticed by its heartbeat")
        await asyncio.wait({task}, timeout=1.0)
    return task.result(), killed_at


async def run_demo(kill: bool, state_dir: Path, data_dir: Path) -> int:
    """Run the whole demo and return the exit code."""
    started = time.monotonic()
    server = DevServer(state_dir / "temporal", port=7233, ui_port=8233)
    artifact_root = state_dir / "artifacts"
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    data_file = fetch_data(data_dir)
    say(f"demo data: {data_file}")

    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABERT_")}
    env |= {
        "DURABERT_TEMPORAL__ADDRESS": server.address,
        "DURABERT_ARTIFACT_ROOT": str(artifact_root),
        "DURABERT_DATA_DIR": str(data_dir),
        "DURABERT_LOG_FORMAT": "json",
        "DURABERT_WORKER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "20",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    settings = DurabertSettings(
        temporal={"address": server.address}, artifact_root=artifact_root, data_dir=data_dir
    )
    processes = Processes(env=env, log_dir=log_dir)
    pid = server.start()
    say(f"Temporal dev server up at {server.address} (pid {pid}), Web UI http://127.0.0.1:8233")
    try:
        for role in WORKER_SCRIPTS:
            process = processes.start(role)
            say(f"started {WORKER_SCRIPTS[role]} (pid {process.pid}), log {log_dir / (role + '.log')}")
        client = await connect_client(settings)
        await wait_for_workers(client, settings)

        run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        config = demo_config(data_file, run_id)
        config_file = state_dir / "demo.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
        say(f"training run {run_id} (config {config_file}; re-run with `durabert train {config_file}`)")
        train_started = time.monotonic()
        handle: WorkflowHandle[object, BertFineTuneResult] = await client.start_workflow(
            names.TRAINING_WORKFLOW,
            config,
            id=run_id,
            task_queue=settings.queues.orchestrator,
            memo=settings.queue_memo(),
            result_type=BertFineTuneResult,
        )
        result, killed_at = await follow(handle, processes, kill)
        train_seconds = time.monotonic() - train_started

        infer_started = time.monotonic()
        prediction = await client.execute_workflow(
            names.INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id=run_id, texts=DEMO_SENTENCES, max_seq_length=64),
            id=f"infer-{run_id}",
            task_queue=settings.queues.orchestrator,
            memo=settings.queue_memo(),
            result_type=BertInferenceResult,
        )
        infer_seconds = time.monotonic() - infer_started
        report(result, prediction, artifact_root, train_seconds, infer_seconds, killed_at is not None)
        say(
            f"total {time.monotonic() - started:.0f} s; Web UI http://127.0.0.1:8233/namespaces/default/workflows/{run_id}"
        )
        return 0
    finally:
        say("stopping the workers and the Temporal server (by PID)")
        processes.stop_all()
        server.stop()


def report(
    result: BertFineTuneResult,
    prediction: BertInferenceResult,
    artifact_root: Path,
    train_seconds: float,
    infer_seconds: float,
    killed: bool,
) -> None:
    """Print the demo's figures: accuracy, resume step, timings, predictions, artifacts."""
    metrics = result.eval_metrics or {}
    say("---- result ----")
    say(f"eval accuracy        {metrics.get('eval_accuracy', float('nan')):.3f}")
    say(f"eval loss            {metrics.get('eval_loss', float('nan')):.4f}")
    say(f"global step          {result.global_step} (planned {result.config.max_steps})")
    say(f"resumed from step    {result.resumed_from_step} (worker killed: {'yes' if killed else 'no'})")
    say(f"attempts             {result.attempts}; device {result.device}")
    say(f"training wall time   {train_seconds:.1f} s (workflow, snapshot included)")
    say(f"inference wall time  {infer_seconds:.2f} s for {len(prediction.texts)} texts")
    model_dir = artifact_root / result.model_path
    say(f"model                {model_dir}")
    say(f"loss curve           {model_dir / 'loss_curve.png'}")
    for text, name, confidence in zip(
        prediction.texts, prediction.predicted_label_names, prediction.confidences, strict=True
    ):
        say(f"  {name:>8} {confidence:.2f}  {text}")


def main() -> None:
    """Entry point of ``python -m durabert.orchestrator.demo``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kill", type=int, default=1, help="1: SIGKILL the GPU worker mid-run (default)")
    parser.add_argument("--state-dir", type=Path, default=Path(".state/demo"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args()
    code = asyncio.run(run_demo(bool(args.kill), args.state_dir.resolve(), args.data_dir.resolve()))
    sys.stdout.flush()
    os._exit(code)  # skip the SDK's fragile interpreter teardown (sdk-python issue 300)


if __name__ == "__main__":
    main()
