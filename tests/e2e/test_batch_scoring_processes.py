"""``durabert predict`` against real worker processes: a GPU worker SIGKILLed after some chunks
were stored complete is replaced, and the new one resumes at the first missing chunk; the Parquet
``--out`` receives holds every input row exactly once, in input order."""

import asyncio
import io
import json
import signal
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console
from temporalio.client import Client

from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.orchestrator.cli import Output, execute
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.object_store import MARKER_FILE
from support.cluster import Cluster
from support.datasets import write_reviews

pytestmark = pytest.mark.slow

ROWS = 1500
CHUNK_ROWS = 10


def publish_model(cluster: Cluster, tiny_model_dir: Path, run_id: str) -> None:
    """The tiny BERT with a two-label head, as a finished run's model folder."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = ArtifactStore(cluster.settings.artifact_dir).model_dir(run_id)
    BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    (folder / MODEL_MANIFEST).write_text(json.dumps({"run_id": run_id}))


def complete_chunks(cluster: Cluster, run_id: str) -> int:
    predictions = ArtifactStore(cluster.settings.artifact_dir).run_dir(run_id) / "predictions"
    return len(list(predictions.glob(f"*/chunks-*/*/{MARKER_FILE}")))


async def test_a_killed_gpu_worker_resumes_at_the_first_missing_chunk(
    client: Client, cluster: Cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run_id = f"scored-{uuid.uuid4().hex[:6]}"
    publish_model(cluster, tiny_model_dir, run_id)
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
