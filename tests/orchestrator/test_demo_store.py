"""``make demo STORE=s3``'s plumbing, fast: the store, the workers' environment, a work folder per process.

The whole demo takes minutes (docs/demo.md has a run); these tests check the parts that decide
where artifacts go without training anything: ``STORE=local`` gives the workers exactly the
environment it always did, and ``STORE=s3`` a bucket on a local S3 API, the data uploaded there,
and a work folder of its own for every process.
"""

import json
import os
import stat
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from durabert.orchestrator import demo
from durabert.orchestrator.demo_store import DEMO_BUCKET, local_store, s3_store
from durabert.orchestrator.devserver import DevServer
from durabert.shared.settings import DurabertSettings, unknown_env_vars


def _server(tmp_path: Path) -> DevServer:
    return DevServer(tmp_path / "temporal", port=7233)


def test_the_local_demo_shares_one_artifact_folder_as_before(tmp_path: Path) -> None:
    store = local_store(tmp_path / "state")
    settings, env = demo.demo_settings(_server(tmp_path), store, tmp_path / "data")
    assert env["DURABERT_ARTIFACT_ROOT"] == str(tmp_path / "state" / "artifacts")
    assert settings.artifact_dir == tmp_path / "state" / "artifacts"
    # Exactly the variables the demo always set; nothing of the object store's.
    assert {name for name in env if name.startswith("DURABERT_")} == {
        "DURABERT_TEMPORAL__ADDRESS",
        "DURABERT_ARTIFACT_ROOT",
        "DURABERT_DATA_DIR",
        "DURABERT_LOG_FORMAT",
        "DURABERT_WORKER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS",
    }
    assert {name for name in env if name.startswith("AWS_")} == {
        name for name in os.environ if name.startswith("AWS_")
    }
    data_file = tmp_path / "data" / "reviews.jsonl"
    assert store.data_source(data_file) == str(data_file)
    model = tmp_path / "state" / "artifacts" / "runs" / "r1" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert store.model_files("runs/r1/model") == (str(model), ["config.json"])
    assert store.read_metrics("runs/r1/model") is None


def test_the_s3_demo_uploads_its_data_and_reads_the_model_back_from_the_bucket(tmp_path: Path) -> None:
    data_file = tmp_path / "reviews.jsonl"
    data_file.write_text('{"sentence": "good", "label": "positive"}\n')
    model = tmp_path / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "metrics.json").write_text(json.dumps({"eval_accuracy": 0.83}))
    (model / "tokenizer" / "vocab.txt").write_text("[PAD]\n")
    run = f"runs/{uuid.uuid4().hex[:8]}/model"  # moto's buckets outlive a server in this process
    with s3_store() as store:
        endpoint = store.env["AWS_ENDPOINT_URL"]
        assert store.artifact_root == f"s3://{DEMO_BUCKET}/artifacts"
        source = store.data_source(data_file)
        assert source == f"s3://{DEMO_BUCKET}/data/reviews.jsonl"
        assert store.data is not None
        assert store.data.read_bytes("reviews.jsonl") == data_file.read_bytes()
        assert store.artifacts is not None
        assert store.model_files(run) == (f"{store.artifact_root}/{run}", [])
        store.artifacts.upload_folder(model, run)
        assert store.model_files(run) == (
            f"{store.artifact_root}/{run}",
            ["metrics.json", "tokenizer"],
        )
        assert json.loads(store.read_metrics(run) or "") == {"eval_accuracy": 0.83}
    # The demo stops the server it started.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(endpoint, timeout=5)


def test_the_s3_demo_gives_the_workers_the_store_and_its_data_prefix(tmp_path: Path) -> None:
    with s3_store() as store:
        settings, env = demo.demo_settings(_server(tmp_path), store, tmp_path / "data")
    assert env["DURABERT_ARTIFACT_ROOT"] == f"s3://{DEMO_BUCKET}/artifacts"
    assert settings.artifact_url == f"s3://{DEMO_BUCKET}/artifacts"
    assert json.loads(env["DURABERT_ALLOWED_DATA_ROOTS"]) == [f"s3://{DEMO_BUCKET}/data"]
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert env["AWS_ACCESS_KEY_ID"]
    assert env["AWS_SECRET_ACCESS_KEY"]
    # A worker refuses an unknown or bad DURABERT_* variable at start-up: these all parse.
    durabert_env = {name: value for name, value in env.items() if name.startswith("DURABERT_")}
    assert unknown_env_vars(DurabertSettings, durabert_env) == []
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("DURABERT_"):
                patch.delenv(name)
        for name, value in durabert_env.items():
            patch.setenv(name, value)
        assert DurabertSettings().artifact_url == f"s3://{DEMO_BUCKET}/artifacts"


WORKERS = ("data", "gpu", "gpu-2")
"""Each stand-in's log name (and work folder)."""


def test_each_worker_process_gets_a_work_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in worker that writes down the work folder it was given.
    script = tmp_path / "worker"
    script.write_text('#!/bin/sh\necho "$DURABERT_WORK_DIR"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(demo, "worker_script", lambda role: script)
    processes = demo.Processes(
        env={"PATH": "/usr/bin:/bin"},
        log_dir=tmp_path,
        work_root=tmp_path / "work",
    )
    for role, tag in (("data", ""), ("gpu", ""), ("gpu", "-2")):
        processes.start(role, tag=tag).wait(timeout=30)
    processes.stop_all()
    work_dirs = [(tmp_path / log).read_text().strip() for log in ("data.log", "gpu.log", "gpu-2.log")]
    assert work_dirs == [str(tmp_path / "work" / name) for name in WORKERS]
    # The local demo sets none: the workers keep today's default.
    shared = demo.Processes(env={"PATH": "/usr/bin:/bin"}, log_dir=tmp_path / "local")
    (tmp_path / "local").mkdir()
    shared.start("data").wait(timeout=30)
    shared.stop_all()
    assert (tmp_path / "local" / "data.log").read_text().strip() == ""  # no folder of its own
