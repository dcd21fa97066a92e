"""The CLI against the real dev server, with fake workflows under the real type names.

Only the workflows and the fine-tuning activity are fakes (see ``fake_runs``): the CLI's
arguments, settings, client calls, queries, ``describe`` of the pending activity's heartbeat,
and output are the real ones.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_capture import Captured
from fake_runs import (
    CLAIMED_PREFIX,
    UNKNOWN_RUN,
    FakeTrainer,
    inference_worker,
    training_worker,
    workflow_worker,
)
from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from durabert.orchestrator import client_ops, demo
from durabert.orchestrator.cli import execute
from durabert.orchestrator.devserver import DevServer, free_port
from durabert.orchestrator.workflows import BertInferenceWorkflow
from durabert.shared import names
from durabert.shared.models import BertFineTuneConfig, BertFineTuneResult
from durabert.shared.settings import DurabertSettings, InferenceSettings

pytestmark = pytest.mark.integration

MAX_STEPS = 4


@pytest.fixture
def cli_settings(settings: DurabertSettings, queue_name: str) -> DurabertSettings:
    """The session server, with this test's random orchestrator queue."""
    queues = {"orchestrator": queue_name, "gpu": f"{queue_name}-gpu", "inference": f"{queue_name}-infer"}
    return settings.model_copy(update={"queues": settings.queues.model_copy(update=queues)})


@pytest.fixture
def trainer() -> FakeTrainer:
    """Drives the fake fine-tuning attempts of this test's runs."""
    return FakeTrainer()


