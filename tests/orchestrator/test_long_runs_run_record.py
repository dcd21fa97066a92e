"""Run records: a run id names one run (``shared/run_record.py``, no Temporal needed)."""

import json
import threading
import uuid
from pathlib import Path

import pytest
from fake_training import config
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.data_worker.run_claims import RunClaimActivities
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import ErrorType
from durabert.shared.models import RunClaimRequest, RunClaimResult
from durabert.shared.object_store import ObjectStore
from durabert.shared.run_record import (
    claim_run,
    config_changes,
    read_run_record,
    read_run_record_from,
    record_key,
)
from durabert.shared.settings import DurabertSettings


def _claim(chain: str, run_id: str = "run-a", **overrides: object) -> RunClaimRequest:
    continue_run = bool(overrides.get("continue_run", False))
    return RunClaimRequest(
        run_id=run_id, chain_id=chain, continue_run=continue_run, config=config(**overrides)
    )


@pytest.fixture
def store(artifact_root: Path) -> ArtifactStore:
    return ArtifactStore(artifact_root)


def test_the_first_claim_writes_the_record(store: ArtifactStore) -> None:
    assert claim_run(store, _claim("chain-1")) == RunClaimResult(run_id="run-a")
    record = read_run_record(store, "run-a")
    assert record is not None
    assert (record.run_id, record.chain_id, record.workflow_id) == ("run-a", "chain-1", "run-a")
    assert record.config["max_steps"] == 20
    assert record.continuations == []
    assert read_run_record(store, "run-b") is None


def test_a_claim_by_the_same_chain_is_idempotent(store: ArtifactStore) -> None:
    claim_run(store, _claim("chain-1"))
    before = (store.run_dir("run-a") / "run.json").read_text()
    assert claim_run(store, _claim("chain-1")) == RunClaimResult(run_id="run-a")
    assert claim_run(store, _claim("chain-1", continue_run=True)) == RunClaimResult(run_id="run-a")
    assert (store.run_dir("run-a") / "run.json").read_text() == before


def test_another_chain_is_refused_naming_the_run_and_the_ways_on(store: ArtifactStore) -> None:
    claim_run(store, _claim("chain-1"))
    created_at = json.loads((store.run_dir("run-a") / "run.json").read_text())["created_at"]
    with pytest.raises(ApplicationError) as info:
        claim_run(store, _claim("chain-2", learning_rate=1e-3))
    error = info.value
    assert error.type == ErrorType.RUN_ID_IN_USE
    assert error.non_retryable
    for part in ["run_id 'run-a' is in use", created_at, "workflow 'run-a'", "chain-1", "new run id"]:
        assert part in error.message
    assert "continue_run: true" in error.message
    assert "durabert train --continue" in error.message
    record = read_run_record(store, "run-a")
    assert record is not None
    assert record.chain_id == "chain-1"


def test_continue_run_takes_over_and_records_the_config_change(store: ArtifactStore) -> None:
    claim_run(store, _claim("chain-1", max_steps=20))
    result = claim_run(store, _claim("chain-2", max_steps=40, continue_run=True))
    assert result.continued_from_chain == "chain-1"
    assert result.config_changes == {"max_steps": [20, 40]}
    record = read_run_record(store, "run-a")
    assert record is not None
    assert record.chain_id == "chain-2"
    assert record.config["max_steps"] == 40
    assert [(c.chain_id, c.config_changes) for c in record.continuations] == [
        ("chain-2", {"max_steps": [20, 40]})
    ]
    # The first chain is the one refused now (its stale attempts are fenced off by the GPU worker).
    with pytest.raises(ApplicationError, match="chain-2"):
        claim_run(store, _claim("chain-1"))


def test_continue_run_with_nothing_to_continue_is_a_configuration_error(store: ArtifactStore) -> None:
    with pytest.raises(ApplicationError) as info:
        claim_run(store, _claim("chain-1", continue_run=True))
    assert info.value.type == ErrorType.CONFIGURATION
    assert "nothing to continue" in info.value.message
    assert read_run_record(store, "run-a") is None


def test_a_folder_without_a_record_holding_artifacts_is_in_use(store: ArtifactStore) -> None:
    checkpoint = store.checkpoints_dir("run-a") / "checkpoint-8"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ApplicationError) as info:
        claim_run(store, _claim("chain-1"))
    assert info.value.type == ErrorType.RUN_ID_IN_USE
    assert "without a run record" in info.value.message
    # An empty folder (a mount point prepared for the run) is no earlier run.
    store.checkpoints_dir("run-b").mkdir(parents=True)
    assert claim_run(store, _claim("chain-1", run_id="run-b")).run_id == "run-b"


def _race(store: ArtifactStore, run_id: str, chains: list[str]) -> dict[str, str]:
    """Claim one run id from several threads released at once; each chain's outcome."""
    barrier = threading.Barrier(len(chains))
    outcomes: dict[str, str] = {}

    def claim(chain: str) -> None:
        barrier.wait()
        try:
            claim_run(store, _claim(chain, run_id=run_id))
            outcomes[chain] = "won"
        except ApplicationError as exc:
            outcomes[chain] = str(exc.type)

    threads = [threading.Thread(target=claim, args=(chain,)) for chain in chains]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_racing_claims_of_several_chains_have_one_winner(store: ArtifactStore) -> None:
    for round_ in range(20):
        run_id = f"race-{round_}"
        outcomes = _race(store, run_id, [f"chain-{n}" for n in range(4)])
        winners = [chain for chain, outcome in outcomes.items() if outcome == "won"]
        assert len(winners) == 1, outcomes
        assert sorted(outcomes.values()) == ["RunIdInUseError"] * 3 + ["won"]
        record = read_run_record(store, run_id)
        assert record is not None
        assert record.chain_id == winners[0]


