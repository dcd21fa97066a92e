"""Batch scoring: every row once, in input order, with the labels online inference gives; a run
stopped mid-way resumes at the first missing chunk; a chunk without its marker is never used; a
finished output is reused; an unknown run is refused."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.inference import classify_texts
from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.gpu_worker.scoring import plan_chunks
from durabert.gpu_worker.scoring_activities import ScoringActivities
from durabert.gpu_worker.scoring_store import PREDICTIONS_FILE, PredictionStore, model_digest
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import ErrorType
from durabert.shared.models import (
    SCORING_ROWS_FILE,
    BatchScoringRequest,
    BertBatchInferenceRequest,
    ScoringSnapshotResult,
)
from durabert.shared.object_store import MARKER_FILE
from durabert.shared.settings import DurabertSettings

ROWS = 23
CHUNK_ROWS = 5
WORDS = ["wonderful", "dull", "a lovely and moving score with a superb cast", "boring", "fine"]


def texts(count: int = ROWS) -> list[str]:
    # Lengths vary, so sorting by length inside a chunk really reorders the texts.
    return [f"{index} {WORDS[index % len(WORDS)]} " + "x" * (index % 7) for index in range(count)]


def publish_tiny_model(root, tiny_model_dir, run_id: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = ArtifactStore(root).model_dir(run_id)
    labels = {0: "negative", 1: "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    (folder / MODEL_MANIFEST).write_text(json.dumps({"run_id": run_id}))


def write_scoring_snapshot(root, rows: list[str], snapshot_id: str = "scoresnap") -> ScoringSnapshotResult:
    folder = ArtifactStore(root).snapshot_dir(snapshot_id)
    folder.mkdir(parents=True)
    table = pa.table({"row_index": pa.array(range(len(rows)), pa.int64()), "text": rows})
    pq.write_table(table, folder / SCORING_ROWS_FILE)
    return ScoringSnapshotResult(
        snapshot_id=snapshot_id, snapshot_path=f"snapshots/{snapshot_id}", num_rows=len(rows), data_hash="h"
    )


@pytest.fixture(scope="module")
def served_root(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("scoring")
    publish_tiny_model(root, tiny_model_dir, "served")
    return root


def scoring_request(
    root, run_id: str = "served", snapshot_id: str = "scoresnap", **overrides
) -> BatchScoringRequest:
    snapshot_dir = ArtifactStore(root).snapshot_dir(snapshot_id)
    snapshot = (
        write_scoring_snapshot(root, texts(), snapshot_id)
        if not snapshot_dir.exists()
        else ScoringSnapshotResult(
            snapshot_id=snapshot_id, snapshot_path=f"snapshots/{snapshot_id}", num_rows=ROWS, data_hash="h"
        )
    )
    request = BertBatchInferenceRequest.model_validate(
        {
            "run_id": run_id,
            "dataset_name": "json",
            "data_files": "unused.jsonl",
            "use_gpu": False,
            "chunk_rows": CHUNK_ROWS,
            "batch_size": 4,
            "max_seq_length": 32,
        }
        | overrides
    )
    return BatchScoringRequest(request=request, snapshot=snapshot)


def scoring_for(root) -> ScoringActivities:
    settings = DurabertSettings(artifact_root=root, data_dir=root / "data")
    return ScoringActivities(settings, GpuActivities(settings).cache)


async def score(activities: ScoringActivities, request: BatchScoringRequest):
    return await ActivityEnvironment().run(activities.score_dataset, request)


def read_output(root, result) -> pa.Table:
    return pq.read_table(ArtifactStore(root).resolve(result.output_path))


async def test_every_row_once_in_input_order_with_the_online_labels(served_root):
    activities = scoring_for(served_root)
    result = await score(activities, scoring_request(served_root, snapshot_id="order"))
    output = read_output(served_root, result)
    assert result.num_rows == ROWS
    assert result.chunks == len(plan_chunks(ROWS, CHUNK_ROWS)) == 5
    assert result.resumed_chunks == 0
    assert result.output_path == f"runs/served/predictions/order/{PREDICTIONS_FILE}"
    assert output.column_names == ["row_index", "text", "label", "label_name", "confidence"]
    assert output.column("row_index").to_pylist() == list(range(ROWS))
    assert output.column("text").to_pylist() == texts()
    loaded = activities.cache.get("served", "cpu")
    expected = classify_texts(loaded, texts(), 32)
    assert output.column("label").to_pylist() == [p.label for p in expected]
    assert output.column("label_name").to_pylist() == [loaded.label_names[p.label] for p in expected]
    assert output.column("confidence").to_pylist() == pytest.approx(
        [p.confidence for p in expected], abs=1e-5
    )
    # The chunks are gone once the output holds them.
    assert not list(
        (ArtifactStore(served_root).run_dir("served") / "predictions" / "order").glob("chunks-*/*")
    )


async def test_a_finished_output_is_reused_at_once(served_root):
    activities = scoring_for(served_root)
    first = await score(activities, scoring_request(served_root, snapshot_id="reuse"))
    path = ArtifactStore(served_root).resolve(first.output_path)
    written = path.stat().st_mtime_ns
    second = await score(activities, scoring_request(served_root, snapshot_id="reuse"))
    assert second.resumed_chunks == second.chunks == first.chunks
    assert path.stat().st_mtime_ns == written


async def test_stopped_mid_way_it_resumes_at_the_first_missing_chunk(served_root, monkeypatch):
    activities = scoring_for(served_root)
    saved: list[str] = []
    original = PredictionStore.save_chunk

    def save_then_die(self, name, table):
        if len(saved) == 2:
            raise RuntimeError("worker killed")  # after two chunks were stored complete
        original(self, name, table)
        saved.append(name)

    monkeypatch.setattr(PredictionStore, "save_chunk", save_then_die)
    with pytest.raises(RuntimeError, match="worker killed"):
        await score(activities, scoring_request(served_root, snapshot_id="resume"))
    monkeypatch.setattr(PredictionStore, "save_chunk", original)
    result = await score(scoring_for(served_root), scoring_request(served_root, snapshot_id="resume"))
    assert result.resumed_chunks == 2
    output = read_output(served_root, result)
    assert output.column("row_index").to_pylist() == list(range(ROWS))
    assert output.column("text").to_pylist() == texts()


async def test_a_chunk_without_its_marker_is_scored_again(served_root):
    activities = scoring_for(served_root)
    request = scoring_request(served_root, snapshot_id="nomarker")
    first = await score(activities, request)
    good = read_output(served_root, first)
    # Fake a killed writer: a chunk folder under its final name with other labels and no marker.
    output = ArtifactStore(served_root).resolve(first.output_path)
    output.unlink()
    folder = output.parent / f"chunks-{model_digest(ArtifactStore(served_root).model_dir('served'))}"
    folder = folder / plan_chunks(ROWS, CHUNK_ROWS)[0].name
    folder.mkdir(parents=True)
    bogus = good.slice(0, CHUNK_ROWS).set_column(3, "label_name", pa.array(["bogus"] * CHUNK_ROWS))
    pq.write_table(bogus, folder / PREDICTIONS_FILE)
    assert not (folder / MARKER_FILE).exists()
    second = await score(activities, request)
    assert second.resumed_chunks == 0
    assert (
        read_output(served_root, second).column("label_name").to_pylist()
        == good.column("label_name").to_pylist()
    )


async def test_an_unknown_run_is_refused_as_not_found(served_root):
    with pytest.raises(ApplicationError) as caught:
        await score(
            scoring_for(served_root), scoring_request(served_root, run_id="nobody", snapshot_id="unknown")
        )
    assert caught.value.type == ErrorType.NOT_FOUND
