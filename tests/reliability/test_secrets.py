"""Secrets (the Temporal API key, the TLS client key) never reach logs, histories or artifacts.

A whole pipeline runs with both secrets configured as a deployment would configure them:
the three workers as processes whose environment holds ``DURABERT_TEMPORAL__API_KEY`` and
``DURABERT_TEMPORAL__TLS_KEY_PATH`` (logging at DEBUG, the most talkative level), and the
``durabert`` CLI with the same settings. They reach the session's dev server through a mutual
TLS proxy on loopback (``support.tls``): the dev server speaks plain text only, and an API
key turns TLS on (``durabert.shared.client.tls_config``), so the key really travels, as a
gRPC ``authorization`` header the dev server ignores, and the client key really signs the
handshakes. Then every log line, the training workflow's history and what the server keeps of the
inference request (payloads decoded), every file under the artifact store and everything the CLI
printed are searched for the secrets.
"""

import asyncio
import base64
import io
import json
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from rich.console import Console
from temporalio.client import Client, WorkflowFailureError

from durabert.orchestrator.cli import Output, execute
from durabert.orchestrator.devserver import DevServer
from durabert.shared import names
from durabert.shared.client import connect_client
from durabert.shared.models import BertInferenceRequest, BertInferenceResult
from durabert.shared.settings import DurabertSettings
from support.load import LoadCluster
from support.tls import Pki, TlsProxy, make_pki, openssl_path

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY_MARKER_PREFIX = "durabert-client-key-marker-"


class Secrets:
    """The secret values of one test module and the strings whose presence would betray them."""

    def __init__(self, folder: Path, pki: Pki) -> None:
        self.api_key = f"durabert-api-key-{uuid.uuid4().hex}"
        self.key_marker = f"{KEY_MARKER_PREFIX}{uuid.uuid4().hex}"
        # The real client key with a unique marker line before it: PEM readers skip text
        # outside the BEGIN/END block, so the key still works, and a copy of the file's
        # content anywhere would carry the marker.
        pem = pki.client.key.read_text()
        self.key_path = folder / "client-key.pem"
        self.key_path.write_text(f"{self.key_marker}\n{pem}")
        self.key_path.chmod(0o600)
        body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        # The key's base64 lines one by one too: a log could hold a piece of the key.
        pieces = [line for line in body if len(line) >= 16]
        self.needles = [self.api_key, self.key_marker, "".join(body), *pieces]

    def found_in(self, texts: Iterable[str]) -> list[str]:
        """Which needles appear in any of the texts (empty: no secret there)."""
        return sorted({needle for text in texts for needle in self.needles if needle in text})


def _decoded(text: str) -> str | None:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except ValueError:
        return None  # not base64: it is scanned as it is


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, with base64 payload ``data`` fields decoded as well."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "data" and isinstance(item, str) and (decoded := _decoded(item)) is not None:
                yield decoded
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


async def _history_strings(client: Client, workflow_id: str) -> list[str]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return list(_strings(json.loads(history.to_json())))


async def _inference_activity_ids(client: Client, queue: str) -> set[str]:
    """Ids of the standalone inference activities on ``queue`` (visibility lags a little behind)."""
    query = f"ActivityType = '{names.RUN_BERT_INFERENCE}' AND TaskQueue = '{queue}'"
    for _ in range(50):
        ids = {execution.activity_id async for execution in client.list_activities(query)}
        if ids:
            return ids
        await asyncio.sleep(0.1)
    return set()


async def _activity_strings(client: Client, activity_id: str) -> list[str]:
    """Every string the server keeps of a standalone activity: its info, input and outcome."""
    handle = client.get_activity_handle(activity_id)
    described = await handle.describe(include_input=True, include_outcome=True)
    messages = [described.raw_info, described.raw_input, described.raw_outcome]
    return [text for message in messages if message is not None for text in _strings(_as_json(message))]


def _as_json(message: Message) -> Any:
    return json.loads(MessageToJson(message))


