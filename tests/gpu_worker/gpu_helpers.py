"""Helpers for the GPU worker tests: snapshots written the way the data worker lays them out."""

import random
from pathlib import Path

from durabert.gpu_worker.events import TrainJob
from durabert.shared.models import BertFineTuneConfig, BertFineTuneRequest, DatasetSnapshotResult
from durabert.shared.settings import DurabertSettings
from durabert.shared.snapshot_layout import MANIFEST_FILE, SnapshotFields, SnapshotManifest, SnapshotSource

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
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "snapshots" / snapshot_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", train_rows, 1), ("eval", eval_rows, 2)):
        texts, labels = _rows(count, seed)
        pq.write_table(
            pa.table({"sentence": texts, "label": pa.array(labels, pa.int64())}), folder / f"{name}.parquet"
        )
    result = DatasetSnapshotResult(
        snapshot_id=snapshot_id,
        dataset_name="json",
        num_train_samples=train_rows,
        num_eval_samples=eval_rows,
        data_hash="0" * 64,
        snapshot_timestamp="2026-01-01T00:00:00+00:00",
        snapshot_path=f"snapshots/{snapshot_id}",
        label_names=["negative", "positive"],
        text_field="sentence",
        label_field="label",
    )
    manifest = SnapshotManifest(
        format="durabert-snapshot-v1",
        snapshot_id=result.snapshot_id,
        data_hash=result.data_hash,
        snapshot_timestamp=result.snapshot_timestamp,
        created_by_run_id="test",
        source=SnapshotSource(dataset_name=result.dataset_name, seed=42),
        fields=SnapshotFields(text_field=result.text_field, label_field=result.label_field),
        label_names=result.label_names,
        num_train_samples=result.num_train_samples,
        num_eval_samples=result.num_eval_samples,
    )
    (folder / MANIFEST_FILE).write_text(manifest.to_json())
    return result


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
