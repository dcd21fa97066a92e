"""Content order and content hash of a snapshot, computed over Arrow buffers with numpy.

Identity must not depend on how the source was chunked or in which order it listed its
rows, so nothing here looks at the input order:

* :func:`content_order` sorts rows by a seeded 64-bit key computed from each row's content
  (length and leading and trailing bytes of every text, and the label). Sorting by a seeded
  content key *is* a seeded shuffle, but one that only the multiset of rows decides. Rows
  whose keys collide are ordered by their full content, so the order is exact, not likely.
* :func:`data_hash` is SHA-256 over the stored splits in that order: a JSON header (format,
  columns, label names, row counts), then per split and column every value's length and
  then the values' bytes, streamed buffer by buffer (never row by row in Python).

Together: the same multiset of rows, fields, label names and seed gives the same hash; one
changed label or character gives a different one.
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HASH_FORMAT: Final = "durabert-snapshot-v1"
"""Version of the hashed byte layout; bump it whenever the layout or the content order changes."""
SNAPSHOT_ID_LENGTH: Final = 16
"""Hex characters of the hash that form the snapshot id (64 bits)."""
HASH_SLICE_BYTES: Final = 64 << 20
"""Largest buffer slice hashed between two progress callbacks (heartbeats, cancellation)."""

_U64 = np.uint64
_ALL_ONES = _U64(0xFFFF_FFFF_FFFF_FFFF)
_GOLDEN = _U64(0x9E37_79B9_7F4A_7C15)

Progress = Callable[[str], None]
"""Called between slices of long work with a stage name; may raise to stop the work."""


def _noop(_: str) -> None:
    return None


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised: spreads every input bit over the whole word."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58_476D_1CE4_E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D0_49BB_1331_11EB)
    mixed: np.ndarray = x ^ (x >> _U64(31))
    return mixed


def _string_offsets(array: pa.Array) -> tuple[np.ndarray, pa.Buffer | None]:
    """Offsets (``len + 1`` int64, absolute in the data buffer) and the data buffer of a string array."""
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[array.offset : array.offset + len(array) + 1]
    return offsets.astype(np.int64, copy=False), buffers[2]


def _string_keys(array: pa.Array) -> np.ndarray:
    """One uint64 per string from its length and its first and last 8 bytes."""
    offsets, data = _string_offsets(array)
    if len(array) == 0:
        return np.zeros(0, dtype=_U64)
    raw: pa.Buffer | bytes = data if data is not None else b""
    if len(raw) < 8:  # the 8-byte window below needs at least 8 bytes to look at
        raw = bytes(raw) + bytes(8)
    size = len(raw)
    # A view whose element i is the little-endian word starting at byte i: one gather per row
    # reads 8 bytes wherever the row starts, without copying the data buffer.
    words = np.ndarray((size - 7,), dtype="<u8", buffer=raw, offset=0, strides=(1,))
    start, end = offsets[:-1], offsets[1:]
    length = (end - start).astype(_U64)
    # Rows starting in the last 7 bytes read a word that starts earlier and shift it down.
    window = np.minimum(start, size - 8)
    first = words[window] >> ((start - window).astype(_U64) * _U64(8))
    # Keep only the row's own bytes (numpy defines shifts by 64 as 0, so 0 - 1 = all ones).
    first &= (_U64(1) << (np.minimum(length, _U64(8)) * _U64(8))) - _U64(1)
    last = words[np.clip(end - 8, 0, size - 8)] * (length > _U64(8)).astype(_U64)
    return _mix(_mix(first + length * _GOLDEN) ^ last)


def _column_keys(column: pa.ChunkedArray) -> np.ndarray:
    """One uint64 per row of a string or integer column, whatever its chunking."""
    parts = []
    for chunk in column.chunks:
        if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
            parts.append(_string_keys(chunk))
        elif pa.types.is_integer(chunk.type):
            parts.append(_mix(chunk.to_numpy(zero_copy_only=False).astype(np.int64).view(_U64)))
        else:
            raise TypeError(f"cannot key a column of type {chunk.type}")
    return np.concatenate(parts) if parts else np.zeros(0, dtype=_U64)


def row_keys(table: pa.Table, columns: Sequence[str], seed: int) -> np.ndarray:
    """Compute a seeded 64-bit key per row from the content of ``columns``.

    Args:
        table: Rows with string and integer columns and no nulls.
        columns: The columns that make up a row's content, in a fixed order.
        seed: Seed of the shuffle the keys define.

    Returns:
        A uint64 array, one key per row; equal rows get equal keys.
    """
    keys: np.ndarray = np.full(
        table.num_rows, _mix(np.array([seed], dtype=np.int64).view(_U64))[0], dtype=_U64
    )
    for position, name in enumerate(columns):
        keys = _mix(keys * _GOLDEN + _column_keys(table.column(name)) + _U64(position))
    return keys


def _argsort_uint32(values: np.ndarray) -> np.ndarray:
    """Stable argsort of uint32 values as two 16-bit radix passes (numpy radix-sorts 16-bit keys)."""
    low = (values & 0xFFFF).astype(np.uint16)
    high = (values >> 16).astype(np.uint16)
    by_low = np.argsort(low, kind="stable")
    order: np.ndarray = by_low[np.argsort(high[by_low], kind="stable")]
    return order


def content_order(table: pa.Table, columns: Sequence[str], seed: int) -> np.ndarray:
    """Order rows by a seeded content key: a shuffle that the row order of the input cannot change.

    Args:
        table: Rows with string and integer columns and no nulls.
        columns: The columns that make up a row's content.
        seed: Seed of the shuffle.

    Returns:
        Row indices (int64) in content order. Two tables holding the same multiset of rows
        yield the same sequence of rows.
    """
    keys = row_keys(table, columns, seed)
    top = (keys >> _U64(32)).astype(np.uint32)
    order: np.ndarray = _argsort_uint32(top).astype(np.int64)
    sorted_top = top[order]
    tied = sorted_top[1:] == sorted_top[:-1]
    if tied.any():
        # Rows sharing the top 32 key bits: order them by the full key, then by content, so
        # that only identical rows are left in input order (where order cannot matter).
        in_tie: np.ndarray = np.zeros(len(order), dtype=bool)
        in_tie[1:] |= tied
        in_tie[:-1] |= tied
        positions = np.flatnonzero(in_tie)
        rows = order[positions]
        subset = table.select(list(columns)).take(pa.array(rows))
        subset = subset.append_column("__key", pa.array(keys[rows]))
        sort_keys = [("__key", "ascending")] + [(name, "ascending") for name in columns]
        within = pc.sort_indices(subset, sort_keys=sort_keys).to_numpy()
        order[positions] = rows[within]
    return order


def _stream_column(digest: "hashlib._Hash", column: pa.ChunkedArray, progress: Progress) -> None:
    """Feed one column as all value lengths, then all value bytes (chunking cannot show through)."""
    if pa.types.is_integer(column.type):
        for chunk in column.chunks:
            digest.update(chunk.to_numpy(zero_copy_only=False).astype("<i8", copy=False))
        return
    spans = []
    for chunk in column.chunks:
        offsets, data = _string_offsets(chunk)
        digest.update(np.diff(offsets).astype("<u8", copy=False))
        spans.append((data, int(offsets[0]) if len(offsets) else 0, int(offsets[-1]) if len(offsets) else 0))
    for data, begin, end in spans:
        for cut in range(begin, end, HASH_SLICE_BYTES):
            assert data is not None  # a non-empty span has a data buffer
            digest.update(data.slice(cut, min(HASH_SLICE_BYTES, end - cut)))
            progress("hashing")


def data_hash(
    splits: Mapping[str, pa.Table],
    columns: Sequence[str],
    label_names: Sequence[str],
    progress: Progress = _noop,
) -> str:
    """SHA-256 over the stored splits, their columns and the label names.

    Args:
        splits: Split name to table, in the order they are stored (``train``, ``eval``).
        columns: Columns to hash, in a fixed order (text, text pair, label).
        label_names: Sorted label names; a label id indexes this list.
        progress: Called between slices of the work.

    Returns:
        The hex digest.
    """
    header = {
        "format": HASH_FORMAT,
        "columns": list(columns),
        "label_names": list(label_names),
        "splits": {name: table.num_rows for name, table in splits.items()},
    }
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(len(encoded).to_bytes(8, "little") + encoded)
    for table in splits.values():
        for name in columns:
            _stream_column(digest, table.column(name), progress)
    return digest.hexdigest()


def snapshot_id_for(digest: str) -> str:
    """Derive the snapshot id from a data hash.

    Args:
        digest: The hex SHA-256 from :func:`data_hash`.

    Returns:
        Its first :data:`SNAPSHOT_ID_LENGTH` hex characters.
    """
    return digest[:SNAPSHOT_ID_LENGTH]
