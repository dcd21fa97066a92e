"""``make demo``: the whole product on one machine, with a forced GPU-worker crash and resume.

Starts a local Temporal server and the three workers as separate processes, fetches the
Rotten Tomatoes snippets, fine-tunes the packaged all-MiniLM-L6-v2 on them, SIGKILLs the GPU
worker once a checkpoint is complete and starts a fresh one, shows the run resume, runs
inference, prints the figures, and stops everything it started, by PID. With ``--store s3``
the artifacts live in a bucket of a local S3 API instead of a shared folder
(:mod:`~durabert.orchestrator.demo_store`), and each worker works in a folder of its own.

The demo is a client like any other: it starts the run, follows it and runs inference with
the same functions and progress view as ``durabert train``, ``durabert watch`` and
``durabert infer`` (:mod:`~durabert.orchestrator.client_ops`, :mod:`~durabert.orchestrator.progress`),
so what it shows is what a user gets. It drives processes and the Temporal client only; no ML
library, and no other role's package, is imported here.
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import IO

import yaml
from rich.console import Console
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from durabert.orchestrator import client_ops, inference_ops, progress
from durabert.orchestrator.client_ops import DEV_SERVER_UI_PORT, LiveProgress
from durabert.orchestrator.config_file import build_inference_request
from durabert.orchestrator.demo_store import DemoStore, StoreKind, local_store, s3_store
from durabert.orchestrator.devserver import DevServer
from durabert.orchestrator.run_ids import generate_run_id
from durabert.shared.cli_support import exit_now
from durabert.shared.client import connect_client
from durabert.shared.models import BertFineTuneConfig, BertFineTuneResult, BertInferenceResult
from durabert.shared.settings import DurabertSettings

DEMO_SENTENCES = [
    "A warm, funny and beautifully acted film that stays with you.",
    "The plot is a mess and the jokes fall flat.",
    "An instant classic: I would watch it again tomorrow.",
    "Two hours of my life I will never get back.",
]
"""Texts classified with the trained model at the end."""
WORKER_DISTRIBUTIONS = {
    "orchestrator": "durabert-orchestrator",
    "data": "durabert-data-worker",
    "gpu": "durabert-gpu-worker",
}
"""The distribution of each worker role; its console script is looked up in its metadata."""
POLL_INTERVAL = 1.0
"""Seconds between progress reads (``durabert watch``'s default)."""


def demo_config(data_source: Path | str, run_id: str) -> BertFineTuneConfig:
    """The demo's training run: a few hundred steps of MiniLM, a couple of minutes on 2 cores.

    Args:
        data_source: The JSONL written by the demo data step, or its ``s3://`` copy.
        run_id: The run's id.

    Returns:
        The config.
    """
    return BertFineTuneConfig(
        run_id=run_id,
        dataset_name="json",
        data_files=str(data_source),
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


def worker_script(role: str) -> Path:
    """Find a worker role's console script, as its package declares it (``<pkg>.worker:main``).

    Args:
        role: ``orchestrator``, ``data`` or ``gpu``.

    Returns:
        The executable beside this interpreter.

    Raises:
        RuntimeError: The role's package is not installed (run ``make setup``).
    """
    try:
        scripts = distribution(WORKER_DISTRIBUTIONS[role]).entry_points.select(group="console_scripts")
    except PackageNotFoundError:
        raise RuntimeError(f"{WORKER_DISTRIBUTIONS[role]} is not installed; run `make setup`") from None
    [script] = [entry for entry in scripts if entry.value.endswith(".worker:main")]
    return Path(sys.executable).parent / script.name


@dataclass
class Processes:
    """The worker processes the demo started, so it can stop exactly those."""

    env: dict[str, str]
    """Environment of every worker (the demo's server, store and log format)."""
    log_dir: Path
    """Folder of the workers' JSON logs."""
    work_root: Path | None = None
    """Set: each process gets ``DURABERT_WORK_DIR=<work_root>/<role><tag>``, a folder of its own."""
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """The newest process of each role."""
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """Every process started, the killed ones included."""
    logs: list[IO[bytes]] = field(default_factory=list)
    """Open log files, closed at the end."""

    def start(self, role: str, tag: str = "") -> subprocess.Popen[bytes]:
        """Start one worker role; its JSON log goes to ``<log_dir>/<role><tag>.log``."""
        log_path = self.log_dir / f"{role}{tag}.log"
        log = log_path.open("wb")
        self.logs.append(log)
        script = worker_script(role)
        env = dict(self.env)
        if self.work_root is not None:
            env["DURABERT_WORK_DIR"] = str(self.work_root / f"{role}{tag}")
        process = subprocess.Popen([str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.running[role] = process
        self.started.append(process)
        say(f"started {script.name} (pid {process.pid}), log {log_path}")
        return process

    def stop_all(self) -> None:
        """SIGTERM every worker, wait for it to drain, SIGKILL what does not stop."""
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
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
    """Run the data worker's demo data step; it names the file it wrote.

    The step is the data worker's code (it downloads a pinned sdist from the package index):
    it runs in a process of its own, as the workers do, so this package imports no other role.

    Args:
        data_dir: The data folder.

    Returns:
        The JSONL the step wrote (or found valid).
    """
    code = (
        "import sys, pathlib\n"
        "from durabert.data_worker.demo_data import fetch\n"
        "print(fetch(pathlib.Path(sys.argv[1]))[0])"
    )
    # stdout carries the path; pip's and the step's messages go on to the terminal (stderr).
    done = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(done.stdout.strip().splitlines()[-1])


async def wait_for_workers(client: Client, settings: DurabertSettings, timeout: float = 120) -> None:
    """Wait until each task queue has a poller, so the run starts on live workers."""
    wanted = [
        (settings.queues.orchestrator, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
        (settings.queues.data, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
        (settings.queues.gpu, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
    ]
    deadline = time.monotonic() + timeout
    for queue, kind in wanted:
        request = DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
        while not (await client.workflow_service.describe_task_queue(request)).pollers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no worker polls {queue}; see the worker logs")
            await asyncio.sleep(0.5)


@dataclass
class Preemption:
    """SIGKILLs the GPU worker once the run has a complete checkpoint, then starts a fresh one."""

    processes: Processes
    """Where the GPU worker runs."""
    armed: bool
    """Whether to kill at all (``make demo KILL=0`` does not)."""
    killed_at: float | None = None
    """``time.monotonic()`` of the kill."""

    def __call__(self, reading: LiveProgress) -> None:
        """Look at one progress reading (the live heartbeat carries the newest checkpoint)."""
        latest = reading.progress.latest_checkpoint if reading.progress else None
        if not self.armed or self.killed_at is not None or latest is None:
            return
        gpu = self.processes.running["gpu"]
        say(
            f"checkpoint at step {latest.step} is complete: "
            f"SIGKILL the GPU worker (pid {gpu.pid}) to simulate a preempted node"
        )
        gpu.send_signal(signal.SIGKILL)
        gpu.wait()
        self.killed_at = time.monotonic()
        self.processes.start("gpu", tag="-2")
        say("the dead worker is noticed by its missed heartbeats; the run resumes on the fresh one")


def demo_settings(
    server: DevServer, store: DemoStore, data_dir: Path
) -> tuple[DurabertSettings, dict[str, str]]:
    """The client's settings and the workers' environment: the demo's server, store and data."""
    artifact_root = store.artifact_root
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABERT_")}
    env |= store.env
    data_roots = store.allowed_data_roots()
    if data_roots is not None:
        env["DURABERT_ALLOWED_DATA_ROOTS"] = data_roots
    env |= {
        "DURABERT_TEMPORAL__ADDRESS": server.address,
        "DURABERT_ARTIFACT_ROOT": artifact_root,
        "DURABERT_DATA_DIR": str(data_dir),
        "DURABERT_LOG_FORMAT": "json",
        "DURABERT_WORKER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "20",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    settings = DurabertSettings(
        temporal={"address": server.address}, artifact_root=artifact_root, data_dir=data_dir
    )
    return settings, env


async def train_and_infer(
    client: Client, settings: DurabertSettings, config: BertFineTuneConfig, preemption: Preemption
) -> tuple[BertFineTuneResult, BertInferenceResult, float, float]:
    """Start the run, follow it with ``durabert watch``'s view, then classify the demo sentences.

    Returns:
        The training result, the predictions, and the training and inference wall times.
    """
    assert config.run_id is not None
    started = time.monotonic()
    await client_ops.start_training(client, settings, config)
    say(f"Temporal Web UI: {client_ops.web_ui_url(settings, config.run_id)}")
    outcome = await progress.watch(
        client,
        config.run_id,
        Console(),
        interval=POLL_INTERVAL,
        detach=asyncio.Event(),
        on_progress=preemption,
    )
    if outcome.result is None:
        raise RuntimeError(f"run {config.run_id} {outcome.status}: {outcome.error}")
    train_seconds = time.monotonic() - started
    request = build_inference_request(config.run_id, DEMO_SENTENCES, max_seq_length=config.max_seq_length)
    started = time.monotonic()
    prediction = await inference_ops.run_inference(client, settings, request)
    return outcome.result, prediction, train_seconds, time.monotonic() - started


async def run_demo(kill: bool, state_dir: Path, data_dir: Path, store_kind: StoreKind = "local") -> int:
    """Run the whole demo and return the exit code."""
    started = time.monotonic()
    server = DevServer(state_dir / "temporal", port=7233, ui_port=DEV_SERVER_UI_PORT)
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    data_file = fetch_data(data_dir)
    say(f"demo data: {data_file}")
    with ExitStack() as stack:
        store = stack.enter_context(s3_store()) if store_kind == "s3" else local_store(state_dir)
        data_source = store.data_source(data_file)
        if store.is_remote:
            say(f"artifact store {store.artifact_root} on a local S3 API; demo data at {data_source}")
        settings, env = demo_settings(server, store, data_dir)
        work_root = state_dir / "work" if store.is_remote else None
        processes = Processes(env=env, log_dir=log_dir, work_root=work_root)
        say(f"Temporal dev server up at {server.address} (pid {server.start()})")
        stack.callback(server.stop)
        stack.callback(processes.stop_all)
        stack.callback(say, "stopping the workers and the Temporal server (by PID)")
        for role in WORKER_DISTRIBUTIONS:
            processes.start(role)
        client = await connect_client(settings)
        await wait_for_workers(client, settings)
        config = demo_config(data_source, generate_run_id())
        config_file = state_dir / "demo.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
        say(
            f"training run {config.run_id} (config {config_file}; re-run with `durabert train {config_file}`)"
        )
        preemption = Preemption(processes, armed=kill)
        figures = await train_and_infer(client, settings, config, preemption)
        report(*figures, store, killed=preemption.killed_at is not None)
        say(f"total {time.monotonic() - started:.0f} s")
    return 0


def report(
    result: BertFineTuneResult,
    prediction: BertInferenceResult,
    train_seconds: float,
    infer_seconds: float,
    store: DemoStore,
    *,
    killed: bool,
) -> None:
    """Print the run's result and predictions as ``durabert`` does, then the demo's own figures."""
    console = Console()
    say("---- result (as `durabert status` shows it) ----")
    console.print(progress.result_table(result))
    say("---- predictions (as `durabert infer` shows them) ----")
    console.print(progress.predictions_table(prediction))
    say(f"worker killed        {'yes' if killed else 'no'}; resumed from step {result.resumed_from_step}")
    say(f"training wall time   {train_seconds:.1f} s (workflow, snapshot included)")
    say(f"inference wall time  {infer_seconds:.2f} s for {len(prediction.texts)} texts")
    where, files = store.model_files(result.model_path)
    say(f"model folder         {where}: {', '.join(files) or '-'}")
    metrics = store.read_metrics(result.model_path)
    if metrics is not None:
        say(f"metrics.json         read back from the store: {' '.join(metrics.split())}")


def main() -> None:
    """Entry point of ``python -m durabert.orchestrator.demo``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kill", type=int, default=1, help="1: SIGKILL the GPU worker mid-run (default)")
    parser.add_argument("--state-dir", type=Path, default=Path(".state/demo"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument(
        "--store",
        choices=["local", "s3"],
        default="local",
        help="local: artifacts in <state-dir>/artifacts (default); s3: in a bucket of a local S3 API",
    )
    args = parser.parse_args()
    run = run_demo(bool(args.kill), args.state_dir.resolve(), args.data_dir.resolve(), args.store)
    exit_now(asyncio.run(run))


if __name__ == "__main__":
    main()
