"""Snapshot hashing throughput: durabert's content order + Arrow-buffer SHA-256 against the original design's
row-by-row hashing and against plain ``hashlib.sha256`` over the same bytes (the limit).

Usage::

    .venv/bin/python bench/snapshot_bench.py [--rows 1000000] [--seed-rows 50000] [--repeat 3]

* ours: what identifies a snapshot once labels are ids, as ``create_snapshot`` runs it: one
  ``combine_chunks``, the seeded content order (``content_order``), and ``take_and_hash``
  (the take into stored order, overlapped with the SHA-256 of the result).
* seed: the tutorial's loop, ``train[idx]`` per row on a ``datasets.Dataset`` and two
  ``sha256.update`` calls per row. It is timed on the first ``--seed-rows`` rows and its
  rows/s extrapolated to the whole set (a full run takes minutes and scales linearly).
* plain: one ``hashlib.sha256`` over the bytes ``data_hash`` reads (text bytes, lengths, label
  ids), already concatenated in memory: no ordering and no Arrow at all.

Best of ``--repeat`` runs is reported for ours (per stage) and plain: the machine is shared.
"""

import argparse
import hashlib
import json
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from durabert.data_worker.hashing import content_order, data_hash, take_and_hash

WORDS = [
    "the",
    "a",
    "film",
    "movie",
    "story",
    "plot",
    "acting",
    "director",
    "scenes",
    "characters",
    "is",
    "was",
    "and",
    "but",
    "with",
    "of",
    "to",
    "in",
    "funny",
    "charming",
    "dull",
    "boring",
    "brilliant",
    "tedious",
    "moving",
    "clever",
    "predictable",
    "heartfelt",
    "uneven",
    "performance",
    "script",
    "pacing",
    "ending",
    "visual",
    "score",
    "cast",
    "never",
    "always",
    "rarely",
    "often",
    "quite",
    "too",
]
COLUMNS = ["sentence", "label"]


def generate(rows: int, seed: int = 0) -> pa.Table:
    """Review-like rows: 6-34 random words (about 110 characters, as the demo data) and a 0/1 label."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(6, 35, rows)
    words = np.array(WORDS)[rng.integers(0, len(WORDS), int(counts.sum()))].tolist()
    sentences, position = [], 0
    for count in counts.tolist():
        sentences.append(" ".join(words[position : position + count]))
        position += count
    labels = rng.integers(0, 2, rows)
    # Chunked as datasets stores data (1,000-row record batches), so ours pays for chunking too.
    table = pa.table({"sentence": pa.array(sentences, pa.string()), "label": pa.array(labels, pa.int64())})
    return pa.Table.from_batches(table.to_batches(max_chunksize=1000))


def best_of(repeat: int, work: Callable[[], object]) -> float:
    """Best wall time of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def ours(table: pa.Table) -> dict[str, float]:
    """Combine, order, take and hash, as ``create_snapshot`` does; returns each stage's seconds."""
    stages: dict[str, float] = {}
    started = time.perf_counter()
    combined = table.combine_chunks()
    stages["combine"] = time.perf_counter() - started
    order = content_order(combined, COLUMNS, 42)
    stages["order"] = time.perf_counter() - started - stages["combine"]
    stored, _ = take_and_hash({"train": (combined, order)}, COLUMNS, ["0", "1"])
    stages["take_and_hash"] = time.perf_counter() - started - stages["combine"] - stages["order"]
    hash_started = time.perf_counter()
    data_hash(stored, COLUMNS, ["0", "1"])  # the hash stage alone, over the stored table
    stages["hash_only"] = time.perf_counter() - hash_started
    stages["total"] = stages["combine"] + stages["order"] + stages["take_and_hash"]
    return stages


def seed_approach(table: pa.Table, rows: int) -> str:
    """The original design's loop: index the dataset row by row, hash two fields per row."""
    from datasets import Dataset

    train = Dataset(table.slice(0, rows))
    digest = hashlib.sha256()
    for idx in range(len(train)):
        row = train[idx]
        digest.update(str(row["sentence"]).encode("utf-8"))
        digest.update(str(row["label"]).encode("utf-8"))
    return digest.hexdigest()


def same_bytes(table: pa.Table) -> bytes:
    """The bytes ``data_hash`` reads, concatenated once (outside the timing)."""
    text = table.column("sentence").combine_chunks()
    offsets = np.frombuffer(text.buffers()[1], np.int32)[text.offset : text.offset + len(text) + 1]
    data = text.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets).astype("<u8").tobytes()
    labels = table.column("label").to_numpy().astype("<i8").tobytes()
    return lengths + data + labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed-rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    table = generate(args.rows)
    payload = same_bytes(table)
    runs = [ours(table) for _ in range(args.repeat)]
    best = {stage: min(run[stage] for run in runs) for stage in runs[0]}
    ours_s = best["total"]  # the fastest whole run (each stage's best is reported beside it)
    plain_s = best_of(args.repeat, lambda: hashlib.sha256(payload).hexdigest())
    seed_rows = min(args.seed_rows, args.rows)
    seed_s = best_of(1, lambda: seed_approach(table, seed_rows))

    rate = {"ours": args.rows / ours_s, "seed": seed_rows / seed_s, "plain": args.rows / plain_s}
    report = {
        "rows": args.rows,
        "bytes_hashed": len(payload),
        "mean_sentence_bytes": round(
            table.column("sentence").combine_chunks().buffers()[2].size / args.rows, 1
        ),
        "seconds": {
            "ours": round(ours_s, 3),
            "ours_stages": {stage: round(value, 3) for stage, value in best.items() if stage != "total"},
            "plain": round(plain_s, 3),
            f"seed_{seed_rows}_rows": round(seed_s, 3),
        },
        "rows_per_second": {name: round(value) for name, value in rate.items()},
        "seed_extrapolated_seconds": round(args.rows / rate["seed"], 1),
        "ours_vs_seed": round(rate["ours"] / rate["seed"], 1),
        "plain_vs_ours": round(rate["plain"] / rate["ours"], 2),
        "plain_vs_hash_stage": round(best["hash_only"] / plain_s, 2),
        "goals": {
            "ours_vs_seed >= 20": rate["ours"] / rate["seed"] >= 20,
            "plain_vs_ours <= 3": rate["plain"] / rate["ours"] <= 3,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
