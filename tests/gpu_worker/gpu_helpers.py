"""Helpers for the GPU worker tests: snapshots written the way the data worker lays them out."""

import random
from pathlib import Path

from durabert.gpu_worker.events import TrainJob
from durabert.shared.models import BertFineTuneConfig, BertFineTuneRequest, DatasetSnapshotResult
from durabert.shared.settings import DurabertSettings
from support.snapshots import write_parquet_snapshot

POSITIVE = ["wonderful", "moving", "brilliant", "funny", "gripping", "lovely", "superb", "charming"]
NEGATIVE = ["dull", "clumsy", "boring", "tedious", "awful", "bland", "messy", "lifeless"]
NOUNS = ["film", "story", "cast", "script", "ending", "score", "pacing", "direction"]


def _rows(count: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(count):
        label = index % 2
        word = rng.choice(NEGATIVE if label == 0 else POSITIVE)
        texts.append(f"the {rng.choice(NOUNS)} was {word} and the {rng.choice(NOUNS)} felt {word}")
        labels.append(label)
    return texts, labels


def write_snapshot(root: Path, train_rows: int = 64, eval_rows: int = 16, snapshot_id: str = "snap-test"):
    """Write ``snapshots/<id>/`` with train/eval parquet and a manifest; return its result model."""
    return write_parquet_snapshot(
        root,
        _rows(train_rows, 1),
        _rows(eval_rows, 2),
        snapshot_id=snapshot_id,
        text_field="sentence",
        dataset_name="json",
    )


def make_request(
    model_dir: Path, snapshot: DatasetSnapshotResult, run_id: str = "run-1", **config: object
) -> BertFineTuneRequest:
    """A fine-tune request for the tiny model: small batches, CPU, frequent checkpoints."""
    options: dict[str, object] = {
        "dataset_name": "json",
        "data_files": "unused.jsonl",
        "text_field": "sentence",
        "model_name": str(model_dir),
        "batch_size": 8,
        "max_seq_length": 32,
        "num_epochs": 2,
        "checkpoint_steps": 4,
        "save_total_limit": 2,
        "use_gpu": False,
        "learning_rate": 1e-3,
        **config,
    }
    return BertFineTuneRequest(run_id=run_id, config=BertFineTuneConfig(**options), dataset_snapshot=snapshot)


def make_job(request: BertFineTuneRequest, settings: DurabertSettings, attempt: int = 1) -> TrainJob:
    """A training job on CPU."""
    return TrainJob(request=request, settings=settings, device="cpu", attempt=attempt)
