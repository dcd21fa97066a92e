"""Peak resident memory of one dataset snapshot against the dataset's Arrow size.

Usage::

    .venv/bin/python bench/snapshot_memory_bench.py [--sizes-mb 100 500 1000] [--folder DIR]

For each size a JSON Lines file of generated review-like rows (about 120 bytes of text, a
string label) is written once, then a fresh Python process runs ``create_snapshot`` on it the
way the data worker does (a fresh ``datasets`` cache, so the JSON is parsed into Arrow as in
production) and reports its own peak resident set (``ru_maxrss``: anonymous memory *and* the
pages of the memory-mapped Arrow cache it touched) and the loaded dataset's Arrow size. A
tiny dataset measures the fixed part (Python, ``datasets``, ``pyarrow``, the worker's modules).

``--python-path`` runs the snapshot with other sources first on ``sys.path`` (e.g. an
exported older tree) to compare against earlier code. Prints one JSON line per size.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WORDS = ["the", "a", "film", "movie", "story", "plot", "acting", "director", "scenes", "cast"]
WORDS += ["was", "were", "is", "great", "dull", "moving", "tedious"]

CHILD = """
import json, resource, sys, time
from pathlib import Path
from durabert.data_worker.snapshot import create_snapshot
from durabert.shared.models import DatasetSnapshotRequest
from durabert.shared.settings import DurabertSettings

root, data = Path(sys.argv[1]), Path(sys.argv[2])
settings = DurabertSettings(artifact_root=root / "artifacts", data_dir=data.parent)
request = DatasetSnapshotRequest(run_id="memory-bench", dataset_name="json", data_files=str(data))
started = time.monotonic()
result = create_snapshot(request, settings).result
seconds = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # after the peak: reads no pages
from datasets import load_dataset
arrow = load_dataset("json", data_files=str(data))["train"].data.nbytes  # cached: metadata only
figures = {"peak_rss": peak, "arrow_bytes": arrow, "seconds": seconds, "snapshot_id": result.snapshot_id}
print(json.dumps(figures))
"""


def write_rows(path: Path, target_bytes: int, seed: int = 0) -> int:
    """Write review-like JSON lines until the file holds about ``target_bytes``; return the row count."""
    rng = random.Random(seed)
    rows = written = 0
    with path.open("w", encoding="utf-8") as handle:
        while written < target_bytes:
            lines = []
            for _ in range(10_000):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))) + f" #{rows}"
                lines.append(json.dumps({"text": text, "label": "pos" if rng.random() < 0.5 else "neg"}))
                rows += 1
            block = "\n".join(lines) + "\n"
            handle.write(block)
            written += len(block)
    return rows


def measure(data: Path, python_path: str | None) -> dict[str, Any]:
    """Snapshot ``data`` in a fresh process with a fresh datasets cache; its figures as a dict."""
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as root:
        env = dict(os.environ, HF_DATASETS_CACHE=str(Path(root) / "hf-cache"), HF_DATASETS_OFFLINE="1")
        if python_path:
            env["PYTHONPATH"] = python_path
        command = [sys.executable, "-c", CHILD, root, str(data)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"snapshot process failed ({done.returncode}):\n{done.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return figures


def main() -> None:
    """Measure each size and print one JSON line per measurement."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes-mb", type=int, nargs="+", default=[100, 500, 1000], help="JSON sizes to generate"
    )
    parser.add_argument("--folder", type=Path, default=None, help="where the generated files are kept")
    parser.add_argument("--python-path", default=None, help="PYTHONPATH of the snapshot process (older code)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="memory-bench-data-"))
    folder.mkdir(parents=True, exist_ok=True)
    tiny = folder / "tiny.jsonl"
    if not tiny.exists():
        write_rows(tiny, 100_000)
    base = measure(tiny, args.python_path)
    print(json.dumps({"size": "baseline (tiny)", **base}), flush=True)
    for size in args.sizes_mb:
        data = folder / f"reviews-{size}mb.jsonl"
        if not data.exists():
            write_rows(data, size << 20)
        figures = measure(data, args.python_path)
        ratio = (figures["peak_rss"] - base["peak_rss"]) / figures["arrow_bytes"]
        figures |= {"size": f"{size} MB json", "above_baseline_per_arrow_byte": round(ratio, 3)}
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
