"""Fixtures shared by the whole suite: a real Temporal dev server, clients, artifact roots.

Nothing here imports torch, transformers or datasets at module level, so the isolation
tests can run this conftest in the orchestrator's and data worker's own environments.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from durabert.orchestrator.devserver import DevServer, free_port
from durabert.shared.settings import DurabertSettings

if TYPE_CHECKING:
    from support.s3 import S3Server

# Worker-process fixtures (`cluster`, `gpu_worker`) shared by the e2e and reliability tests.
pytest_plugins = ["support.cluster"]


SLOW_FIRST: Final = ("reliability", "e2e", "gpu_worker", "deploy")
"""Folders of slow modules, longest first: those running whole worker processes lead."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slow modules first, the longest kinds first (stable otherwise).

    Under ``make test`` two xdist workers take whole modules in this order: the long process and
    reliability modules start at once and the many short ones fill the gaps, instead of one long
    module starting last while the other worker idles.
    """

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is None:
            return len(SLOW_FIRST)
        folder = item.path.parent.name
        return SLOW_FIRST.index(folder) if folder in SLOW_FIRST else len(SLOW_FIRST) - 1

    items.sort(key=rank)


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One real Temporal dev server for the session, on a free port."""
    server = DevServer(tmp_path_factory.mktemp("temporal"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def client(dev_server: DevServer) -> Client:
    """A client of the session's dev server with durabert's data converter."""
    return await Client.connect(dev_server.address, data_converter=pydantic_data_converter)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT folder (imports transformers only when a test asks for it)."""
    from support.tiny_model import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def artifact_root(tmp_path: Path) -> Path:
    """An empty artifact store for one test."""
    root = tmp_path / "artifacts"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def s3_server() -> "Iterator[S3Server]":
    """moto's S3 API on loopback for the session (``support.s3.S3Server``), for object-store roots."""
    from support.s3 import S3Server  # moto and boto3 exist only in the dev environment

    with S3Server() as server:
        yield server


@pytest.fixture
def s3_root(s3_server: "S3Server", monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh ``s3://<unique bucket>/artifacts`` root, with this test's ``AWS_*`` variables set."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.new_bucket(f"durabert-{uuid.uuid4().hex[:12]}") + "/artifacts"


@pytest.fixture
def queue_name() -> str:
    """A random task queue name, so tests never steal each other's tasks."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(dev_server: DevServer, artifact_root: Path, tmp_path: Path) -> DurabertSettings:
    """Settings pointing at the session's server and the test's artifact store."""
    return DurabertSettings(
        temporal={"address": dev_server.address},
        artifact_root=artifact_root,
        data_dir=tmp_path / "data",
    )


@pytest.fixture
def worker_env(dev_server: DevServer, artifact_root: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for worker subprocesses: this test's server and store, JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABERT_")}
    env.update(
        DURABERT_TEMPORAL__ADDRESS=dev_server.address,
        DURABERT_ARTIFACT_ROOT=str(artifact_root),
        DURABERT_DATA_DIR=str(tmp_path / "data"),
        DURABERT_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
    )
    return env
