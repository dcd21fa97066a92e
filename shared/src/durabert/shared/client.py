"""Connecting to Temporal with durabert's data converter, TLS or API key, and metrics."""

from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from durabert.shared.settings import DurabertSettings, TemporalSettings


class TemporalUnreachableError(RuntimeError):
    """The Temporal service could not be reached; the message says where and how to change it."""


def tls_config(temporal: TemporalSettings) -> TLSConfig | bool:
    """Build the TLS configuration the settings ask for.

    Args:
        temporal: The Temporal section of the settings.

    Returns:
        A ``TLSConfig`` when certificates are configured, True for TLS with system CAs
        (asked for, or implied by an API key), False for plain text.
    """

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    if temporal.tls_ca_path or temporal.tls_cert_path or temporal.tls_server_name:
        return TLSConfig(
            server_root_ca_cert=read(temporal.tls_ca_path),
            client_cert=read(temporal.tls_cert_path),
            client_private_key=read(temporal.tls_key_path),
            domain=temporal.tls_server_name,
        )
    return temporal.tls or temporal.api_key is not None


def metrics_runtime(port: int | None) -> Runtime | None:
    """Build a Temporal runtime that serves Prometheus metrics on ``port``.

    Args:
        port: Port to bind on all interfaces, or None for no metrics.

    Returns:
        The runtime, or None to use the SDK's default runtime.
    """
    if port is None:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"0.0.0.0:{port}")))


async def connect_client(settings: DurabertSettings, *, runtime: Runtime | None = None) -> Client:
    """Connect to Temporal as the settings say.

    Args:
        settings: durabert settings (address, namespace, TLS, API key).
        runtime: Optional Temporal runtime (for metrics).

    Returns:
        A connected client using the Pydantic data converter.

    Raises:
        TemporalUnreachableError: When the server cannot be reached, naming the address
            tried and the setting that changes it.
    """
    temporal = settings.temporal
    try:
        return await Client.connect(
            temporal.address,
            namespace=temporal.namespace,
            data_converter=pydantic_data_converter,
            tls=tls_config(temporal),
            api_key=temporal.api_key.get_secret_value() if temporal.api_key else None,
            runtime=runtime,
        )
    except RuntimeError as exc:
        raise TemporalUnreachableError(
            f"cannot reach Temporal at {temporal.address} (namespace {temporal.namespace!r}): "
            f"{exc}. Start a local server with `make server-start`, or set "
            "DURABERT_TEMPORAL__ADDRESS (and DURABERT_TEMPORAL__TLS* / DURABERT_TEMPORAL__API_KEY)."
        ) from exc
