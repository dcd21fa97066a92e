"""The three workers as separate processes, started by their console scripts, as in production.

Inference is answered while the only training slot trains, cancelling from the CLI frees the GPU,
two runs sharing one GPU slot train one after the other, and batch scoring resumes after a SIGKILL
at the first missing chunk. Killed and preempted GPU workers are
the subject of ``test_object_store_processes`` (a SIGKILL, resumed on another machine through the
bucket), ``reliability/test_faults`` (the chaos soak's SIGKILLs) and
``reliability/test_long_runs_preemptions`` (six SIGTERMs).
"""

import asyncio
import io
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.orchestrator.cli import Output, execute
from durabert.orchestrator.inference_ops import run_inference
from durabert.shared import names
from durabert.shared.artifacts import ArtifactStore, write_json_atomic
from durabert.shared.models import BertInferenceRequest
from durabert.shared.object_store import MARKER_FILE
from support.cluster import (
    Cluster,
    wait_progress,
)
from support.datasets import write_reviews
from support.processes import WorkerProcess

pytestmark = pytest.mark.slow


async def _fine_tune_span(handle: WorkflowHandle[Any, Any]) -> tuple[Any, Any]:
    """When the run's fine-tuning activity started and completed, from the workflow history."""
    fine_tune_ids: set[int] = set()
    started = completed = None
    async for event in handle.fetch_history_events():
        kind = event.event_type
        scheduled = event.activity_task_scheduled_event_attributes
        if (
            kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and scheduled.activity_type.name == names.FINE_TUNE_BERT
        ):
            fine_tune_ids.add(event.event_id)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            if event.activity_task_started_event_attributes.scheduled_event_id in fine_tune_ids:
                started = event.event_time.ToDatetime()
        elif (
            kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            and event.activity_task_completed_event_attributes.scheduled_event_id in fine_tune_ids
        ):
            completed = event.event_time.ToDatetime()
    return started, completed


