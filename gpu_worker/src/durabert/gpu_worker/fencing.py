"""Fencing: at most one fine-tuning attempt writes a run's folder at a time.

A worker cut off from Temporal (but not from the store) keeps training after the workflow
gave up on it and started another attempt elsewhere. Both would then save, rotate and clean
up in ``runs/<run_id>/``. To prevent that, each attempt *takes over* the run folder when it
starts by writing its :class:`~durabert.shared.models.AttemptFence` into ``fence.json``, and
every later change to shared files (publishing a checkpoint, rotation, publishing the model)
runs under :meth:`RunFence.guard`, which re-reads the fence under an exclusive file lock: a
superseded attempt stops with ``AttemptSupersededError`` before it writes or deletes anything.

The lock (``fcntl.flock`` on ``.fence.lock``) makes "check the fence, then rename or delete"
atomic with respect to a take-over, so a newer attempt's choice of resume checkpoint can never
be deleted under it. Local folders and NFSv4 honour it; an object store will need a
conditional write instead.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import superseded
from durabert.shared.logging import get_logger
from durabert.shared.models import AttemptFence
from durabert.shared.run_record import read_run_record

log = get_logger(__name__)

FENCE_FILE = "fence.json"
"""The run folder's current owner: the fence of the newest attempt that took it over."""
LOCK_FILE = ".fence.lock"
"""Lock file serialising take-overs and guarded writes."""


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(run_dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def read_fence(run_dir: Path) -> AttemptFence | None:
    """Read the fence of the attempt that owns a run folder.

    Args:
        run_dir: ``runs/<run_id>``.

    Returns:
        The owner's fence, or None when no attempt took the folder over (or the file is unreadable).
    """
    try:
        return AttemptFence.model_validate_json((run_dir / FENCE_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def _write_fence(run_dir: Path, fence: AttemptFence) -> None:
    temporary = run_dir / f".{FENCE_FILE}.{os.getpid()}"
    temporary.write_text(fence.model_dump_json(), encoding="utf-8")
    os.replace(temporary, run_dir / FENCE_FILE)


def _describe(fence: AttemptFence) -> str:
    return f"attempt {fence.seq} of workflow chain {fence.chain_id}"


class RunFence:
    """One attempt's claim on its run folder."""

    def __init__(self, store: ArtifactStore, run_id: str, fence: AttemptFence | None) -> None:
        """Prepare the fence of one attempt (nothing is written yet).

        Args:
            store: The artifact store.
            run_id: The run whose folder is fenced.
            fence: The attempt's identity; None outside a workflow (tests, benchmarks), where
                nothing is fenced.
        """
        self.store = store
        self.run_id = run_id
        self.run_dir = store.run_dir(run_id)
        self.fence = fence

    def take_over(self) -> None:
        """Make this attempt the folder's only writer.

        Raises:
            ApplicationError: ``AttemptSupersededError`` when a newer attempt of the same chain
                already owns the folder, or the run record names another chain.
        """
        if self.fence is None:
            return
        with _locked(self.run_dir):
            self._check_chain()
            current = read_fence(self.run_dir)
            if (
                current is not None
                and current.chain_id == self.fence.chain_id
                and current.seq > self.fence.seq
            ):
                raise superseded(
                    f"run {self.fence.workflow_id!r}: {_describe(current)} owns the run folder; "
                    f"{_describe(self.fence)} is older and does not start"
                )
            _write_fence(self.run_dir, self.fence)
        log.info("took over the run folder", seq=self.fence.seq, chain_id=self.fence.chain_id)

    def _check_chain(self) -> None:
        assert self.fence is not None
        # The run record (written by ``claim_run``) names the chain that owns the run id: an
        # attempt of an older chain, taken over by ``continue_run``, must not write.
        record = read_run_record(self.store, self.run_id)
        if record is not None and record.chain_id != self.fence.chain_id:
            raise superseded(
                f"run {self.fence.workflow_id!r} now belongs to workflow chain {record.chain_id}; "
                f"{_describe(self.fence)} does not write into it"
            )

    @contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Hold the lock while the body changes shared files, if this attempt still owns the folder.

        Args:
            action: What the body does (for the error message), e.g. ``"publish checkpoint-40"``.

        Yields:
            Nothing; the body runs under the lock.

        Raises:
            ApplicationError: ``AttemptSupersededError`` when another attempt took the folder
                over; the body does not run.
        """
        if self.fence is None:
            yield
            return
        with _locked(self.run_dir):
            current = read_fence(self.run_dir)
            if current != self.fence:
                owner = _describe(current) if current else "nobody"
                log.warning("superseded: not writing", action=action, owner=owner, seq=self.fence.seq)
                raise superseded(
                    f"run {self.fence.workflow_id!r}: {owner} took the run folder over; "
                    f"{_describe(self.fence)} stopped before it could {action}"
                )
            yield
