"""The run record: which workflow chain owns ``runs/<run_id>``, so that a run id means one run.

``runs/<run_id>/run.json`` is written once, by the first claim of a run id. A later run with the
same id is refused unless it asks to continue the earlier one (``continue_run``); then the record
names the new chain as owner and keeps what changed in the config. The GPU worker reads the
record at the start of every attempt and refuses an attempt whose fence names another chain.

Temporal allows one open execution per workflow id, and the run id is the workflow id, so two
*chains* of one run id never claim at the same time: a claim races only with retries of itself.

The record lives where the artifact root is. In a local folder it is created exclusively (a
hard link that fails when the name exists), so even racing claims have one winner. In an object
store (``DURABERT_ARTIFACT_ROOT=s3://...``) the claim reads, then writes: not every store offers
an exclusive create, and none is needed, because the only claims that can overlap are retries of
the same chain (the rule above), which write the same owner. The store's record is read with
:func:`read_run_record_from`.
"""

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from pydantic import Field, ValidationError

from durabert.shared.artifacts import RUNS_DIR, ArtifactStore, write_json_atomic
from durabert.shared.errors import ErrorType, configuration_error, retryable_error, run_id_in_use
from durabert.shared.models import ContractModel, RunClaimRequest, RunClaimResult, RunId
from durabert.shared.object_store import ObjectStore
from durabert.shared.redaction import redact_value

RUN_RECORD_FILE: Final = "run.json"
"""Name of the record inside a run's folder."""

_NOT_COMPARED: Final = frozenset({"continue_run"})
"""Config fields left out of a continuation's diff (they differ by definition)."""


class RunContinuation(ContractModel):
    """One time a later workflow chain took over a run on purpose (``continue_run``)."""

    chain_id: str
    """First execution run id of the chain that took over."""
    at: str
    """ISO 8601 time of the takeover."""
    config_changes: dict[str, list[Any]] = Field(default_factory=dict)
    """Config fields that changed, as ``{field: [old, new]}``."""


class RunRecord(ContractModel):
    """Contents of ``runs/<run_id>/run.json``."""

    run_id: RunId
    """The run id (equal to the workflow id)."""
    chain_id: str
    """First execution run id of the workflow chain that owns the run folder now."""
    workflow_id: str
    """Workflow id of the run."""
    created_at: str
    """ISO 8601 time of the first claim."""
    config: dict[str, Any]
    """Config of the owning chain, as JSON (the original's is recovered from the continuations)."""
    continuations: list[RunContinuation] = Field(default_factory=list)
    """Later chains that continued this run, oldest first."""


def record_path(store: ArtifactStore, run_id: str) -> Path:
    """Locate a run's record.

    Args:
        store: The artifact store.
        run_id: The run id.

    Returns:
        ``<root>/runs/<run_id>/run.json``.
    """
    return store.run_dir(run_id) / RUN_RECORD_FILE


def read_run_record(store: ArtifactStore, run_id: str) -> RunRecord | None:
    """Read a run's record.

    Args:
        store: The artifact store.
        run_id: The run id.

    Returns:
        The record, or None when the run id was never claimed.

    Raises:
        ApplicationError: ``ConfigurationError`` when the file exists but is not a valid record
            (an operator must look at it; no retry fixes it).
    """
    path = record_path(store, run_id)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return _parse_record(text, str(path))


def record_key(run_id: str) -> str:
    """The object-store key of a run's record: ``runs/<run_id>/run.json``."""
    return f"{RUNS_DIR}/{run_id}/{RUN_RECORD_FILE}"


def read_run_record_from(objects: ObjectStore, run_id: str) -> RunRecord | None:
    """Read a run's record from an object-store artifact root.

    Args:
        objects: The object store of the artifact root.
        run_id: The run id.

    Returns:
        The record, or None when the run id was never claimed.

    Raises:
        ApplicationError: ``ConfigurationError`` when the object is not a valid record; a
            retryable ``ArtifactStoreError`` when the store cannot be read.
    """
    raw = objects.read_bytes(record_key(run_id))
    return None if raw is None else _parse_record(raw, objects.url_of(record_key(run_id)))


def _parse_record(text: str | bytes, where: str) -> RunRecord:
    try:
        return RunRecord.model_validate_json(text)
    except ValidationError as exc:
        raise configuration_error(
            f"{where} is not a valid run record: {exc.error_count()} error(s)"
        ) from None


class _Records(Protocol):
    """Where run records are kept: a local artifact folder or an object store."""

    def read(self, run_id: str) -> RunRecord | None:
        """The run's record, or None."""

    def create(self, record: RunRecord) -> bool:
        """Write a first record; False when one exists already."""

    def replace(self, record: RunRecord) -> None:
        """Overwrite the record (readers see the old or the new one whole)."""

    def has_artifacts(self, run_id: str) -> bool:
        """Whether the run's folder holds anything a run wrote."""


