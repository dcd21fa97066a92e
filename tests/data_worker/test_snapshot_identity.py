"""Snapshot identity: same content, same id, whatever the row order or chunking; any change, a new id."""

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dw_helpers import json_request, reviews

from durabert.data_worker.hashing import content_order, data_hash
from durabert.data_worker.snapshot import create_snapshot
from durabert.shared.artifacts import ArtifactStore

COLUMNS = ["text", "label"]


def _table(texts: list[str], labels: list[int], chunk: int | None = None, large: bool = False) -> pa.Table:
    text_type = pa.large_string() if large else pa.string()
    table = pa.table({"text": pa.array(texts, text_type), "label": pa.array(labels, pa.int64())})
    if chunk is None:
        return table
    return pa.Table.from_batches(table.to_batches(max_chunksize=chunk))


def _ordered_hash(table: pa.Table, seed: int = 42) -> str:
    ordered = table.take(pa.array(content_order(table, COLUMNS, seed)))
    return data_hash({"train": ordered}, COLUMNS, ["neg", "pos"])


def test_hash_ignores_row_order_chunking_and_offset_width() -> None:
    rng = random.Random(0)
    texts = ["", "a", "short", "exactly8", "a somewhat longer sentence about films"] + [
        " ".join(rng.choice(["good", "bad", "plot", "the", "movie"]) for _ in range(rng.randint(1, 12)))
        for _ in range(500)
    ]
    labels = [rng.randint(0, 1) for _ in texts]
    base = _ordered_hash(_table(texts, labels))
    permutation = list(range(len(texts)))
    rng.shuffle(permutation)
    shuffled = _table([texts[i] for i in permutation], [labels[i] for i in permutation], chunk=37, large=True)
    assert _ordered_hash(shuffled) == base
    assert _ordered_hash(_table(texts, labels, chunk=1)) == base


def test_short_rows_at_the_end_of_a_buffer_keep_their_own_bytes() -> None:
    # Rows shorter than a word near the buffer's end read clamped or wrapped windows; the
    # key must still depend only on the row (same hash in every order and chunking).
    texts = ["a long enough opening sentence", "x" * 17, "mid", "", "ab", "abcdefg", "abcdefgh", "z"]
    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    base = _ordered_hash(_table(texts, labels))
    for chunk in (1, 3):
        assert _ordered_hash(_table(texts[::-1], labels[::-1], chunk=chunk)) == base
    assert _ordered_hash(_table([*texts[:-1], "y"], labels)) != base


def test_one_changed_label_or_character_changes_the_hash() -> None:
    texts = [f"sentence number {i}" for i in range(200)]
    labels = [i % 2 for i in range(200)]
    base = _ordered_hash(_table(texts, labels))
    flipped = labels.copy()
    flipped[123] = 1 - flipped[123]
    assert _ordered_hash(_table(texts, flipped)) != base
    edited = texts.copy()
    edited[57] = edited[57].replace("number", "numbex")  # same length, same first and last 8 bytes
    assert _ordered_hash(_table(edited, labels)) != base


def test_hash_counts_duplicates_and_label_names() -> None:
    once = _table(["a film", "a film", "another film"], [1, 1, 0])
    twice = _table(["a film", "another film", "another film"], [1, 0, 0])
    assert _ordered_hash(once) != _ordered_hash(twice)
    ordered = once.take(pa.array(content_order(once, COLUMNS, 1)))
    assert data_hash({"train": ordered}, COLUMNS, ["neg", "pos"]) != data_hash(
        {"train": ordered}, COLUMNS, ["bad", "good"]
    )


def test_rows_with_colliding_keys_are_ordered_by_content() -> None:
    # Same length, same first and last 8 bytes, same label: the content key cannot tell
    # them apart, so only the exact tie-break keeps the order independent of the input.
    texts = [f"prefix__{chr(65 + i)}{chr(97 + i)}__suffix" for i in range(20)] + ["other row"] * 3
    labels = [0] * 20 + [1] * 3
    forward = _table(texts, labels)
    backward = _table(texts[::-1], labels[::-1])
    first = forward.take(pa.array(content_order(forward, COLUMNS, 7))).column("text").to_pylist()
    second = backward.take(pa.array(content_order(backward, COLUMNS, 7))).column("text").to_pylist()
    assert first == second
    assert sorted(first) == sorted(texts)


def test_content_order_is_a_seeded_shuffle() -> None:
    table = _table([f"row {i}" for i in range(1000)], [0] * 500 + [1] * 500)
    order = content_order(table, COLUMNS, 1)
    assert sorted(order.tolist()) == list(range(1000))
    assert not np.array_equal(order, content_order(table, COLUMNS, 2))
    # Both classes are spread over the order, not blocked as in the (label-sorted) input.
    head = table.take(pa.array(order[:50])).column("label").to_pylist()
    assert 10 < sum(head) < 40