def publish_finished_model(cluster: Cluster, model_dir: Path, run_id: str) -> None:
    """Lay out a two-label classifier from ``model_dir`` as a finished run's model folder."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = cluster.run_dir(run_id) / "model"
    labels = {0: "negative", 1: "positive"}
    model = BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label=labels, label2id={name: index for index, name in labels.items()}
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    write_json_atomic(folder / MODEL_MANIFEST, {"run_id": run_id})


async def test_inference_is_answered_while_training_and_cancel_frees_the_gpu(
    client: Client, cluster: Cluster, gpu_worker: WorkerProcess, tiny_model_dir: Path
) -> None:
    # One long run and one test: starting a second one would cost the suite a training start.
    served = f"served-{uuid.uuid4().hex[:6]}"
    publish_finished_model(cluster, tiny_model_dir, served)
    run_id = f"cancel-{uuid.uuid4().hex[:6]}"
    handle = await cluster.start_run(client, cluster.config(run_id, tiny_model_dir, max_steps=5000))
    training = await wait_progress(handle, lambda p: p.step > 0)
    started = gpu_worker.wait_for(lambda line: line.get("event") == "training process started", 5)

    # The only training slot is busy; inference has slots of its own on the same worker.
    texts = ["a wonderful film", "a dull script", "superb cast"]
    request = BertInferenceRequest(run_id=served, texts=texts, use_gpu=False, queue_timeout_seconds=30)
    answer = await asyncio.wait_for(run_inference(client, cluster.settings, request), timeout=120)
    assert answer.texts == texts
    assert set(answer.predicted_label_names) <= {"negative", "positive"}
    assert len(answer.confidences) == len(texts)
    still = await wait_progress(handle, lambda p: p.step > training.step)
    assert still.stage == "training"  # it kept training while inference answered

    code = await execute(["cancel", run_id, "--wait"], settings=cluster.settings)

    assert code == 0
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.CANCELED
    # The workflow waited for the worker to acknowledge: by now training has stopped and
    # its process is gone, with a checkpoint to resume from.
    stopped = gpu_worker.wait_for(lambda line: line.get("event") == "training stopped", 5)
    assert stopped["checkpoint"] is not None
    assert not Path(f"/proc/{started['pid']}").exists()
    assert gpu_worker.process is not None
    assert gpu_worker.process.poll() is None  # the worker itself keeps serving


async def test_two_runs_share_one_gpu_slot_one_after_the_other(
    client: Client, cluster: Cluster, gpu_worker: WorkerProcess, tiny_model_dir: Path
) -> None:
    handles = [
        await cluster.start_run(
            client, cluster.config(f"slot-{i}-{uuid.uuid4().hex[:6]}", tiny_model_dir, max_steps=10)
        )
        for i in range(2)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout=240)
    assert [r.global_step for r in results] == [10, 10]

    (start_a, end_a), (start_b, end_b) = [await _fine_tune_span(h) for h in handles]
    assert None not in (start_a, end_a, start_b, end_b)
    # One slot: the second fine-tuning started only after the first completed.
    assert end_a <= start_b or end_b <= start_a


# Batch scoring (`durabert predict`): a GPU worker SIGKILLed after some chunks were stored complete
# is replaced; the new one resumes at the first missing chunk, and the Parquet `--out` receives
# holds every input row exactly once, in input order.

ROWS = 600
CHUNK_ROWS = 10


def complete_chunks(cluster: Cluster, run_id: str) -> int:
    predictions = ArtifactStore(cluster.settings.artifact_dir).run_dir(run_id) / "predictions"
    # Not a chunk still under its hidden temporary name: complete means renamed into place.
    markers = predictions.glob(f"*/chunks-*/*/{MARKER_FILE}")
    return sum(not marker.parent.name.startswith(".") for marker in markers)


async def test_batch_scoring_resumes_at_the_first_missing_chunk_after_a_sigkill(
    client: Client, cluster: Cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run_id = f"scored-{uuid.uuid4().hex[:6]}"
    publish_finished_model(cluster, tiny_model_dir, run_id)
    data = write_reviews(cluster.settings.data_dir / f"{run_id}.jsonl", rows=ROWS)
    config = tmp_path / "predict.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset_name": "json",
                "data_files": str(data),
                "text_field": "sentence",
                "chunk_rows": CHUNK_ROWS,
                "batch_size": 8,
                "max_seq_length": 32,
                "use_gpu": False,
                "heartbeat_timeout_seconds": 5,
            }
        )
    )
    out = tmp_path / "out" / "predictions.parquet"
    stdout, stderr = io.StringIO(), io.StringIO()
    output = Output(out=Console(file=stdout, width=200), err=Console(file=stderr, width=200))
    first = cluster.start("gpu")
    predict = asyncio.ensure_future(
        execute(
            ["predict", run_id, str(config), "--out", str(out), "--interval", "0.2", "--json"],
            settings=cluster.settings,
            output=output,
        )
    )
    while complete_chunks(cluster, run_id) < 3:
        assert not predict.done(), stderr.getvalue()
        await asyncio.sleep(0.02)
    first.signal(signal.SIGKILL)
    first.wait(10)
    done = complete_chunks(cluster, run_id)
    assert done < ROWS // CHUNK_ROWS, "scoring finished before the kill; the test needs more rows"
    cluster.start("gpu")
    assert await asyncio.wait_for(predict, 120) == 0, stderr.getvalue()

    table = pq.read_table(out)
    expected = [json.loads(line)["sentence"] for line in data.read_text().splitlines()]
    assert table.column("row_index").to_pylist() == list(range(ROWS))
    assert table.column("text").to_pylist() == expected
    result = json.loads(stdout.getvalue())
    assert result["num_rows"] == ROWS
    assert result["chunks"] == ROWS // CHUNK_ROWS
    assert result["resumed_chunks"] >= done > 0
    assert f"predictions copied to {out}" in stderr.getvalue()