def test_a_damaged_record_is_a_configuration_error(store: ArtifactStore) -> None:
    path = store.run_dir("run-a") / "run.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ApplicationError) as info:
        read_run_record(store, "run-a")
    assert info.value.type == ErrorType.CONFIGURATION
    assert str(path) in info.value.message


def test_config_changes_compare_fields_and_skip_continue_run() -> None:
    old = {"max_steps": 20, "timeouts": {"a": 1}, "continue_run": False, "seed": 1}
    new = {"max_steps": 40, "timeouts": {"a": 2}, "continue_run": True, "seed": 1, "extra": None}
    assert config_changes(old, new) == {"max_steps": [20, 40], "timeouts": [{"a": 1}, {"a": 2}]}


def test_the_record_never_holds_credentials_of_a_data_url(store: ArtifactStore) -> None:
    secret_url = "https://reader:s3cr3t-token@data.example/train.jsonl?X-Amz-Signature=abc123"
    claim_run(store, _claim("chain-1", data_files=secret_url))
    written = (store.run_dir("run-a") / "run.json").read_text()
    assert "s3cr3t-token" not in written
    assert "abc123" not in written
    assert "data.example/train.jsonl" in written


# -- an object-store artifact root: the record lives in the store -------------------------------


@pytest.fixture
def objects() -> ObjectStore:
    """An in-memory object store with its own root, for one test."""
    return ObjectStore(f"memory://records-{uuid.uuid4().hex[:12]}/artifacts", retry_seconds=1)


def test_a_claim_on_a_store_writes_the_record_there(objects: ObjectStore) -> None:
    assert claim_run(objects, _claim("chain-1")) == RunClaimResult(run_id="run-a")
    record = read_run_record_from(objects, "run-a")
    assert record is not None
    assert (record.run_id, record.chain_id, record.config["max_steps"]) == ("run-a", "chain-1", 20)
    assert objects.list_children("runs/run-a") == ["run.json"]
    assert read_run_record_from(objects, "run-b") is None
    before = objects.read_bytes(record_key("run-a"))
    assert claim_run(objects, _claim("chain-1")) == RunClaimResult(run_id="run-a")  # a retry of itself
    assert objects.read_bytes(record_key("run-a")) == before


def test_a_store_refuses_another_chain_and_lets_continue_run_take_over(objects: ObjectStore) -> None:
    claim_run(objects, _claim("chain-1", max_steps=20))
    with pytest.raises(ApplicationError) as info:
        claim_run(objects, _claim("chain-2"))
    assert info.value.type == ErrorType.RUN_ID_IN_USE
    assert "chain-1" in info.value.message

    result = claim_run(objects, _claim("chain-2", max_steps=40, continue_run=True))
    assert (result.continued_from_chain, result.config_changes) == ("chain-1", {"max_steps": [20, 40]})
    record = read_run_record_from(objects, "run-a")
    assert record is not None
    assert record.chain_id == "chain-2"
    assert [c.chain_id for c in record.continuations] == ["chain-2"]
    with pytest.raises(ApplicationError, match="chain-2"):
        claim_run(objects, _claim("chain-1"))


def test_a_store_with_objects_but_no_record_is_in_use(objects: ObjectStore) -> None:
    objects.write_bytes("runs/run-a/checkpoints/checkpoint-8/model.safetensors", b"weights")
    with pytest.raises(ApplicationError) as info:
        claim_run(objects, _claim("chain-1"))
    assert info.value.type == ErrorType.RUN_ID_IN_USE
    assert "without a run record" in info.value.message
    assert read_run_record_from(objects, "run-a") is None
    # Hidden names (a temporary, a lock) are no earlier run; nor is a continue without a run.
    objects.write_bytes("runs/run-b/.fence.lock", b"")
    with pytest.raises(ApplicationError, match="nothing to continue"):
        claim_run(objects, _claim("chain-1", run_id="run-b", continue_run=True))
    assert claim_run(objects, _claim("chain-1", run_id="run-b")).run_id == "run-b"


def test_a_damaged_record_in_a_store_is_a_configuration_error_naming_it(objects: ObjectStore) -> None:
    objects.write_bytes(record_key("run-a"), b"{not json")
    with pytest.raises(ApplicationError) as info:
        read_run_record_from(objects, "run-a")
    assert info.value.type == ErrorType.CONFIGURATION
    assert objects.url_of(record_key("run-a")) in info.value.message


def test_the_data_workers_claim_activity_uses_the_s3_store(s3_root: str, tmp_path: Path) -> None:
    settings = DurabertSettings(artifact_root=s3_root, work_dir=tmp_path / "work", store={"retry_seconds": 2})
    claim = RunClaimActivities(settings).claim_run
    assert ActivityEnvironment().run(claim, _claim("chain-1")).run_id == "run-a"
    with pytest.raises(ApplicationError) as info:
        ActivityEnvironment().run(claim, _claim("chain-2"))
    assert info.value.type == ErrorType.RUN_ID_IN_USE
    record = read_run_record_from(ObjectStore(s3_root, retry_seconds=2), "run-a")
    assert record is not None
    assert record.chain_id == "chain-1"
    assert not (tmp_path / "work").exists()  # nothing of the claim stays on the worker
