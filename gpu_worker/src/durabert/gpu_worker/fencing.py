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
be deleted under it. Local folders and NFSv4 honour it.

With an object-store artifact root, the run folder each worker writes is its private local
copy (still guarded as above, which keeps two attempts on one machine apart), and the fence
that matters lives in the store as ``runs/<run_id>/fence.json``: :meth:`RunFence.take_over`
reads, compares and writes it there (checking the store's run record first), and
:meth:`RunFence.check_store` re-reads it before every upload. Object stores have no locks, so
a window remains between that check and the upload (or rotation) that follows it: an attempt
superseded inside that window may still upload one checkpoint or delete one of the store's
older checkpoints. That is acceptable: the older attempt's upload is a ``checkpoint-<step>``
of the same run, config and data, so it either has a step the newer attempt does not write
or the same contents (training is seeded; the newer attempt does not re-upload a step that is
complete), rotation never deletes the newest complete checkpoint, and the newer attempt has
already downloaded what it resumes from. Its next check stops the older attempt.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from durabert.shared.artifacts import RUNS_DIR, ArtifactStore
from durabert.shared.errors import superseded
from durabert.shared.logging import get_logger
from durabert.shared.models import AttemptFence
from durabert.shared.object_store import ObjectStore
from durabert.shared.run_record import RunRecord, read_run_record

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


def _store_fence_key(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}/{FENCE_FILE}"


def read_store_fence(objects: ObjectStore, run_id: str) -> AttemptFence | None:
    """Read the fence of the attempt that owns a run in an object store.

    Args:
        objects: The object store at the artifact root.
        run_id: The run.

    Returns:
        The owner's fence, or None when no attempt took the run over (or the object is unreadable).
    """
    raw = objects.read_bytes(_store_fence_key(run_id))
    if raw is None:
        return None
    try:
        return AttemptFence.model_validate_json(raw)
    except ValidationError:
        return None


def _read_store_record(objects: ObjectStore, run_id: str) -> RunRecord | None:
    """The run record in the store (``durabert.shared.run_record.read_run_record_from``)."""
    from durabert.shared.run_record import (
        read_run_record_from,
    )  # H2's reader; only object-store roots need it

    return read_run_record_from(objects, run_id)


class RunFence:
    """One attempt's claim on its run folder."""

    def __init__(
        self,
        store: ArtifactStore,
        run_id: str,
        fence: AttemptFence | None,
        objects: ObjectStore | None = None,
    ) -> None:
        """Prepare the fence of one attempt (nothing is written yet).

        Args:
            store: The artifact store (the local copy, with an object-store root).
            run_id: The run whose folder is fenced.
            fence: The attempt's identity; None outside a workflow (tests, benchmarks), where
                nothing is fenced.
            objects: The object store at the artifact root, when it is one: the fence that
                counts is then the store's.
        """
        self.store = store
        self.run_id = run_id
        self.run_dir = store.run_dir(run_id)
        self.fence = fence
        self.objects = objects

    def take_over(self) -> None:
        """Make this attempt the folder's only writer.

        Raises:
            ApplicationError: ``AttemptSupersededError`` when a newer attempt of the same chain
                already owns the folder, or the run record names another chain.
        """
        if self.fence is None:
            return
        if self.objects is not None:
            # The store first: it is where a newer attempt on another machine would show.
            self._check_chain(_read_store_record(self.objects, self.run_id))
            self._refuse_newer(read_store_fence(self.objects, self.run_id))
            self.objects.write_bytes(_store_fence_key(self.run_id), self.fence.model_dump_json().encode())
        with _locked(self.run_dir):
            self._check_chain(read_run_record(self.store, self.run_id))
            self._refuse_newer(read_fence(self.run_dir))
            _write_fence(self.run_dir, self.fence)
        log.info("took over the run folder", seq=self.fence.seq, chain_id=self.fence.chain_id)

    def _refuse_newer(self, current: AttemptFence | None) -> None:
        assert self.fence is not None
        if current is not None and current.chain_id == self.fence.chain_id and current.seq > self.fence.seq:
            raise superseded(
                f"run {self.fence.workflow_id!r}: {_describe(current)} owns the run folder; "
                f"{_describe(self.fence)} is older and does not start"
            )

    def _check_chain(self, record: RunRecord | None) -> None:
        assert self.fence is not None
        # The run record (written by ``claim_run``) names the chain that owns the run id: an
        # attempt of an older chain, taken over by ``continue_run``, must not write.
        if record is not None and record.chain_id != self.fence.chain_id:
            raise superseded(
                f"run {self.fence.workflow_id!r} now belongs to workflow chain {record.chain_id}; "
                f"{_describe(self.fence)} does not write into it"
            )

    def check(self, action: str) -> None:
        """Raise when another attempt took the run folder over; return when this one still owns it.

        Args:
            action: What this attempt was doing (for the error message).

        Raises:
            ApplicationError: ``AttemptSupersededError`` when another attempt owns the folder.
        """
        with self.guard(action):
            pass

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

    def check_store(self, action: str) -> None:
        """Refuse, before an upload, when another attempt took the run over in the object store.

        A no-op with a local root or outside a workflow. See the module's note on the window
        between this check and the upload.

        Args:
            action: What the caller is about to do (for the error message).

        Raises:
            ApplicationError: ``AttemptSupersededError`` when the store's fence is not this attempt's.
        """
        if self.fence is None or self.objects is None:
            return
        current = read_store_fence(self.objects, self.run_id)
        if current != self.fence:
            owner = _describe(current) if current else "nobody"
            log.warning(
                "superseded in the store: not uploading", action=action, owner=owner, seq=self.fence.seq
            )
            raise superseded(
                f"run {self.fence.workflow_id!r}: {owner} took the run over in the artifact store; "
                f"{_describe(self.fence)} stopped before it could {action}"
            )