def _file_texts(root: Path) -> Iterator[str]:
    """The bytes of every file under ``root`` (binary files too), decoded leniently."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.read_bytes().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if openssl_path() is None:
        pytest.skip("the openssl tool is not installed")
    return make_pki(tmp_path_factory.mktemp("secrets-pki"), "durabert secrets test CA")


@pytest.fixture(scope="module")
def secrets(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    return Secrets(tmp_path_factory.mktemp("secrets"), pki)


@pytest.fixture(scope="module")
def mtls_proxy(dev_server: DevServer, pki: Pki) -> Iterator[TlsProxy]:
    with TlsProxy(dev_server.address, pki.server, client_ca=pki.ca.cert) as proxy:
        yield proxy


def _temporal_env(proxy: TlsProxy, pki: Pki, secrets: Secrets) -> dict[str, str]:
    return {
        "DURABERT_TEMPORAL__ADDRESS": proxy.address,
        "DURABERT_TEMPORAL__TLS_CA_PATH": str(pki.ca.cert),
        "DURABERT_TEMPORAL__TLS_CERT_PATH": str(pki.client.cert),
        "DURABERT_TEMPORAL__TLS_KEY_PATH": str(secrets.key_path),
        "DURABERT_TEMPORAL__TLS_SERVER_NAME": "localhost",
        "DURABERT_TEMPORAL__API_KEY": secrets.api_key,
    }


def _captured() -> Output:
    return Output(
        out=Console(file=io.StringIO(), width=200, color_system=None),
        err=Console(file=io.StringIO(), width=200, color_system=None),
    )


def _printed(output: Output) -> str:
    texts = []
    for console in (output.out, output.err):
        assert isinstance(console.file, io.StringIO)
        texts.append(console.file.getvalue())
    return "\n".join(texts)


def test_settings_never_show_the_api_key(secrets: Secrets, pki: Pki) -> None:
    settings = DurabertSettings(
        temporal={
            "address": "127.0.0.1:7233",
            "api_key": secrets.api_key,
            "tls_cert_path": pki.client.cert,
            "tls_key_path": secrets.key_path,
        }
    )
    assert settings.temporal.api_key is not None
    assert settings.temporal.api_key.get_secret_value() == secrets.api_key  # it is there...
    shown = [
        repr(settings),
        str(settings),
        repr(settings.temporal),
        settings.model_dump_json(),
        json.dumps(settings.model_dump(mode="json")),
        str(settings.model_dump()),
    ]
    assert secrets.found_in(shown) == []  # ...and never shown
    # The scan itself finds a secret where there is one.
    assert secrets.found_in([f"api_key={secrets.api_key}"]) == [secrets.api_key]
    assert secrets.key_marker in secrets.found_in([secrets.key_path.read_text()])


async def test_pipeline_with_secrets_leaves_them_in_no_log_history_or_artifact(
    dev_server: DevServer,
    mtls_proxy: TlsProxy,
    pki: Pki,
    secrets: Secrets,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    cluster = LoadCluster(mtls_proxy.address, tmp_path / "cluster", torch_threads=1)
    cluster.extra_env = _temporal_env(mtls_proxy, pki, secrets) | {"DURABERT_LOG_LEVEL": "DEBUG"}
    settings = DurabertSettings(
        temporal={
            "address": mtls_proxy.address,
            "tls_ca_path": pki.ca.cert,
            "tls_cert_path": pki.client.cert,
            "tls_key_path": secrets.key_path,
            "tls_server_name": "localhost",
            "api_key": secrets.api_key,
        },
        queues=cluster.queues,
        artifact_root=cluster.artifact_root,
        data_dir=cluster.data_dir,
    )
    run_id = f"secrets-{uuid.uuid4().hex[:6]}"
    config_file = tmp_path / "train.json"
    config_file.write_text(cluster.config(run_id, tiny_model_dir, max_steps=4).model_dump_json())
    handshakes = mtls_proxy.handshakes
    printed: list[str] = []
    try:
        cluster.start()
        # The user's path: the CLI, configured like the workers.
        for argv in (
            ["train", str(config_file), "--wait"],
            ["status", run_id, "--json"],
            ["infer", run_id, "the film was wonderful", "the story was dull", "--max-seq-length", "16"],
        ):
            output = _captured()
            code = await execute(argv, settings=settings, output=output)
            printed.append(_printed(output))
            assert code == 0, printed[-1]
        client = await connect_client(settings)
        histories = await _history_strings(client, run_id)
        # `durabert infer` starts a standalone activity: the server keeps its input and outcome.
        (inference_id,) = await _inference_activity_ids(client, cluster.queues["inference"])
        inference = await _activity_strings(client, inference_id)
        assert any("the film was wonderful" in text for text in inference)  # the scan reads the payloads
        histories += inference
    finally:
        cluster.stop()

    # Everything went through mutual TLS with the key (the dev server itself is plain text).
    assert mtls_proxy.handshakes > handshakes + 3
    worker_output = {role: "".join(worker.raw) for role, worker in cluster.workers.items()}
    assert '"training finished"' in worker_output["gpu"]  # the child's lines are in the scan too
    assert any('"level": "debug"' in text for text in worker_output.values())
    model_dir = cluster.artifact_root / "runs" / run_id / "model"
    assert (model_dir / "durabert-manifest.json").is_file()
    assert (cluster.artifact_root / "runs" / run_id / "history.jsonl").is_file()

    assert secrets.found_in(worker_output.values()) == [], "a worker logged a secret"
    assert secrets.found_in(histories) == [], "a workflow history holds a secret"
    assert secrets.found_in(_file_texts(cluster.artifact_root)) == [], "an artifact holds a secret"
    assert secrets.found_in(printed) == [], "the CLI printed a secret"


async def test_history_scan_sees_inside_payloads(client: Client, secrets: Secrets) -> None:
    # A control for the scan above: a secret sent in a workflow input is found in its history
    # (payloads are base64 in the history's JSON). The run does not exist, so it fails at once.
    workflow_id = f"secrets-control-{uuid.uuid4().hex[:8]}"
    queue = f"secrets-control-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        names.INFERENCE_WORKFLOW,
        BertInferenceRequest(run_id="no-such-run", texts=[secrets.api_key]),
        id=workflow_id,
        task_queue=queue,  # nobody polls it: the input is in the history anyway
        result_type=BertInferenceResult,
    )
    try:
        assert secrets.found_in(await _history_strings(client, workflow_id)) == [secrets.api_key]
    finally:
        await handle.terminate(reason="control finished")
    with pytest.raises(WorkflowFailureError):
        await handle.result()
