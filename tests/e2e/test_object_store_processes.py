"""The three roles as separate processes that share no folder, only an S3 bucket.

Every worker process has its own ``DURABERT_WORK_DIR`` and the artifact root is ``s3://...`` on
a real S3 API server (moto): the data worker reads the dataset from the bucket and uploads the
snapshot; a GPU worker is SIGKILLed after its first checkpoint (a dead node, its disk gone with
it); a second GPU worker with an empty work dir resumes from the newest checkpoint complete in the
bucket; a third, fresh one answers inference from the model it downloads.
"""

import asyncio
import base64
import io
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console
from temporalio.client import Client

from durabert.orchestrator.cli import Output, execute
from durabert.orchestrator.devserver import DevServer
from durabert.orchestrator.inference_ops import run_inference
from durabert.shared.models import BertFineTuneResult, BertInferenceRequest
from durabert.shared.object_store import ObjectStore
from support.cluster import Cluster, make_cluster, steps_trained
from support.processes import WorkerProcess
from support.s3 import S3Server

pytestmark = pytest.mark.slow

SECRET_KEY = f"durabert-secret-access-key-{uuid.uuid4().hex}"
"""The workers' AWS secret key: it must appear in no log line, history, object or local file."""


@pytest.fixture(scope="module")
def bucket_cluster(
    dev_server: DevServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, str]]:
    """A cluster whose artifact root and data are in one fresh bucket; no worker started yet."""
    bucket = s3_server.new_bucket(f"e2e-{uuid.uuid4().hex[:8]}")
    cluster = make_cluster(
        dev_server.address,
        tmp_path_factory.mktemp("bucket-cluster"),
        artifact_root=f"{bucket}/artifacts",
        DURABERT_ALLOWED_DATA_ROOTS=json.dumps([f"{bucket}/data"]),
        # A secret key of its own (moto checks no signatures here), so the test can look for it.
        **(s3_server.env() | {"AWS_SECRET_ACCESS_KEY": SECRET_KEY, "DURABERT_LOG_LEVEL": "DEBUG"}),
    )
    data_url = f"{bucket}/data/reviews.jsonl"
    s3_server.client().put_object(  # type: ignore[attr-defined]
        Bucket=bucket.removeprefix("s3://"), Key="data/reviews.jsonl", Body=cluster.data_file.read_bytes()
    )
    cluster.data_file.unlink()  # nothing local to fall back on: the run must read the bucket
    try:
        yield cluster, data_url
    finally:
        cluster.stop_all()


def _start(cluster: Cluster, role: str, name: str) -> tuple[Path, WorkerProcess]:
    """Start a role with a work dir of its own (no folder in common with any other worker)."""
    work_dir = cluster.log_dir.parent / "work" / name
    return work_dir, cluster.start(role, DURABERT_WORK_DIR=str(work_dir))


async def test_roles_on_separate_machines_resume_and_serve_through_the_bucket(
    client: Client,
    bucket_cluster: tuple[Cluster, str],
    s3_server: S3Server,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from durabert.gpu_worker import history

    cluster, data_url = bucket_cluster
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = ObjectStore(cluster.settings.artifact_root)
    _start(cluster, "orchestrator", "orchestrator")
    _start(cluster, "data", "data")
    _, first = _start(cluster, "gpu", "gpu-first")
    run_id = f"bucket-{uuid.uuid4().hex[:6]}"
    config = cluster.config(run_id, tiny_model_dir, data_files=data_url, max_steps=200, checkpoint_steps=20)
    handle = await cluster.start_run(client, config)

    # A checkpoint is reported only once it is complete in the bucket; then the node dies.
    saved = await asyncio.to_thread(first.wait_for, lambda line: line.get("event") == "checkpoint saved", 120)
    first.signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert store.is_complete(saved["path"])

    _, second = _start(cluster, "gpu", "gpu-second")
    result: BertFineTuneResult = await asyncio.wait_for(handle.result(), timeout=240)

    assert result.global_step == config.max_steps
    assert result.attempts == 2
    # Resumed on an empty disk from the bucket, at or after the checkpoint seen before the kill.
    assert result.resumed_from_step is not None
    assert result.resumed_from_step >= saved["step"]
    assert store.is_complete(result.model_path)
    downloaded = history.read(_download(store, f"runs/{run_id}", tmp_path))
    assert steps_trained(downloaded) <= config.max_steps + config.checkpoint_steps

    # A third machine, never part of the run, serves the model it fetches from the bucket.
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    third_dir, _ = _start(cluster, "gpu", "gpu-third")
    request = BertInferenceRequest(run_id=run_id, texts=["great film", "dull and slow"], use_gpu=False)
    predictions = await asyncio.wait_for(run_inference(client, cluster.settings, request), timeout=120)

    assert len(predictions.predicted_label_names) == 2
    assert set(predictions.predicted_label_names) <= set(predictions.label_names)
    assert (third_dir / "artifacts" / result.model_path / "config.json").is_file()
    assert not (third_dir / "artifacts" / "runs" / run_id / "checkpoints").exists()
    # The store's secret key is nowhere a user or an operator could read it.
    events = await handle.fetch_history()
    texts = [("workflow history", _decoded_payloads(json.loads(events.to_json())))]
    texts.append(("durabert status", await _cli_output(cluster, "status", run_id)))
    texts += _readable_texts(cluster, s3_server)
    assert [where for where, text in texts if SECRET_KEY in text] == []


async def _cli_output(cluster: Cluster, *argv: str) -> str:
    """What ``durabert ARGV`` prints (both streams), run in-process with the cluster's settings."""
    output = Output(
        out=Console(file=io.StringIO(), width=200, color_system=None),
        err=Console(file=io.StringIO(), width=200, color_system=None),
    )
    assert await execute(list(argv), settings=cluster.settings, output=output) == 0
    return "\n".join(cast(io.StringIO, console.file).getvalue() for console in (output.out, output.err))


def _decoded_payloads(value: Any) -> str:
    """A JSON value as text, with every base64 payload ``data`` field decoded as well."""
    if isinstance(value, dict):
        parts = [_decoded_payloads(item) for item in value.values()]
        data = value.get("data")
        if isinstance(data, str):
            parts.append(base64.b64decode(data + "==").decode("utf-8", "replace"))
        return "\n".join(parts)
    if isinstance(value, list):
        return "\n".join(_decoded_payloads(item) for item in value)
    return str(value)


def _readable_texts(cluster: Cluster, s3_server: S3Server) -> list[tuple[str, str]]:
    """Every worker's log, every file of every work dir and every object of the bucket, as text."""
    texts = [(f"log of {worker.script}", "".join(worker.raw)) for worker in cluster.workers]
    for path in (cluster.log_dir.parent / "work").rglob("*"):
        if path.is_file():
            texts.append((str(path), path.read_bytes().decode("utf-8", "replace")))
    s3: Any = s3_server.client()
    bucket = cluster.settings.artifact_root.removeprefix("s3://").split("/", 1)[0]
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    ]
    assert any(key.endswith("/model/model.safetensors") for key in keys), keys
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        texts.append((f"object {key}", body.decode("utf-8", "replace")))
    return texts


def _download(store: ObjectStore, run_key: str, folder: Path) -> Path:
    """Fetch a run's ``history.jsonl`` from the bucket into ``folder``."""
    from durabert.gpu_worker import history

    data = store.read_bytes(f"{run_key}/{history.HISTORY_FILE}")
    assert data is not None, "the run's history is not in the bucket"
    (folder / history.HISTORY_FILE).write_bytes(data)
    return folder
