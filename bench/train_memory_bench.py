"""Peak memory of a training child against the size of its snapshot.

Usage::

    .venv/bin/python bench/train_memory_bench.py [--rows 200000] [--folder DIR] [--python-path P]

Writes a snapshot of generated review-like rows once (about 600 characters of text a row, so
about 128 tokens each at ``max_seq_length`` 128), then a fresh Python process runs
``run_training`` on it the way the training child does: it reads the snapshot, tokenizes both
splits, trains a tiny BERT for a few steps and publishes the model. The parent samples the
child's ``/proc/<pid>/status`` every 20 ms:

- ``peak_anon``: the largest anonymous resident memory (heap: what the kernel cannot drop and
  what runs a pod out of memory);
- ``peak_rss``: the child's own ``ru_maxrss``, anonymous memory *and* the pages of memory-mapped
  files it touched (page cache, which the kernel reclaims under pressure).

``--python-path`` runs the child with other sources first on ``sys.path`` (an exported older
tree) to compare against earlier code. Prints one JSON line.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = ["the", "a", "film", "movie", "story", "plot", "acting", "director", "scenes", "cast", "was"]
WORDS += ["were", "is", "great", "dull", "moving", "tedious", "wonderful", "clumsy", "score", "ending"]

CHILD = """
import json, resource, sys, threading, time
from pathlib import Path
from durabert.gpu_worker.events import TrainJob
from durabert.gpu_worker.training import run_training
from durabert.shared.models import BertFineTuneConfig, BertFineTuneRequest, DatasetSnapshotResult
from durabert.shared.settings import DurabertSettings

root, model = Path(sys.argv[1]), sys.argv[2]
snapshot = DatasetSnapshotResult.model_validate_json((root / "snapshot.json").read_text())
config = BertFineTuneConfig(
    dataset_name="json", data_files="bench.jsonl", text_field="text", model_name=model, batch_size=16,
    max_seq_length=128, max_steps=20, checkpoint_steps=10, use_gpu=False, max_eval_samples=500,
)
settings = DurabertSettings(artifact_root=root / "artifacts", data_dir=root / "data", log_level="WARNING")
job = TrainJob(
    request=BertFineTuneRequest(run_id="memory-bench", config=config, dataset_snapshot=snapshot),
    settings=settings, device="cpu",
)
started = time.monotonic()
result = run_training(job, lambda event: None, threading.Event())
seconds = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_rss": peak, "seconds": seconds, "global_step": result.global_step}))
"""


def write_snapshot(root: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """Write ``snapshots/bench/`` (train and eval Parquet, manifest) and ``snapshot.json``; its figures."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from durabert.shared.models import DatasetSnapshotResult
    from durabert.shared.snapshot_layout import SnapshotFields, SnapshotManifest, SnapshotSource

    rng = random.Random(seed)
    folder = root / "artifacts" / "snapshots" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    text_bytes = 0
    for name, count in (("train", rows), ("eval", max(1000, rows // 20))):
        with pq.ParquetWriter(
            folder / f"{name}.parquet", pa.schema([("text", pa.string()), ("label", pa.int64())])
        ) as out:
            for start in range(0, count, 10_000):
                size = min(10_000, count - start)
                texts = [" ".join(rng.choice(WORDS) for _ in range(100)) for _ in range(size)]
                text_bytes += sum(len(text) for text in texts)
                labels = [rng.randint(0, 1) for _ in range(size)]
                out.write_table(pa.table({"text": texts, "label": pa.array(labels, pa.int64())}))
    snapshot = DatasetSnapshotResult(
        snapshot_id="bench",
        dataset_name="json",
        num_train_samples=rows,
        num_eval_samples=max(1000, rows // 20),
        data_hash="0" * 64,
        snapshot_timestamp="2026-01-01T00:00:00+00:00",
        snapshot_path="snapshots/bench",
        label_names=["negative", "positive"],
        text_field="text",
        label_field="label",
    )
    manifest = SnapshotManifest(
        format="durabert-snapshot-v1",
        snapshot_id="bench",
        data_hash=snapshot.data_hash,
        snapshot_timestamp=snapshot.snapshot_timestamp,
        created_by_run_id="bench",
        source=SnapshotSource(dataset_name="json", seed=42),
        fields=SnapshotFields(text_field="text", label_field="label"),
        label_names=snapshot.label_names,
        num_train_samples=snapshot.num_train_samples,
        num_eval_samples=snapshot.num_eval_samples,
    )
    (folder / "manifest.json").write_text(manifest.to_json())
    (root / "snapshot.json").write_text(snapshot.model_dump_json())
    parquet = sum(path.stat().st_size for path in folder.glob("*.parquet"))
    return {"rows": rows, "text_bytes": text_bytes, "parquet_bytes": parquet}


def _status(pid: int) -> dict[str, int]:
    """``RssAnon``/``RssFile`` of a process in bytes (empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("RssAnon", "RssFile") if key in fields}


def measure(root: Path, model: Path, python_path: str | None) -> dict[str, Any]:
    """Train on the snapshot under ``root`` in a fresh process; its peak memory and time."""
    shutil.rmtree(root / "artifacts" / "runs", ignore_errors=True)  # a fresh run every time
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(root / "hf-cache"))
    if python_path:
        env["PYTHONPATH"] = python_path
    # Files, not pipes: nobody reads a pipe while sampling, and a full one would stall the child.
    with (root / "child.out").open("w+") as out, (root / "child.err").open("w+") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(model)], env=env, stdout=out, stderr=err
        )
        peak_anon = peak_file = 0
        while child.poll() is None:
            status = _status(child.pid)
            peak_anon = max(peak_anon, status.get("RssAnon", 0))
            peak_file = max(peak_file, status.get("RssFile", 0))
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"training process failed ({child.returncode}):\n{err.read()[-3000:]}")
        figures: dict[str, Any] = json.loads(out.read().strip().splitlines()[-1])
    return {**figures, "peak_anon": peak_anon, "peak_file": peak_file}


def main() -> None:
    """Write the snapshot once, train on it in a fresh process, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="training rows of the snapshot")
    parser.add_argument("--folder", type=Path, help="keep the snapshot and model here (default: a temp dir)")
    parser.add_argument("--python-path", help="sources to put first on the child's sys.path (older code)")
    args = parser.parse_args()
    from support.tiny_model import save_tiny_bert

    with tempfile.TemporaryDirectory(prefix="train-memory-") as scratch:
        folder = args.folder or Path(scratch)
        model = folder / "tiny-bert"
        if not model.exists():
            save_tiny_bert(model)
        root = folder / f"rows-{args.rows}"
        sizes = json.loads((root / "sizes.json").read_text()) if (root / "sizes.json").exists() else None
        if sizes is None:
            sizes = write_snapshot(root, args.rows)
            (root / "sizes.json").write_text(json.dumps(sizes))
        figures = measure(root, model, args.python_path)
        mib = {key: round(value / 2**20) for key, value in figures.items() if key.startswith("peak")}
        print(json.dumps({**sizes, **figures, "mib": mib, "code": args.python_path or "this tree"}))


if __name__ == "__main__":
    main()