class _FolderRecords:
    """Run records in a local (or mounted) artifact folder."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    def read(self, run_id: str) -> RunRecord | None:
        return read_run_record(self._store, run_id)

    def create(self, record: RunRecord) -> bool:
        return _create_exclusive(record_path(self._store, record.run_id), record.model_dump(mode="json"))

    def replace(self, record: RunRecord) -> None:
        write_json_atomic(record_path(self._store, record.run_id), record.model_dump(mode="json"))

    def has_artifacts(self, run_id: str) -> bool:
        return _has_artifacts(self._store.run_dir(run_id))


class _StoreRecords:
    """Run records in an object store (read-then-write: see the module docstring)."""

    def __init__(self, objects: ObjectStore) -> None:
        self._objects = objects

    def read(self, run_id: str) -> RunRecord | None:
        return read_run_record_from(self._objects, run_id)

    def create(self, record: RunRecord) -> bool:
        if self._objects.exists(record_key(record.run_id)):
            return False
        self.replace(record)
        return True

    def replace(self, record: RunRecord) -> None:
        # One PUT replaces an object whole: readers never see a partial record.
        self._objects.write_bytes(record_key(record.run_id), _record_json(record))

    def has_artifacts(self, run_id: str) -> bool:
        # An object store has no empty folders: any visible name under runs/<id>/ is an object
        # some run wrote. Hidden names (temporaries, locks) do not count, as in a folder.
        children = self._objects.list_children(f"{RUNS_DIR}/{run_id}")
        return any(not name.startswith(".") for name in children)


def _records(store: ArtifactStore | ObjectStore) -> _Records:
    return _StoreRecords(store) if isinstance(store, ObjectStore) else _FolderRecords(store)


def _record_json(record: RunRecord) -> bytes:
    return json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True).encode()


def claim_run(store: ArtifactStore | ObjectStore, request: RunClaimRequest) -> RunClaimResult:
    """Make ``runs/<run_id>`` the requesting chain's, or refuse an id that holds an earlier run.

    Args:
        store: The artifact root: a local folder, or the object store of a URL root.
        request: Run id, claiming chain, config and whether to continue an earlier run.

    Returns:
        The claim; ``continued_from_chain`` and ``config_changes`` are set when this claim took
        over an earlier run.

    Raises:
        ApplicationError: ``RunIdInUseError`` for an id that holds another chain's run (without
            ``continue_run``); ``ConfigurationError`` for ``continue_run`` with nothing to
            continue; a retryable ``ArtifactStoreError`` when the store cannot be written.
    """
    records = _records(store)
    try:
        record = records.read(request.run_id)
        if record is None:
            return _claim_new(records, request)
        return _claim_existing(records, request, record)
    except OSError as exc:
        raise retryable_error(
            ErrorType.ARTIFACT_STORE, f"artifact store: cannot claim run {request.run_id}: {exc}"
        ) from exc


def _claim_new(records: _Records, request: RunClaimRequest) -> RunClaimResult:
    if request.continue_run:
        raise configuration_error(
            f"continue_run: run {request.run_id!r} has nothing to continue (no earlier run with "
            "this id); leave continue_run off to start it"
        )
    if records.has_artifacts(request.run_id):
        # A folder from before run records existed: it is somebody's run all the same.
        raise run_id_in_use(_in_use_message(request.run_id, "an earlier run without a run record"))
    record = RunRecord(
        run_id=request.run_id,
        chain_id=request.chain_id,
        workflow_id=request.run_id,
        created_at=_now(),
        config=redact_value(request.config.model_dump(mode="json")),
    )
    if records.create(record):
        return RunClaimResult(run_id=request.run_id)
    # Another claim won the race: decide again against what it wrote.
    winner = records.read(request.run_id)
    if winner is None:  # removed again in between: an operator is cleaning up; retry later
        raise retryable_error(ErrorType.ARTIFACT_STORE, f"run record of {request.run_id} vanished")
    return _claim_existing(records, request, winner)


def _claim_existing(records: _Records, request: RunClaimRequest, record: RunRecord) -> RunClaimResult:
    if record.chain_id == request.chain_id:
        # A retry of this claim, or the same run after continue-as-new: nothing changes.
        return RunClaimResult(run_id=request.run_id)
    if not request.continue_run:
        raise run_id_in_use(_in_use_message(request.run_id, _owner(record)))
    new_config = redact_value(request.config.model_dump(mode="json"))
    changes = config_changes(record.config, new_config)
    updated = record.model_copy(
        update={
            "chain_id": request.chain_id,
            "config": new_config,
            "continuations": [
                *record.continuations,
                RunContinuation(chain_id=request.chain_id, at=_now(), config_changes=changes),
            ],
        }
    )
    records.replace(updated)
    return RunClaimResult(run_id=request.run_id, continued_from_chain=record.chain_id, config_changes=changes)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """Diff two configs field by field (nested sections compare as a whole).

    Args:
        old: The earlier config, as JSON.
        new: The new config, as JSON.

    Returns:
        ``{field: [old, new]}`` for every top-level field whose value differs, sorted by field.
    """
    fields = sorted((set(old) | set(new)) - _NOT_COMPARED)
    return {name: [old.get(name), new.get(name)] for name in fields if old.get(name) != new.get(name)}


def _owner(record: RunRecord) -> str:
    started = record.continuations[-1].at if record.continuations else record.created_at
    return (
        f"a run started at {started} by workflow {record.workflow_id!r} (execution chain {record.chain_id})"
    )


def _in_use_message(run_id: str, holder: str) -> str:
    return (
        f"run_id {run_id!r} is in use: runs/{run_id} holds {holder}. A run id names one run; "
        "start this one under a new run id, or extend that run from its newest checkpoint (e.g. to a "
        "larger max_steps) with `continue_run: true` in the config (`durabert train --continue`)"
    )


def _has_artifacts(run_dir: Path) -> bool:
    """Whether a run folder holds anything a run wrote.

    Hidden temporaries and empty folders (such as a mount point prepared for the run) do not count.
    """
    try:
        entries = [entry for entry in run_dir.iterdir() if not entry.name.startswith(".")]
    except FileNotFoundError:
        return False
    return any(not entry.is_dir() or _has_artifacts(entry) for entry in entries)


def _create_exclusive(path: Path, data: dict[str, Any]) -> bool:
    """Write ``path`` only if it does not exist; readers never see a partial file.

    The content goes to a temporary file first and is hard-linked to the final name: ``link``
    fails when the name exists, so exactly one of several racing writers wins.

    Returns:
        True when this call created the file, False when it existed already.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp_name, path)
    except FileExistsError:
        return False
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
