"""Worker processes started by their console scripts, as in production, for end-to-end tests."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN_DIR = Path(sys.executable).parent


class WorkerProcess:
    """One worker console script running in its own process, with its JSON log lines captured."""

    def __init__(self, script: str, env: dict[str, str], log_path: Path | None = None) -> None:
        self.script = script
        self.env = env
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, ready_timeout: float = 60.0) -> "WorkerProcess":
        """Start the script and wait for its ``worker started`` line."""
        self.process = subprocess.Popen(
            [str(BIN_DIR / self.script)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda line: line.get("event") == "worker started", ready_timeout)
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        with contextlib.ExitStack() as files:
            sink = files.enter_context(self.log_path.open("a")) if self.log_path else None
            files.enter_context(self.process.stdout)  # closed at EOF: no unclosed-pipe warning
            for text in self.process.stdout:
                self.raw.append(text)
                if sink:
                    sink.write(text)
                    sink.flush()
                try:
                    self.lines.append(json.loads(text))
                except json.JSONDecodeError:
                    continue

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Wait until a log line satisfies ``predicate``; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            if self.process is not None and self.process.poll() is not None and seen == len(self.lines):
                break
            time.sleep(0.05)
        tail = "".join(self.raw[-30:])
        raise AssertionError(f"{self.script}: expected log line not seen in {timeout}s:\n{tail}")

    def signal(self, signum: int) -> None:
        """Send a signal to the worker."""
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its exit code."""
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        """Kill the process if it still runs (test clean-up)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
