"""``durabert eval`` and ``BertEvaluationWorkflow`` with stand-in activities under the real names: the
labelled rows are snapshotted on the data queue with every row of the chosen split kept, evaluated on
the training queue, and the metrics reach the CLI as tables or JSON; an unknown run fails with the
not-found error; bad input is refused before Temporal is contacted."""

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from cli_capture import Captured
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from durabert.orchestrator.cli import execute
from durabert.orchestrator.evaluate_ops import evaluation_workflow_id
from durabert.orchestrator.evaluation_workflow import BertEvaluationWorkflow
from durabert.shared import names
from durabert.shared.errors import not_found
from durabert.shared.models import (
    BertEvaluationRequest,
    BertEvaluationResult,
    ClassMetrics,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    EvaluateBertRequest,
)
from durabert.shared.settings import DurabertSettings
from support.histories import record_history

UNKNOWN_RUN = "no-such-run"
SNAPSHOTS: list[DatasetSnapshotRequest] = []
"""Every snapshot request the stand-in data worker received."""


@activity.defn(name=names.CREATE_DATASET_SNAPSHOT)
async def fake_snapshot(request: DatasetSnapshotRequest) -> DatasetSnapshotResult:
    SNAPSHOTS.append(request)
    return DatasetSnapshotResult(
        snapshot_id="evalsnap",
        dataset_name=request.dataset_name,
        num_train_samples=1,
        num_eval_samples=6,
        data_hash="h",
        snapshot_timestamp="2026-12-01T00:00:00+00:00",
        snapshot_path="snapshots/evalsnap",
        label_names=["neg", "pos"],
        text_field=request.text_field,
        label_field=request.label_field,
    )


@activity.defn(name=names.EVALUATE_BERT)
async def fake_evaluate(request: EvaluateBertRequest) -> BertEvaluationResult:
    run_id = request.request.run_id
    if run_id == UNKNOWN_RUN:
        raise not_found(f"run_id: run {run_id!r} has no finished model")
    return BertEvaluationResult(
        run_id=run_id,
        snapshot_id=request.snapshot.snapshot_id,
        split=request.request.split,
        num_samples=6,
        label_names=["pos", "neg"],
        accuracy=4 / 6,
        macro_f1=0.65,
        per_class=[
            ClassMetrics(label="pos", precision=0.75, recall=0.75, f1=0.75, support=4),
            ClassMetrics(label="neg", precision=0.5, recall=0.5, f1=0.5, support=2),
        ],
        confusion_matrix=[[3, 1], [1, 1]],
        report_path=f"runs/{run_id}/evaluations/evalsnap/report.json",
    )


@pytest.fixture
def eval_settings(settings: DurabertSettings, queue_name: str) -> DurabertSettings:
    """Every queue is this test's one random queue, served by one worker."""
    queues = {"orchestrator": queue_name, "data": queue_name, "gpu": queue_name, "inference": queue_name}
    return settings.model_copy(update={"queues": settings.queues.model_copy(update=queues)})


@pytest.fixture
async def worker(client: Client, eval_settings: DurabertSettings) -> AsyncIterator[Worker]:
    async with Worker(
        client,
        task_queue=eval_settings.queues.orchestrator,
        workflows=[BertEvaluationWorkflow],
        activities=[fake_snapshot, fake_evaluate],
    ) as running:
        yield running


def write_config(folder: Path, **fields: object) -> Path:
    path = folder / "eval.yaml"
    path.write_text(yaml.safe_dump({"dataset_name": "json", "data_files": "test.jsonl"} | fields))
    return path


