"""Parent side of a training child: start it, read its events on the event loop, stop or kill it.

No Temporal here, so tests and benchmarks drive a child directly.
"""

import asyncio
import collections
import contextlib
import multiprocessing
import os
import sys
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from durabert.gpu_worker.events import EVENT_ADAPTER, STOP_MESSAGE, TrainingEvent, TrainJob
from durabert.shared.logging import get_logger

log = get_logger(__name__)

_PRELOAD = ["durabert.gpu_worker.train_process"]
STORE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")
"""Environment variables an object store's client reads (credentials, endpoint, region)."""


def training_context() -> BaseContext:
    """The multiprocessing context for training children.

    A forkserver that has imported torch and transformers once forks each child from a
    clean, single-threaded process without CUDA state: as safe as ``spawn`` and without
    its ~10 s of imports per attempt. ``spawn`` elsewhere (no forkserver on Windows).

    Returns:
        The context.
    """
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _child_entry(job_json: str, events: Connection, control: Connection, store_env: dict[str, str]) -> None:
    """Run the child; imported lazily so the worker itself starts without torch."""
    from durabert.gpu_worker.train_process import child_main

    # A forkserver child inherits the environment the forkserver started with, which may be
    # older than the worker's (tests set the store's variables later): take the worker's.
    os.environ.update(store_env)
    child_main(job_json, events, control)


def store_environment(job: TrainJob) -> dict[str, str]:
    """The worker's object-store variables for a child, or none with a local artifact root.

    They travel as process arguments over the forkserver's socket, never in the job's JSON,
    so they reach no log.

    Args:
        job: The child's job.

    Returns:
        ``AWS_*``, ``GOOGLE_*`` and ``AZURE_*`` variables of this process.
    """
    if job.settings.artifact_url is None:
        return {}
    return {name: value for name, value in os.environ.items() if name.startswith(STORE_ENV_PREFIXES)}


def warm_up() -> None:
    """Start the training forkserver in the background, so the first run does not wait for its imports."""
    context = training_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        threading.Thread(
            target=forkserver.ensure_running, name="durabert-forkserver-warmup", daemon=True
        ).start()


class ChildExited(Exception):
    """The child closed its event pipe (it finished, crashed or was killed)."""


class TrainingChild:
    """One training child process and its two pipes."""

    def __init__(self, job: TrainJob, context: BaseContext | None = None) -> None:
        """Prepare (not start) a child for ``job``.

        Args:
            job: What to train.
            context: Multiprocessing context; :func:`training_context` by default.
        """
        self.job = job
        self.context = context or training_context()
        self.process: Any = None
        self._events: Connection | None = None
        self._control: Connection | None = None
        self._buffer: collections.deque[TrainingEvent] = collections.deque()
        self._ready = asyncio.Event()
        self._eof = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the child once started."""
        return None if self.process is None else int(self.process.pid)

    async def start(self) -> None:
        """Start the child and begin reading its events on the running event loop."""
        events_read, events_write = self.context.Pipe(duplex=False)
        control_read, control_write = self.context.Pipe(duplex=False)
        self.process = self.context.Process(  # type: ignore[attr-defined]
            target=_child_entry,
            args=(self.job.model_dump_json(), events_write, control_read, store_environment(self.job)),
            name=f"durabert-train-{self.job.request.run_id}",
            daemon=True,
        )
        # The first start launches the forkserver, which imports torch and transformers
        # (~10 s): do it in a thread so the event loop keeps heartbeating meanwhile.
        await asyncio.to_thread(self.process.start)
        # Close our copies of the child's ends: EOF on the event pipe then means the child is gone.
        events_write.close()
        control_read.close()
        self._events, self._control = events_read, control_write
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(events_read.fileno(), self._on_readable)
        log.info("training process started", run_id=self.job.request.run_id, pid=self.pid)

    def _on_readable(self) -> None:
        assert self._events is not None
        try:
            while self._events.poll():
                self._buffer.append(EVENT_ADAPTER.validate_json(self._events.recv_bytes()))
        except (EOFError, OSError):
            self._stop_reading()
        self._ready.set()

    def _stop_reading(self) -> None:
        if self._events is not None and self._loop is not None and not self._eof:
            self._eof = True
            self._loop.remove_reader(self._events.fileno())

    async def next_event(self, timeout: float) -> TrainingEvent | None:
        """Wait for the next event.

        Args:
            timeout: Seconds to wait.

        Returns:
            The event, or None when none came in time.

        Raises:
            ChildExited: The child closed its pipe and every event was read.
        """
        if not self._buffer and not self._eof:
            self._ready.clear()
            # asyncio.wait, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # lands while the awaited item arrives, and a cancelled activity would train on.
            waiter = asyncio.ensure_future(self._ready.wait())
            try:
                await asyncio.wait({waiter}, timeout=timeout)
            finally:
                waiter.cancel()
        if self._buffer:
            return self._buffer.popleft()
        if self._eof:
            raise ChildExited
        return None

    def request_stop(self) -> None:
        """Ask the child to save a checkpoint at the end of its current step and stop."""
        if self._control is None:
            return
        with contextlib.suppress(OSError):  # already gone
            self._control.send(STOP_MESSAGE)
        log.info(
            "asked training process to checkpoint and stop", run_id=self.job.request.run_id, pid=self.pid
        )

    async def wait_exit(self, timeout: float) -> int | None:
        """Wait for the process to exit.

        Args:
            timeout: Seconds to wait.

        Returns:
            The exit code, or None if it still runs.
        """
        if self.process is None or self.process.pid is None:
            return None  # never started
        await asyncio.to_thread(self.process.join, timeout)
        code = self.process.exitcode
        return None if code is None else int(code)

    def kill(self) -> None:
        """Kill the child (SIGKILL) if it still runs and reap it."""
        if self.process is not None and self.process.pid is not None and self.process.is_alive():
            log.warning("killing training process", run_id=self.job.request.run_id, pid=self.pid)
            self.process.kill()
            self.process.join(5)

    def close(self) -> None:
        """Kill the child if needed and release the pipes."""
        self.kill()
        self._stop_reading()
        for connection in (self._events, self._control):
            if connection is not None:
                connection.close()
        if self.process is not None and self.process.exitcode is not None:
            self.process.close()
