"""The CLI against the real dev server, with fake workflows under the real type names.

Only the workflows are fakes (see ``fake_workflows``): the CLI's arguments, settings,
client calls, queries, signals and output are the real ones.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cli_capture import Captured
from fake_workflows import FAIL_SIGNAL, FAKE_WORKFLOWS, UNKNOWN_RUN, checkpoint
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from durabert.orchestrator import client_ops
from durabert.orchestrator.cli import execute
from durabert.orchestrator.devserver import DevServer, free_port
from durabert.shared import names
from durabert.shared.settings import DurabertSettings

pytestmark = pytest.mark.integration

MAX_STEPS = 4


@pytest.fixture
def cli_settings(settings: DurabertSettings, queue_name: str) -> DurabertSettings:
    """The session server, with this test's random orchestrator queue."""
    return settings.model_copy(
        update={"queues": settings.queues.model_copy(update={"orchestrator": queue_name})}
    )


@pytest.fixture
async def fake_worker(client: Client, queue_name: str) -> AsyncIterator[Worker]:
    """A worker running the fake workflows on the test's queue."""
    async with Worker(client, task_queue=queue_name, workflows=FAKE_WORKFLOWS) as worker:
        yield worker


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

    async def invoke(*argv: str, detach: asyncio.Event | None = None) -> tuple[int, Captured]:
        captured = Captured()
        code = await execute(list(argv), cli_settings, output=captured, detach=detach)
        return code, captured

    return invoke


def new_run_id() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


async def signal_steps(client: Client, run_id: str, steps: range, pause: float = 0.0) -> None:
    handle = client.get_workflow_handle(run_id)
    for step in steps:
        await handle.signal(names.UPDATE_CHECKPOINT_SIGNAL, checkpoint(step, max_steps=MAX_STEPS))
        await asyncio.sleep(pause)


async def test_train_status_and_completion(
    cli: Cli, client: Client, config_file: Path, fake_worker: Worker
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

    await signal_steps(client, run_id, range(2, 3))
    code, out = await cli("status", run_id)
    assert code == 0, out.stderr
    assert f"run {run_id}: running" in out.stdout
    assert "training · step 2/4 (50%)" in out.stdout
    assert "checkpoints 1 (latest step 2)" in out.stdout

    await signal_steps(client, run_id, range(4, 5))
    await client.get_workflow_handle(run_id).result()
    code, out = await cli("status", run_id, "--json")
    assert code == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["status"] == "completed"
    assert status["result"]["global_step"] == MAX_STEPS
    assert status["result"]["run_id"] == run_id
    assert status["progress"]["stage"] == "completed"


async def test_train_wait_shows_progress_then_the_result(
    cli: Cli, client: Client, config_file: Path, fake_worker: Worker
) -> None:
    run_id = new_run_id()

    async def drive() -> None:
        # Wait for the CLI to have started the run, then train it step by step.
        while True:
            try:
                await client.get_workflow_handle(run_id).describe()
                break
            except Exception:
                await asyncio.sleep(0.05)
        await signal_steps(client, run_id, range(1, MAX_STEPS + 1), pause=0.15)

    driver = asyncio.create_task(drive())
    code, out = await cli("train", str(config_file), "--run-id", run_id, "--wait", "--interval", "0.05")
    await driver
    assert code == 0, out.stderr
    assert "training · step 1/4 (25%)" in out.stdout
    assert f"run {run_id} completed" in out.stdout
    assert "global step" in out.stdout
    assert "eval_accuracy" in out.stdout
    assert "never resumed" in out.stdout


async def test_watch_json_prints_only_json_on_stdout(
    cli: Cli, client: Client, config_file: Path, fake_worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    watcher = asyncio.create_task(cli("watch", run_id, "--json", "--interval", "0.05"))
    await signal_steps(client, run_id, range(1, MAX_STEPS + 1), pause=0.05)
    code, out = await watcher
    assert code == 0, out.stderr
    assert json.loads(out.stdout)["global_step"] == MAX_STEPS
    assert "step" in out.stderr  # the progress lines went to stderr


async def test_ctrl_c_detaches_and_the_run_goes_on(
    cli: Cli, client: Client, config_file: Path, fake_worker: Worker
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
    cli: Cli, client: Client, config_file: Path, fake_worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    code, out = await cli("train", str(config_file), "--run-id", run_id)
    assert code == 1
    assert f"run {run_id} is already running; watch it with `durabert watch {run_id}`" in out.stderr
    await client.get_workflow_handle(run_id).cancel()


async def test_cancel_then_status_and_cancel_again(
    cli: Cli, client: Client, config_file: Path, fake_worker: Worker
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
    cli: Cli, client: Client, config_file: Path, fake_worker: Worker
) -> None:
    run_id = new_run_id()
    assert (await cli("train", str(config_file), "--run-id", run_id))[0] == 0
    watcher = asyncio.create_task(cli("watch", run_id, "--interval", "0.05"))
    await asyncio.sleep(0.3)
    await client.get_workflow_handle(run_id).signal(FAIL_SIGNAL, "learning_rate: too high")
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
    cli: Cli, client: Client, config_file: Path, fake_worker: Worker
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


async def test_infer_prints_a_table_and_json(cli: Cli, fake_worker: Worker, tmp_path: Path) -> None:
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


async def test_infer_failure_is_reported(cli: Cli, fake_worker: Worker) -> None:
    code, out = await cli("infer", UNKNOWN_RUN, "text")
    assert code == 1
    assert f"inference with run {UNKNOWN_RUN} failed: ArtifactNotFoundError: no model for run" in out.stderr


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
    client: Client, dev_server: DevServer, queue_name: str, config_file: Path, fake_worker: Worker
) -> None:
    run_id = new_run_id()
    env = _env(DURABERT_TEMPORAL__ADDRESS=dev_server.address, DURABERT_QUEUES__ORCHESTRATOR=queue_name)
    process = _cli_process(env, "train", str(config_file), "--run-id", run_id, "--wait", "--interval", "0.1")
    try:
        handle = client.get_workflow_handle(run_id)
        # Progress is being shown once a signalled step shows up in the CLI's output.
        for _ in range(200):
            try:
                await handle.describe()
                break
            except Exception:
                await asyncio.sleep(0.1)
        await signal_steps(client, run_id, range(1, 2))
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        while "step 1/4" not in line:
            assert line, "the CLI ended before showing progress"
            line = await asyncio.to_thread(process.stdout.readline)
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
    assert "progress: no answer; is an orchestrator worker polling queue test-" in out.stdout

    detach = asyncio.Event()
    # Long enough for several timed-out queries even on a loaded machine.
    asyncio.get_running_loop().call_later(2.0, detach.set)
    code, out = await cli("watch", run_id, "--interval", "0.05", detach=detach)
    assert code == 0
    assert "waiting for the orchestrator worker to answer" in out.stdout
    assert "detached" in out.stdout
    await client.get_workflow_handle(run_id).terminate()
