"""A real S3 API on loopback for tests and benchmarks: moto's server behind a switchable proxy.

Clients talk to :attr:`S3Server.endpoint_url`, a small TCP proxy in front of moto's in-process
server. Outages are made at the proxy: :meth:`S3Server.set_reachable` ``(False)`` closes the
listening socket *and* every open connection, so a client with pooled keep-alive connections
sees the outage too (stopping moto's werkzeug server would not: its handler threads keep
serving connections that are already open). moto keeps its buckets in this process, so
whatever was stored is still there when the endpoint comes back on the same port.

Worker processes started by a test reach the same server: give them :meth:`S3Server.env`.
"""

import contextlib
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import boto3
from moto.server import ThreadedMotoServer

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"
_PUMP_BYTES = 1 << 16


class _Proxy:
    """Forwards TCP connections from a loopback port to moto; can drop them all at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def listen(self) -> None:
        """Accept connections (on the same port as before, once one was chosen)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="s3-proxy").start()

    def drop(self) -> None:
        """Stop listening and cut every open connection (the endpoint refuses connections)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _close(connection)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # dropped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # dropped while this one was being accepted
                    _close(client)
                    _close(upstream)
                    return
                self._connections.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(_PUMP_BYTES):
                target.sendall(data)
        except OSError:
            pass  # one side closed or the proxy dropped it
        finally:
            _close(source)
            _close(target)
            with self._lock:
                self._connections.difference_update((source, target))


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class S3Server:
    """moto's S3 on 127.0.0.1 (a free port), with buckets, credentials and outages on demand.

    Use as a context manager::

        with S3Server() as server:
            root = server.new_bucket("durabert-test") + "/artifacts"
            env = server.env()  # for os.environ, monkeypatch or a worker process
    """

    def __init__(self) -> None:
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._proxy: _Proxy | None = None

    def __enter__(self) -> Self:
        # werkzeug logs every request at INFO, and moto (the server side, in this process) every
        # request with its signed headers at DEBUG: the tests' own logs are what matters, and a
        # test that searches them for the key id must not find the fake server's.
        for name in ("werkzeug", "moto"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._moto.start()
        _, moto_port = self._moto.get_host_and_port()
        self._proxy = _Proxy(moto_port)
        self._proxy.listen()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proxy is not None:
            self._proxy.drop()
        self._moto.stop()
        # ThreadedMotoServer.stop() shuts the accept loop down but leaves the socket bound.
        if self._moto._server is not None:
            self._moto._server.server_close()

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``: what ``AWS_ENDPOINT_URL`` points at."""
        assert self._proxy is not None, "use S3Server as a context manager"
        return f"http://127.0.0.1:{self._proxy.port}"

    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables that point botocore (and so s3fs) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            # Without keys botocore would otherwise probe the EC2 metadata service for seconds.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> object:
        """A boto3 S3 client of this server (credentials from :meth:`env`, not the process's)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def new_bucket(self, name: str) -> str:
        """Create a bucket (3-63 lowercase letters, digits, dots, hyphens) and return ``s3://name``."""
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return f"s3://{name}"

    def set_reachable(self, reachable: bool) -> None:
        """Refuse every connection (and cut open ones) or serve again, on the same port."""
        assert self._proxy is not None, "use S3Server as a context manager"
        if reachable:
            if self._proxy._listener is None:
                self._proxy.listen()
        else:
            self._proxy.drop()

    def outage(self, seconds: float) -> threading.Thread:
        """Make the endpoint unreachable now, and reachable again ``seconds`` later.

        Returns at once, with the endpoint already down; the returned thread brings it back
        (join it to wait for that).
        """
        self.set_reachable(False)

        def restore() -> None:
            time.sleep(seconds)
            self.set_reachable(True)

        thread = threading.Thread(target=restore, daemon=True, name="s3-outage")
        thread.start()
        return thread

    @contextlib.contextmanager
    def authentication(self) -> Iterator[None]:
        """Make moto check request signatures against its IAM users while the block runs.

        No IAM user exists, so every key is refused with ``InvalidAccessKeyId``, as AWS refuses
        an unknown or revoked key. moto keeps this switch per process: do not share the block
        with other tests' requests.
        """
        self._set_auth_count("0")
        try:
            yield
        finally:
            self._set_auth_count("inf")

    def _set_auth_count(self, count: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form type would hide the body from moto
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