async def test_eval_prints_the_metrics_as_json_and_keeps_every_row_of_the_split(
    eval_settings: DurabertSettings, worker: Worker, client: Client, tmp_path: Path
) -> None:
    SNAPSHOTS.clear()
    output = Captured()
    argv = ["eval", "run-1", str(write_config(tmp_path, split="test", max_samples=6)), "--json"]
    assert await execute(argv, eval_settings, output=output) == 0, output.stderr
    result = json.loads(output.stdout)
    assert result["report_path"] == "runs/run-1/evaluations/evalsnap/report.json"
    assert result["confusion_matrix"] == [[3, 1], [1, 1]]
    assert result["per_class"][0] == {
        "label": "pos",
        "precision": 0.75,
        "recall": 0.75,
        "f1": 0.75,
        "support": 4,
    }
    # The data worker was asked for the whole "test" split as its eval split, not a held-out share.
    (asked,) = SNAPSHOTS
    assert (asked.eval_split_names, asked.max_eval_samples, asked.max_train_samples) == (["test"], 6, 1)
    workflow_id = re.search(r"evaluation (eval-run-1-[0-9a-f]{8}) completed", output.stderr)
    assert workflow_id is not None, output.stderr
    await record_history(client.get_workflow_handle(workflow_id.group(1)), "evaluation")


async def test_eval_prints_a_table_of_the_metrics(
    eval_settings: DurabertSettings, worker: Worker, tmp_path: Path
) -> None:
    output = Captured()
    assert await execute(["eval", "run-2", str(write_config(tmp_path))], eval_settings, output=output) == 0
    text = output.stdout
    assert re.search(r"accuracy\s+0\.6667", text), text
    assert re.search(r"macro F1\s+0\.6500", text), text
    assert re.search(r"pos\s+.\s+0\.7500\s+.\s+0\.7500\s+.\s+0\.7500\s+.\s+4", text), text
    assert re.search(r"neg\s+.\s+1\s+.\s+1\s", text), text  # the confusion matrix's second row
    assert "runs/run-2/evaluations/evalsnap/report.json" in text


async def test_an_unknown_run_exits_1_with_the_not_found_error(
    eval_settings: DurabertSettings, worker: Worker, tmp_path: Path
) -> None:
    output = Captured()
    code = await execute(["eval", UNKNOWN_RUN, str(write_config(tmp_path))], eval_settings, output=output)
    assert code == 1
    assert "ArtifactNotFoundError: run_id: run 'no-such-run' has no finished model" in output.stderr


@pytest.mark.parametrize(
    ("argv_run_id", "fields", "message"),
    [
        ("run-1", {"data_files": None}, "data_files: Value error, required when dataset_name is 'json'"),
        ("run-1", {"label_feild": "x"}, "label_feild: unknown field"),
        ("run-1", {"max_samples": 0}, "max_samples: Input should be greater than or equal to 1"),
        ("Bad Id", {}, "RUN_ID: must be 1-63 characters"),
    ],
)
async def test_bad_input_exits_2_before_temporal_is_contacted(
    tmp_path: Path, argv_run_id: str, fields: dict[str, object], message: str
) -> None:
    nowhere = DurabertSettings(temporal={"address": "127.0.0.1:9"}, artifact_root=tmp_path)
    output = Captured()
    code = await asyncio.wait_for(
        execute(["eval", argv_run_id, str(write_config(tmp_path, **fields))], nowhere, output=output), 10
    )
    assert code == 2
    assert message in output.stderr


def test_the_train_split_is_snapshotted_whole_in_seeded_order() -> None:
    request = BertEvaluationRequest(run_id="r", dataset_name="json", data_files="t.jsonl", max_samples=50)
    asked = request.snapshot_request()
    # No eval split named: a share is held out of train, and eval + train together are every row.
    assert (asked.eval_split_names, asked.max_train_samples, asked.max_eval_samples) == ([], 50, None)
    assert asked.shuffle_before_select


def test_workflow_ids_name_the_run_and_never_collide() -> None:
    assert evaluation_workflow_id("run-1", "0a1b2c3d") == "eval-run-1-0a1b2c3d"
    assert evaluation_workflow_id("run-1") != evaluation_workflow_id("run-1")