@pytest.fixture
async def worker(
    client: Client, cli_settings: DurabertSettings, trainer: FakeTrainer
) -> AsyncIterator[Worker]:
    """Workers running the fake workflows and the fake fine-tuning on the test's queues."""
    queues = cli_settings.queues
    async with (
        workflow_worker(client, queues.orchestrator) as running,
        training_worker(client, queues.gpu, trainer),
        inference_worker(client, queues.inference),
    ):
        yield running


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A valid training config the fake workflow can finish."""
    path = tmp_path / "config.yaml"
    path.write_text(f"dataset_name: json\ndata_files: train.jsonl\nmax_steps: {MAX_STEPS}\n")
    return path


Cli = Callable[..., Awaitable[tuple[int, Captured]]]


@pytest.fixture
def cli(cli_settings: DurabertSettings) -> Cli:
    """Run one CLI command in-process; returns its exit code and captured output."""

    async def invoke(
        *argv: str, detach: asyncio.Event | None = None, output: Captured | None = None
    ) -> tuple[int, Captured]:
        captured = output or Captured()
        code = await execute(list(argv), cli_settings, output=captured, detach=detach)
        return code, captured

    return invoke


async def _printed(output: Captured, command: "asyncio.Task[Any]", text: str) -> None:
    while text not in output.stdout:
        assert not command.done(), f"the command ended before printing {text!r}: {output.stdout}"
        await asyncio.sleep(0.05)


def new_run_id() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


async def live_step(client: Client, run_id: str, step: int) -> None:
    """Wait until the server holds a heartbeat of ``step`` (read raw: the code under test is not used)."""
    while True:
        try:
            description = await client.get_workflow_handle(run_id).describe()
        except RPCError:  # not started yet
            await asyncio.sleep(0.05)
            continue
        for pending in description.raw_description.pending_activities:
            if pending.heartbeat_details.payloads:
                [details] = await client.data_converter.decode(pending.heartbeat_details.payloads)
                if details["step"] >= step:
                    return
        await asyncio.sleep(0.05)


async def drive(trainer: FakeTrainer, client: Client, run_id: str, steps: range) -> None:
    """Train the fake attempt step by step, each step visible before the next."""
    for step in steps:
        await trainer.step(run_id, step)
        if step < MAX_STEPS:
            await live_step(client, run_id, step)


async def test_train_status_and_completion(
    cli: Cli, client: Client, config_file: Path, trainer: FakeTrainer, worker: Worker
) -> None:
    run_id = new_run_id()
    code, out = await cli("train", str(config_file), "--run-id", run_id)
    assert code == 0, out.stderr
    assert f"started run {run_id}" in out.stdout
    assert f"/namespaces/default/workflows/{run_id}" in out.stdout
    # The workflow id is the run id, and the config reached the workflow with it.
    description = await client.get_workflow_handle(run_id).describe()
    assert description.workflow_type == names.TRAINING_WORKFLOW
    assert description.status == WorkflowExecutionStatus.RUNNING

    await drive(trainer, client, run_id, range(2, 3))
    code, out = await cli("status", run_id)
    assert code == 0, out.stderr
    assert f"run {run_id}: running" in out.stdout
    # Step, phase and checkpoint are the heartbeat's (the workflow's query says step 0);
    # preemptions and failures are the workflow's durable counters, shown apart.
    assert "training · step 2/4 (50%)" in out.stdout
    assert "latest checkpoint step 2" in out.stdout
    assert "preemptions 2 · failures 1" in out.stdout

    await drive(trainer, client, run_id, range(4, 5))
    await client.get_workflow_handle(run_id).result()
    code, out = await cli("status", run_id, "--json")
    assert code == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["status"] == "completed"
    assert status["result"]["global_step"] == MAX_STEPS
    assert status["result"]["run_id"] == run_id
    assert status["result"]["preemptions"] == 2
    assert status["result"]["failed_attempts"] == 1
    # Closed: no attempt is pending, so the progress is the workflow's answer alone.
    assert status["progress"]["stage"] == "completed"
    assert status["progress"]["phase"] is None
    assert status["workflow_answered"] is True


async def test_status_shows_the_live_heartbeat_not_only_the_query(
    cli: Cli, client: Client, config_file: Path, trainer: FakeTrainer, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    await drive(trainer, client, run_id, range(1, 4))
    handle = client.get_workflow_handle(run_id)
    # The durable view alone knows no step yet: a status built from the query alone fails below.
    assert (await client_ops.query_progress(handle)).step == 0  # type: ignore[union-attr]
    code, out = await cli("status", run_id, "--json")
    assert code == 0, out.stderr
    progress = json.loads(out.stdout)["progress"]
    assert progress["step"] == 3
    assert progress["phase"] == "training"
    assert progress["loss"] == pytest.approx(0.25)
    assert progress["latest_checkpoint"]["step"] == 2
    assert progress["preemptions"] == 2
    assert progress["failures"] == 1
    await handle.cancel()


async def test_train_wait_shows_progress_then_the_result(
    cli: Cli, client: Client, config_file: Path, trainer: FakeTrainer, worker: Worker
) -> None:
    run_id = new_run_id()

    async def train_it() -> None:
        # Wait for the CLI to have started the run, then train it step by step.
        while True:
            try:
                await client.get_workflow_handle(run_id).describe()
                break
            except Exception:
                await asyncio.sleep(0.05)
        await drive(trainer, client, run_id, range(1, MAX_STEPS + 1))

    driver = asyncio.create_task(train_it())
    code, out = await cli("train", str(config_file), "--run-id", run_id, "--wait", "--interval", "0.05")
    await driver
    assert code == 0, out.stderr
    # The live view showed a training step before the end (which step depends on when the
    # CLI's poll lands between the driver's steps).
    assert re.search(r"training · step [1-3]/4 \(\d+%\)", out.stdout), out.stdout
    assert f"run {run_id} completed" in out.stdout
    assert "global step" in out.stdout
    assert "eval_accuracy" in out.stdout
    assert "never resumed" in out.stdout
    assert re.search(r"^preemptions\s+2\s*$", out.stdout, re.MULTILINE)
    assert re.search(r"^failed attempts\s+1\s*$", out.stdout, re.MULTILINE)


async def test_watch_json_prints_only_json_on_stdout(
    cli: Cli, client: Client, config_file: Path, trainer: FakeTrainer, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    watcher = asyncio.create_task(cli("watch", run_id, "--json", "--interval", "0.05"))
    await drive(trainer, client, run_id, range(1, MAX_STEPS + 1))
    code, out = await watcher
    assert code == 0, out.stderr
    assert json.loads(out.stdout)["global_step"] == MAX_STEPS
    assert "step" in out.stderr  # the progress lines went to stderr


async def test_watch_shows_live_steps_from_the_heartbeat(
    cli: Cli, client: Client, config_file: Path, trainer: FakeTrainer, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    watched = Captured()
    watcher = asyncio.create_task(cli("watch", run_id, "--interval", "0.05", output=watched))
    await drive(trainer, client, run_id, range(1, 4))
    # Step 3 is on screen before the run ends: only the heartbeat carries it (the query says 0).
    await asyncio.wait_for(_printed(watched, watcher, "training · step 3/4 (75%)"), timeout=60)
    await drive(trainer, client, run_id, range(4, 5))
    code, out = await watcher
    assert code == 0, out.stderr
    assert "preemptions 2 · failures 1" in out.stdout
    assert f"run {run_id} completed" in out.stdout


async def test_ctrl_c_detaches_and_the_run_goes_on(
    cli: Cli, client: Client, config_file: Path, worker: Worker
) -> None:
    run_id = new_run_id()
    detach = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, detach.set)
    code, out = await cli(
        "train", str(config_file), "--run-id", run_id, "--wait", "--interval", "0.05", detach=detach
    )
    assert code == 0, out.stderr
    assert f"detached; the run goes on: durabert watch {run_id}" in out.stdout
    description = await client.get_workflow_handle(run_id).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    await client.get_workflow_handle(run_id).cancel()


async def test_second_start_of_a_running_run_is_refused(
    cli: Cli, client: Client, config_file: Path, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    code, out = await cli("train", str(config_file), "--run-id", run_id)
    assert code == 1
    assert f"run {run_id} is already running; watch it with `durabert watch {run_id}`" in out.stderr
    await client.get_workflow_handle(run_id).cancel()


async def test_cancel_then_status_and_cancel_again(
    cli: Cli, client: Client, config_file: Path, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    code, out = await cli("cancel", run_id, "--wait")
    assert code == 0, out.stderr
    assert f"run {run_id} is canceled" in out.stdout
    assert (await client.get_workflow_handle(run_id).describe()).status == WorkflowExecutionStatus.CANCELED

    code, out = await cli("status", run_id)
    assert code == 0
    assert f"run {run_id}: canceled" in out.stdout
    code, out = await cli("cancel", run_id)
    assert code == 1
    assert f"run {run_id} is already canceled; nothing to cancel" in out.stderr


async def test_failed_run_shows_its_error(
    cli: Cli, client: Client, config_file: Path, trainer: FakeTrainer, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    watcher = asyncio.create_task(cli("watch", run_id, "--interval", "0.05"))
    await trainer.fail(run_id, "learning_rate: too high")
    code, out = await watcher
    assert code == 1
    assert f"run {run_id} failed: InvalidInputError: learning_rate: too high" in out.stderr
    code, out = await cli("status", run_id)
    assert code == 0
    assert f"run {run_id}: failed" in out.stdout
    assert "error: InvalidInputError: learning_rate: too high" in out.stderr


@pytest.mark.parametrize("command", ["status", "watch", "cancel"])
async def test_unknown_run_is_named(cli: Cli, command: str) -> None:
    run_id = new_run_id()
    code, out = await cli(command, run_id)
    assert code == 1
    assert out.stderr.strip() == f"no run named {run_id}"


async def test_runs_lists_recent_training_runs(
    cli: Cli, client: Client, config_file: Path, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    # Visibility is eventually consistent: give the listing a moment to catch up.
    for _ in range(50):
        code, out = await cli("runs", "--json", "--limit", "5")
        listed = {item["run_id"]: item for item in json.loads(out.stdout)}
        if run_id in listed:
            break
        await asyncio.sleep(0.1)
    assert code == 0
    assert listed[run_id]["status"] == "running"
    assert len(listed) <= 5
    code, out = await cli("runs")
    assert run_id in out.stdout
    await client.get_workflow_handle(run_id).cancel()


async def test_infer_prints_a_table_and_json(cli: Cli, worker: Worker, tmp_path: Path) -> None:
    code, out = await cli("infer", "run-1", "a good film", "a dull film")
    assert code == 0, out.stderr
    assert "positive" in out.stdout
    assert "0.900" in out.stdout
    assert "negative" in out.stdout

    texts = tmp_path / "texts.txt"
    texts.write_text("good\nbad\n\nbad again\n")
    code, out = await cli("infer", "run-1", "--file", str(texts), "--json")
    assert code == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["predicted_label_names"] == ["positive", "negative", "negative"]


@pytest.mark.parametrize("route", ["activity", "workflow"])
async def test_infer_failure_is_reported(cli_settings: DurabertSettings, worker: Worker, route: str) -> None:
    settings = cli_settings.model_copy(update={"inference": InferenceSettings(route=route)})
    output = Captured()
    code = await execute(["infer", UNKNOWN_RUN, "text"], settings, output=output)
    assert code == 1
    failed = f"inference with run {UNKNOWN_RUN} failed: ArtifactNotFoundError: no model for run"
    assert failed in output.stderr


async def test_infer_by_workflow_gives_the_same_answer(
    cli_settings: DurabertSettings, worker: Worker
) -> None:
    answers = []
    for route in ("activity", "workflow"):
        settings = cli_settings.model_copy(update={"inference": InferenceSettings(route=route)})
        output = Captured()
        argv = ["infer", "run-1", "a good film", "dull", "--json"]
        assert await execute(argv, settings, output=output) == 0
        answers.append(json.loads(output.stdout))
    assert answers[0] == answers[1]
    assert answers[0]["predicted_label_names"] == ["positive", "negative"]


@pytest.mark.parametrize("route", ["activity", "workflow"])
async def test_infer_with_no_gpu_worker_fails_with_the_queue_timeout(
    cli_settings: DurabertSettings, client: Client, route: str
) -> None:
    settings = cli_settings.model_copy(
        update={"inference": InferenceSettings(route=route, queue_timeout_seconds=1)}
    )
    output = Captured()
    # The real inference workflow runs (for the workflow route); nothing polls the inference queue.
    async with Worker(client, task_queue=settings.queues.orchestrator, workflows=[BertInferenceWorkflow]):
        command = execute(["infer", "run-1", "text"], settings, output=output)
        code = await asyncio.wait_for(command, timeout=60)
    assert code == 1
    queue = settings.queues.inference
    assert f"no GPU worker took the request from task queue {queue!r} within 1 s" in output.stderr
    assert "DURABERT_INFERENCE__QUEUE_TIMEOUT_SECONDS" in output.stderr


async def test_infer_by_workflow_with_no_orchestrator_worker_times_out(
    cli_settings: DurabertSettings,
) -> None:
    settings = cli_settings.model_copy(
        update={"inference": InferenceSettings(route="workflow", queue_timeout_seconds=1)}
    )
    output = Captured()
    code = await asyncio.wait_for(
        execute(["infer", "run-1", "text", "--timeout-seconds", "5"], settings, output=output), timeout=60
    )
    assert code == 1
    assert "the inference workflow did not finish within 7 s" in output.stderr
    assert f"orchestrator worker polling task queue {settings.queues.orchestrator!r}" in output.stderr


def _cli_process(env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    code = "from durabert.orchestrator.cli import run; run()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABERT_")}
    env.update(extra, PYTHONUNBUFFERED="1", DURABERT_LOG_FORMAT="json")
    return env


def test_unreachable_server_names_the_address_and_the_setting() -> None:
    address = f"127.0.0.1:{free_port()}"
    process = _cli_process(_env(DURABERT_TEMPORAL__ADDRESS=address), "runs")
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    # One line naming both the address and the setting (never hard-wrapped for a pipe).
    assert any(
        f"cannot reach Temporal at {address}" in line and "DURABERT_TEMPORAL__ADDRESS" in line
        for line in stderr.splitlines()
    ), stderr
    assert "Traceback" not in stderr
    assert stdout == ""


def test_bad_setting_exits_2_naming_the_variable() -> None:
    process = _cli_process(_env(DURABERT_TEMPORAL__ADRESS="x:1"), "runs")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "DURABERT_TEMPORAL__ADRESS: not a durabert setting" in stderr


async def test_sigint_while_watching_detaches_the_real_process(
    client: Client,
    dev_server: DevServer,
    queue_name: str,
    config_file: Path,
    trainer: FakeTrainer,
    worker: Worker,
) -> None:
    run_id = new_run_id()
    env = _env(
        DURABERT_TEMPORAL__ADDRESS=dev_server.address,
        DURABERT_QUEUES__ORCHESTRATOR=queue_name,
        DURABERT_QUEUES__GPU=f"{queue_name}-gpu",
    )
    process = _cli_process(env, "train", str(config_file), "--run-id", run_id, "--wait", "--interval", "0.1")
    try:
        handle = client.get_workflow_handle(run_id)
        # Progress is being shown once a driven step shows up in the CLI's output.
        for _ in range(200):
            try:
                await handle.describe()
                break
            except Exception:
                await asyncio.sleep(0.1)
        await drive(trainer, client, run_id, range(1, 2))
        assert process.stdout is not None
        # Bounded: a CLI that never shows progress fails the test (and is killed below), not hangs it.
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=60)
        while "step 1/4" not in line:
            assert line, "the CLI ended before showing progress"
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=60)
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert f"detached; the run goes on: durabert watch {run_id}" in stdout
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    await handle.cancel()


async def test_status_and_watch_without_an_orchestrator_worker(
    cli: Cli, client: Client, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No worker polls this test's queue: the run exists, but nobody answers its queries.
    monkeypatch.setattr(client_ops, "QUERY_TIMEOUT", timedelta(seconds=0.3))
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    code, out = await cli("status", run_id)
    assert code == 0, out.stderr
    assert f"run {run_id}: running" in out.stdout
    assert (
        "progress: no answer from the workflow; is an orchestrator worker polling queue test-" in out.stdout
    )

    detach = asyncio.Event()
    # Long enough for several timed-out queries even on a loaded machine.
    asyncio.get_running_loop().call_later(2.0, detach.set)
    code, out = await cli("watch", run_id, "--interval", "0.05", detach=detach)
    assert code == 0
    assert "waiting for the orchestrator worker to answer" in out.stdout
    assert "detached" in out.stdout
    await client.get_workflow_handle(run_id).terminate()


async def _started_config(client: Client, run_id: str) -> BertFineTuneConfig:
    """The config the newest execution of ``run_id`` was started with (its history's first event)."""
    history = await client.get_workflow_handle(run_id).fetch_history()
    payloads = history.events[0].workflow_execution_started_event_attributes.input.payloads
    [config] = await client.data_converter.decode(payloads, [BertFineTuneConfig])
    assert isinstance(config, BertFineTuneConfig)
    return config


async def test_a_closed_run_id_is_refused_unless_continued(
    cli: Cli, client: Client, config_file: Path, trainer: FakeTrainer, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    assert (await _started_config(client, run_id)).continue_run is False
    await drive(trainer, client, run_id, range(1, MAX_STEPS + 1))
    await client.get_workflow_handle(run_id).result()

    code, out = await cli("train", str(config_file), "--run-id", run_id)
    assert code == 1
    message = out.stderr.replace("\n", " ")
    assert f"run_id {run_id} is in use: an earlier run with this id is completed" in message
    assert "another --run-id" in message
    assert f"--run-id {run_id} --continue" in message
    assert "Traceback" not in out.stderr
    # Refused by the client itself: the completed execution is still the newest one.
    description = await client.get_workflow_handle(run_id).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED

    code, out = await cli("train", str(config_file), "--run-id", run_id, "--continue")
    assert code == 0, out.stderr
    assert f"started run {run_id} (continuing the earlier run with this id)" in out.stdout
    assert (await _started_config(client, run_id)).continue_run is True
    await client.get_workflow_handle(run_id).cancel()


async def test_continue_of_a_running_run_is_still_refused(
    cli: Cli, client: Client, config_file: Path, worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    code, out = await cli("train", str(config_file), "--run-id", run_id, "--continue")
    assert code == 1
    assert f"run {run_id} is already running" in out.stderr
    await client.get_workflow_handle(run_id).cancel()


async def test_the_workflows_run_id_refusal_is_reported_cleanly(
    cli: Cli, client: Client, config_file: Path, worker: Worker
) -> None:
    # Temporal has forgotten the earlier run (no closed execution), but its artifacts remain:
    # the workflow's claim refuses the id with RunIdInUseError.
    run_id = new_run_id().replace("cli-", CLAIMED_PREFIX)
    code, out = await cli("train", str(config_file), "--run-id", run_id, "--wait", "--interval", "0.05")
    assert code == 1
    assert (
        f"run {run_id} refused: RunIdInUseError: run_id {run_id} holds an earlier run's artifacts"
        in out.stderr
    )
    assert f"--run-id {run_id} --continue" in out.stderr
    code, out = await cli("status", run_id, "--json")
    assert code == 0
    assert json.loads(out.stdout)["error_type"] == "RunIdInUseError"


async def test_status_without_an_orchestrator_worker_shows_the_live_heartbeat(
    cli: Cli,
    client: Client,
    cli_settings: DurabertSettings,
    config_file: Path,
    trainer: FakeTrainer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_ops, "QUERY_TIMEOUT", timedelta(seconds=0.3))
    run_id = new_run_id()
    queues = cli_settings.queues
    async with training_worker(client, queues.gpu, trainer):
        async with workflow_worker(client, queues.orchestrator):
            assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
            await drive(trainer, client, run_id, range(1, 4))
        # The workflow worker is gone: no query is answered, yet the attempt goes on.
        code, out = await cli("status", run_id)
        assert code == 0, out.stderr
        assert "training · step 3/4 (75%)" in out.stdout
        assert "progress: live figures only; no answer from the workflow" in out.stdout
        await client.get_workflow_handle(run_id).terminate()


class GpuStandIn:
    """Stands in for the demo's worker processes: a ``sleep`` per GPU worker, to be SIGKILLed."""

    def __init__(self) -> None:
        self.running = {"gpu": subprocess.Popen(["sleep", "600"])}
        self.started: list[str] = []

    def start(self, role: str, tag: str = "") -> subprocess.Popen[bytes]:
        self.started.append(role + tag)
        self.running[role] = subprocess.Popen(["sleep", "600"])
        return self.running[role]


async def _killed(preemption: demo.Preemption, running: "asyncio.Task[Any]") -> None:
    while preemption.killed_at is None:
        assert not running.done(), running
        await asyncio.sleep(0.05)


async def test_the_demo_is_a_client_like_the_cli(
    client: Client,
    cli_settings: DurabertSettings,
    trainer: FakeTrainer,
    worker: Worker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_id = new_run_id()
    config = BertFineTuneConfig(dataset_name="json", data_files="x.jsonl", max_steps=MAX_STEPS, run_id=run_id)
    stand_in = GpuStandIn()
    first_gpu = stand_in.running["gpu"]
    preemption = demo.Preemption(stand_in, armed=True)  # type: ignore[arg-type]
    try:
        running = asyncio.create_task(demo.train_and_infer(client, cli_settings, config, preemption))
        await drive(trainer, client, run_id, range(1, 3))
        # The first checkpoint (step 2) is only in the attempt's heartbeat, never in the query
        # answer: the demo sees it, kills "the GPU worker" and starts a fresh one.
        await asyncio.wait_for(_killed(preemption, running), timeout=60)
        assert first_gpu.wait() == -signal.SIGKILL
        assert stand_in.started == ["gpu-2"]
        await drive(trainer, client, run_id, range(3, MAX_STEPS + 1))
        result, prediction, _, _ = await running
    finally:
        for process in (first_gpu, *stand_in.running.values()):
            process.kill()
            process.wait()
    assert result.global_step == MAX_STEPS
    # The fake inference workflow, reached through the CLI's run_inference (queue and memo).
    assert prediction.texts == demo.DEMO_SENTENCES
    assert prediction.predicted_label_names == ["negative"] * len(demo.DEMO_SENTENCES)
    shown = capsys.readouterr().out
    assert "training · step 2/4 (50%)" in shown  # durabert watch's progress line
    assert client_ops.web_ui_url(cli_settings, run_id) in shown
    # Started with durabert train's id policies: the closed run's id is refused.
    with pytest.raises(client_ops.RunIdInUseError, match=f"run_id {run_id} is in use"):
        await demo.train_and_infer(client, cli_settings, config, demo.Preemption(stand_in, armed=False))  # type: ignore[arg-type]


@workflow.defn(name=names.TRAINING_WORKFLOW)
class EndsOtherwiseWhenCancelled:
    """A training run that sees the cancellation and completes (or fails) instead of ending cancelled."""

    @workflow.run
    async def run(self, config: BertFineTuneConfig) -> BertFineTuneResult:
        """Wait for the cancellation, then finish the way the config's ``dataset_name`` says."""
        try:
            await workflow.wait_condition(lambda: False)
        except asyncio.CancelledError:
            if config.dataset_name == "fails":
                raise ApplicationError("disk full", type="ArtifactWriteError", non_retryable=True) from None
        assert config.run_id is not None
        return BertFineTuneResult(
            run_id=config.run_id, config=config, train_loss=0.1, training_time_seconds=1.0,
            num_parameters=1, total_checkpoints_saved=1, global_step=4, attempts=1, device="cpu",
            model_path=f"runs/{config.run_id}/model",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("dataset", "said"),
    [("completes", "ended completed first"), ("fails", "ended failed first: ArtifactWriteError: disk full")],
)
async def test_cancel_wait_fails_when_the_run_ends_otherwise(
    cli: Cli, client: Client, cli_settings: DurabertSettings, tmp_path: Path, dataset: str, said: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"dataset_name: {dataset}\nmax_steps: 4\n")
    run_id = new_run_id()
    async with Worker(
        client,
        task_queue=cli_settings.queues.orchestrator,
        workflows=[EndsOtherwiseWhenCancelled],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        assert (await cli("train", str(config), "--run-id", run_id))[0] == 0
        code, out = await cli("cancel", run_id, "--wait")
    assert code == 1, out.stdout
    assert f"run {run_id} was not cancelled: it {said}" in out.stderr
    assert "is canceled" not in out.stdout