def test_snapshot_ids_agree_across_files_and_order(local_settings, write_rows) -> None:
    rows = reviews(300)
    write_rows("one.jsonl", rows)
    shuffled = rows.copy()
    random.Random(3).shuffle(shuffled)
    write_rows("part-1.jsonl", shuffled[:120])
    write_rows("part-2.jsonl", shuffled[120:])
    changed = [dict(row) for row in rows]
    changed[10]["label"] = "negative" if changed[10]["label"] == "positive" else "positive"
    write_rows("changed.jsonl", changed)

    one = create_snapshot(json_request("one.jsonl"), local_settings).result
    parts = create_snapshot(json_request(["part-1.jsonl", "part-2.jsonl"]), local_settings).result
    other = create_snapshot(json_request("changed.jsonl"), local_settings).result
    assert parts.snapshot_id == one.snapshot_id
    assert parts.data_hash == one.data_hash
    assert parts.cache_hit
    assert other.snapshot_id != one.snapshot_id
    assert one.snapshot_id == one.data_hash[:16]
    assert (one.num_train_samples, one.num_eval_samples) == (270, 30)


def test_max_samples_after_a_seeded_shuffle_holds_both_classes(local_settings, write_rows) -> None:
    write_rows("sorted.jsonl", reviews(1000, sort_by_label=True))  # first ~430 rows all negative
    result = create_snapshot(
        json_request("sorted.jsonl", max_samples=100, max_eval_samples=40), local_settings
    )
    snapshot = result.result
    assert snapshot.label_names == ["negative", "positive"]
    assert (snapshot.num_train_samples, snapshot.num_eval_samples) == (100, 40)
    folder = ArtifactStore(local_settings.artifact_dir).resolve(snapshot.snapshot_path)
    train_labels = pq.read_table(folder / "train.parquet").column("label").to_pylist()
    eval_labels = pq.read_table(folder / "eval.parquet").column("label").to_pylist()
    assert set(train_labels) == {0, 1}
    assert set(eval_labels) == {0, 1}


@pytest.mark.parametrize("seed", [1, 2])
def test_seed_changes_the_sample_and_the_id(local_settings, write_rows, seed: int) -> None:
    write_rows("rows.jsonl", reviews(200))
    base = create_snapshot(json_request("rows.jsonl", max_samples=50, seed=0), local_settings).result
    other = create_snapshot(json_request("rows.jsonl", max_samples=50, seed=seed), local_settings).result
    assert other.snapshot_id != base.snapshot_id


def _pinned_rows() -> list[dict[str, str]]:
    return [
        {
            "sentence": f"pinned review {i}: the plot was {'sharp' if i % 3 else 'slow'} ({i * 37 % 101})",
            "label": ["neg", "pos", "mixed"][(i * 7) % 3],
        }
        for i in range(120)
    ]


PINNED_IDS = {
    "whole": ({}, "3d3a03388054bb89403c2ab2013855c0f0a1e2ba6d20b8e444794d5c70b31fc8", (108, 12)),
    "sampled": (
        {"max_train_samples": 50, "max_eval_samples": 10, "seed": 7},
        "8589a7e2179a1cf39799933829656aa303ea6781ce70d58d4b589932b72b08cd",
        (50, 10),
    ),
}
"""Hashes of fixed inputs as computed by the data worker of commit b90eab6 (before the contract's
renames and the memory work). Existing stores rely on them: a changed value means every stored
snapshot misses its cache and is written again under a new id."""


@pytest.mark.parametrize(("options", "digest", "rows"), PINNED_IDS.values(), ids=PINNED_IDS.keys())
def test_snapshot_ids_of_existing_stores_do_not_change(
    local_settings, write_rows, options: dict[str, int], digest: str, rows: tuple[int, int]
) -> None:
    write_rows("pinned.jsonl", _pinned_rows())
    result = create_snapshot(json_request("pinned.jsonl", **options), local_settings).result
    assert result.data_hash == digest
    assert result.snapshot_id == digest[:16]
    assert (result.num_train_samples, result.num_eval_samples) == rows


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_streamed_hash_equals_the_hash_of_the_taken_splits(chunk: int | None, monkeypatch) -> None:
    # The data worker hashes batch by batch (stream_hash) what take_and_hash hashes as whole tables;
    # tiny batches force many cuts, with rows straddling them.
    from durabert.data_worker import hashing

    monkeypatch.setattr(hashing, "ROW_BATCH_BYTES", 50)
    monkeypatch.setattr(hashing, "HASH_SLICE_BYTES", 30)
    rng = random.Random(5)
    texts = [
        "",
        "x",
        *(
            " ".join(rng.choice(["good", "bad", "plot"]) for _ in range(rng.randint(1, 9)))
            for _ in range(300)
        ),
    ]
    labels = [rng.randint(0, 1) for _ in texts]
    table = _table(texts, labels, chunk=chunk)
    order = content_order(table, COLUMNS, 3)
    splits = {"train": (table, order[40:]), "eval": (table, order[:40])}
    _, expected = hashing.take_and_hash(splits, COLUMNS, ["neg", "pos"])
    assert hashing.stream_hash(splits, COLUMNS, ["neg", "pos"]) == expected
    assert len(hashing.row_batches(table, order, COLUMNS)) > 10
