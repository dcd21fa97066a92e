"""Settings, artifact paths, logging and the worker runner."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from durabert.orchestrator.devserver import free_port
from durabert.shared.artifacts import ArtifactStore, write_json_atomic
from durabert.shared.client import TemporalUnreachableError, connect_client
from durabert.shared.logging import bind_run_id, configure_logging, get_logger
from durabert.shared.settings import DurabertSettings, unknown_env_vars
from support.processes import BIN_DIR, WorkerProcess


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DURABERT_TEMPORAL__ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("DURABERT_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("DURABERT_QUEUES__GPU", "gpu-a100")
    monkeypatch.setenv("DURABERT_ALLOWED_DATA_ROOTS", json.dumps([str(tmp_path / "d")]))
    settings = DurabertSettings()
    assert settings.temporal.address == "temporal.example:7233"
    assert settings.queues.gpu == "gpu-a100"
    assert settings.queues.data == "data-queue"
    assert settings.data_roots == [(tmp_path / "d").resolve()]


def test_unknown_variables_are_listed() -> None:
    env = {"DURABERT_TEMPORAL__ADRESS": "x", "DURABERT_LOG_LEVEL": "INFO", "HOME": "/root"}
    assert unknown_env_vars(DurabertSettings, env) == ["DURABERT_TEMPORAL__ADRESS"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DURABERT_TEMPORAL__ADDRESS", "no-port"),
        ("DURABERT_LOG_FORMAT", "xml"),
        ("DURABERT_GPU__MAX_CONCURRENT_ACTIVITIES", "0"),
        ("DURABERT_TEMPORAL__ADRESS", "localhost:7233"),
    ],
)
def test_worker_with_a_bad_setting_refuses_to_start(name: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABERT_")} | {name: value}
    result = subprocess.run(
        [str(BIN_DIR / "durabert-orchestrator-worker")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert name in result.stderr


def test_artifact_store_refuses_escapes(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.resolve("runs/r1/model") == tmp_path.resolve() / "runs/r1/model"
    assert store.relative(store.model_dir("r1")) == "runs/r1/model"
    with pytest.raises(ApplicationError, match="outside the artifact store"):
        store.resolve("../../etc/passwd")


def test_atomic_json_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"a": 1})

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_json_logs_carry_run_id_and_temporal_records(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    bind_run_id("run-42")
    get_logger("durabert.test").info("checkpoint saved", step=5)
    logging.getLogger("temporalio.activity").warning("from the sdk", extra={"temporal_activity": {"x": 1}})
    structlog.contextvars.clear_contextvars()
    get_logger("durabert.test").info("outside a run")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["event"] == "checkpoint saved"
    assert (lines[0]["run_id"], lines[0]["step"]) == ("run-42", 5)
    assert lines[1]["logger"] == "temporalio.activity"
    assert lines[1]["temporal_activity"] == {"x": 1}
    assert lines[1]["run_id"] == "run-42"
    assert "run_id" in lines[2]
    assert lines[2]["run_id"] is None


def test_debug_logging_keeps_object_store_clients_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "DEBUG")
    try:
        # botocore's DEBUG lines dump signed request headers: never passed on.
        logging.getLogger("botocore.endpoint").debug("Sending http request: Credential=AKIA")
        logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
        get_logger("durabert.test").debug("our own debug line")
        events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    finally:
        configure_logging("json", "INFO")
    assert events == ["Found credentials in environment variables.", "our own debug line"]


async def test_unreachable_server_names_the_address_and_setting() -> None:
    settings = DurabertSettings(temporal={"address": f"127.0.0.1:{free_port()}"})
    with pytest.raises(TemporalUnreachableError) as info:
        await connect_client(settings)
    assert settings.temporal.address in str(info.value)
    assert "DURABERT_TEMPORAL__ADDRESS" in str(info.value)


def test_worker_serves_health_and_drains_on_sigterm(worker_env: dict[str, str]) -> None:
    port = free_port()
    worker = WorkerProcess(
        "durabert-orchestrator-worker",
        worker_env | {"DURABERT_WORKER__HEALTH_PORT": str(port)},
    )
    try:
        worker.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
            assert json.loads(response.read()) == {"status": "ok"}
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        events = [line.get("event") for line in worker.lines]
        assert "stop signal received; draining" in events
        assert events[-1] == "worker stopped"
    finally:
        worker.stop()


def test_worker_exits_cleanly_on_sigint_too(worker_env: dict[str, str]) -> None:
    worker = WorkerProcess("durabert-orchestrator-worker", worker_env)
    try:
        worker.start()
        worker.signal(signal.SIGINT)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.stop()


def test_dev_server_cli_reports_status(tmp_path: Path) -> None:
    port = str(free_port())
    cli = [str(BIN_DIR / "durabert-dev-server")]
    args = ["--state-dir", str(tmp_path), "--port", port]
    assert subprocess.run([*cli, "status", *args], capture_output=True, timeout=30).returncode == 1
    started = subprocess.run([*cli, "start", *args], capture_output=True, text=True, timeout=60)
    try:
        assert f"127.0.0.1:{port}" in started.stdout
        assert subprocess.run([*cli, "status", *args], capture_output=True, timeout=30).returncode == 0
    finally:
        subprocess.run([*cli, "stop", *args], capture_output=True, timeout=60)
    assert subprocess.run([*cli, "status", *args], capture_output=True, timeout=30).returncode == 1
    assert (tmp_path / "temporal.db").exists()


def test_sys_executable_is_the_venv() -> None:
    # The console scripts the tests start must be this environment's.
    assert (BIN_DIR / "durabert-orchestrator-worker").exists(), sys.executable
    asyncio.get_event_loop_policy()  # keeps the import used on every Python


async def test_workers_send_heartbeats_every_few_seconds_not_at_the_sdk_throttle(client) -> None:
    from datetime import timedelta

    from durabert.shared.runner import WorkerSpec, build_worker

    settings = DurabertSettings.model_validate({"worker": {"heartbeat_interval_seconds": 1.5}})
    worker = build_worker(client, settings, WorkerSpec(role="gpu", task_queue="q", activities=[noop]))
    # Live training progress is heartbeat details: the SDK would otherwise hold them back for
    # 0.8 x the heartbeat timeout (48 s at the default of 60 s).
    assert worker.config()["max_heartbeat_throttle_interval"] == timedelta(seconds=1.5)
    assert DurabertSettings().worker.heartbeat_interval_seconds == 2.0


@activity.defn(name="noop")
async def noop() -> None:
    """An activity to register."""
