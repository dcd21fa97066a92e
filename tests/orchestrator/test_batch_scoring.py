"""``durabert predict`` and ``BertBatchInferenceWorkflow`` with stand-in activities under the real names:
the dataset is snapshotted on the data queue, scored on the training queue, the result reaches the
CLI and ``--out``; ``watch`` follows a scoring; an unknown run fails with the not-found error; bad
input is refused before Temporal is contacted."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from cli_capture import Captured
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from durabert.orchestrator.batch_workflow import BertBatchInferenceWorkflow
from durabert.orchestrator.cli import execute
from durabert.orchestrator.predict_ops import batch_workflow_id
from durabert.shared import names
from durabert.shared.errors import not_found
from durabert.shared.models import (
    BatchScoringRequest,
    BertBatchInferenceResult,
    ScoringHeartbeat,
    ScoringSnapshotRequest,
    ScoringSnapshotResult,
)
from durabert.shared.settings import DurabertSettings
from support.histories import record_history

UNKNOWN_RUN = "no-such-run"
ROWS = 7


@activity.defn(name=names.CREATE_SCORING_SNAPSHOT)
async def fake_snapshot(request: ScoringSnapshotRequest) -> ScoringSnapshotResult:
    return ScoringSnapshotResult(
        snapshot_id="snap1",
        snapshot_path="snapshots/snap1",
        num_rows=request.max_samples or ROWS,
        data_hash="h",
    )


def fake_scorer(settings: DurabertSettings):
    @activity.defn(name=names.SCORE_DATASET)
    async def fake_score(request: BatchScoringRequest) -> BertBatchInferenceResult:
        run_id, rows = request.request.run_id, request.snapshot.num_rows
        if run_id == UNKNOWN_RUN:
            raise not_found(f"run_id: run {run_id!r} has no finished model")
        activity.heartbeat(ScoringHeartbeat(chunks_done=1, chunks=2, rows_done=4, num_rows=rows))
        relative = f"runs/{run_id}/predictions/snap1/predictions.parquet"
        path = settings.artifact_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"row_index": list(range(rows)), "label": [0] * rows}), path)
        return BertBatchInferenceResult(
            run_id=run_id,
            snapshot_id="snap1",
            num_rows=rows,
            output_path=relative,
            chunks=2,
            resumed_chunks=1,
        )

    return fake_score


@pytest.fixture
def predict_settings(settings: DurabertSettings, queue_name: str) -> DurabertSettings:
    """Every queue is this test's one random queue, served by one worker."""
    queues = {"orchestrator": queue_name, "data": queue_name, "gpu": queue_name, "inference": queue_name}
    return settings.model_copy(update={"queues": settings.queues.model_copy(update=queues)})


@pytest.fixture
async def worker(client: Client, predict_settings: DurabertSettings) -> AsyncIterator[Worker]:
    async with Worker(
        client,
        task_queue=predict_settings.queues.orchestrator,
        workflows=[BertBatchInferenceWorkflow],
        activities=[fake_snapshot, fake_scorer(predict_settings)],
    ) as running:
        yield running


def write_config(folder: Path, **fields: object) -> Path:
    path = folder / "predict.yaml"
    path.write_text(yaml.safe_dump({"dataset_name": "json", "data_files": "reviews.jsonl"} | fields))
    return path


async def test_predict_scores_and_copies_the_output(
    predict_settings: DurabertSettings, worker: Worker, tmp_path: Path
) -> None:
    out = tmp_path / "mine" / "scored.parquet"
    output = Captured()
    argv = ["predict", "run-1", str(write_config(tmp_path, max_samples=5)), "--out", str(out), "--json"]
    assert await execute(argv, predict_settings, output=output) == 0, output.stderr
    result = json.loads(output.stdout)
    assert result["output_path"] == "runs/run-1/predictions/snap1/predictions.parquet"
    assert (result["num_rows"], result["chunks"], result["resumed_chunks"]) == (5, 2, 1)
    assert pq.read_table(out).column("row_index").to_pylist() == list(range(5))
    assert f"predictions copied to {out}" in output.stderr


async def test_watch_follows_a_scoring_started_without_waiting(
    predict_settings: DurabertSettings, worker: Worker, client: Client, tmp_path: Path
) -> None:
    output = Captured()
    argv = ["predict", "run-2", str(write_config(tmp_path)), "--no-wait", "--json"]
    assert await execute(argv, predict_settings, output=output) == 0, output.stderr
    workflow_id = json.loads(output.stdout)["workflow_id"]
    assert workflow_id.startswith("predict-run-2-")
    watched = Captured()
    code = await execute(["watch", workflow_id, "--interval", "0.1"], predict_settings, output=watched)
    assert code == 0, watched.stderr
    assert "completed · chunk 2/2 · rows 7/7 (100%) · resumed chunks 1" in watched.stdout
    assert "runs/run-2/predictions/snap1/predictions.parquet" in watched.stdout
    await record_history(client.get_workflow_handle(workflow_id), "batch_scoring")


async def test_an_unknown_run_fails_with_the_not_found_error(
    predict_settings: DurabertSettings, worker: Worker, tmp_path: Path
) -> None:
    output = Captured()
    code = await execute(
        ["predict", UNKNOWN_RUN, str(write_config(tmp_path))], predict_settings, output=output
    )
    assert code == 1
    assert "ArtifactNotFoundError: run_id: run 'no-such-run' has no finished model" in output.stderr


@pytest.mark.parametrize(
    ("argv_run_id", "fields", "message"),
    [
        ("run-1", {"data_files": None}, "data_files: Value error, required when dataset_name is 'json'"),
        ("run-1", {"label_feild": "x"}, "label_feild: unknown field"),
        ("run-1", {"chunk_rows": 0}, "chunk_rows: Input should be greater than or equal to 1"),
        ("Bad Id", {}, "RUN_ID: must be 1-63 characters"),
    ],
)
async def test_bad_input_is_refused_before_temporal_is_contacted(
    tmp_path: Path, argv_run_id: str, fields: dict[str, object], message: str
) -> None:
    nowhere = DurabertSettings(temporal={"address": "127.0.0.1:9"}, artifact_root=tmp_path)
    output = Captured()
    code = await asyncio.wait_for(
        execute(["predict", argv_run_id, str(write_config(tmp_path, **fields))], nowhere, output=output), 10
    )
    assert code == 2
    assert message in output.stderr


def test_workflow_ids_name_the_run_and_never_collide() -> None:
    assert batch_workflow_id("run-1", "0a1b2c3d") == "predict-run-1-0a1b2c3d"
    assert batch_workflow_id("run-1") != batch_workflow_id("run-1")
