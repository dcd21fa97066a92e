"""Batch scoring (``durabert predict``'s GPU side) against a plain ``transformers.pipeline``.

Both score the same texts with the real packaged MiniLM (a 2-label head, published as a finished
run's model): ours through :func:`durabert.gpu_worker.scoring.score_dataset` (warm model cache,
chunks stored complete-or-not with their markers, the output Parquet assembled and renamed into
place), the baseline as ``pipeline("text-classification", batch_size=32)`` over the list. The sides
alternate each repeat; the medians of rows/s and their ratio are printed as JSON.

    uv run --no-sync python bench/batch_scoring_bench.py --rows 50000 --repeat 1
"""

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.scoring import ScoringJob, ScoringState, score_dataset
from durabert.gpu_worker.scoring_store import PredictionStore, model_digest
from durabert.shared.models import SCORING_ROWS_FILE, BertBatchInferenceRequest, ScoringSnapshotResult
from durabert.shared.settings import DurabertSettings
from inference_bench import publish_model
from train_bench import make_texts

RUN_ID = "bench"
BATCH_SIZE = 32


def write_rows(root: Path, texts: list[str], snapshot_id: str) -> ScoringSnapshotResult:
    folder = root / "snapshots" / snapshot_id
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"row_index": list(range(len(texts))), "text": texts}), folder / SCORING_ROWS_FILE
    )
    return ScoringSnapshotResult(
        snapshot_id=snapshot_id, snapshot_path=f"snapshots/{snapshot_id}", num_rows=len(texts), data_hash="-"
    )


def ours(root: Path, texts: list[str], chunk_rows: int, repeat: int) -> float:
    """Rows/s of batch scoring, a fresh output folder each repeat (nothing reused)."""
    settings = DurabertSettings(artifact_root=root, data_dir=root / "data")
    cache = GpuActivities(settings).cache
    loaded = cache.get(RUN_ID, "cpu")
    snapshot = write_rows(root, texts, f"snap{repeat}")
    request = BertBatchInferenceRequest(
        run_id=RUN_ID,
        dataset_name="json",
        data_files="-",
        use_gpu=False,
        chunk_rows=chunk_rows,
        batch_size=BATCH_SIZE,
    )
    store = PredictionStore(
        cache.store, None, RUN_ID, snapshot.snapshot_id, model_digest(cache.store.model_dir(RUN_ID))
    )
    rows = pq.read_table(root / snapshot.snapshot_path / SCORING_ROWS_FILE)
    started = time.perf_counter()
    score_dataset(ScoringJob(request, snapshot, rows, loaded, store), ScoringState())
    return len(texts) / (time.perf_counter() - started)


def pipeline_rate(model_dir: Path, texts: list[str]) -> float:
    """Rows/s of a plain pipeline over the same texts (model loaded before the clock starts)."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model_dir), device="cpu", batch_size=BATCH_SIZE)
    started = time.perf_counter()
    classify(texts, truncation=True, max_length=128)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    args = parser.parse_args()
    texts, _ = make_texts(args.rows, seed=0)
    root = Path(tempfile.mkdtemp(prefix="batch-scoring-bench-"))
    try:
        model_dir = publish_model(root, RUN_ID)
        rates: dict[str, list[float]] = {"durabert": [], "pipeline": []}
        for repeat in range(args.repeat):
            sides = ["durabert", "pipeline"] if repeat % 2 == 0 else ["pipeline", "durabert"]
            for side in sides:
                rate = (
                    ours(root, texts, args.chunk_rows, repeat)
                    if side == "durabert"
                    else pipeline_rate(model_dir, texts)
                )
                rates[side].append(rate)
        medians = {side: statistics.median(values) for side, values in rates.items()}
        report: dict[str, Any] = {
            "rows": args.rows,
            "repeat": args.repeat,
            "chunk_rows": args.chunk_rows,
            "batch_size": BATCH_SIZE,
            "rows_per_second": {side: round(value, 1) for side, value in medians.items()},
            "ratio_durabert_to_pipeline": round(medians["durabert"] / medians["pipeline"], 3),
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
