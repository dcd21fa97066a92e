"""Content order and content hash of a snapshot, computed over Arrow buffers with numpy.

Identity must not depend on how the source was chunked or in which order it listed its
rows, so nothing here looks at the input order:

* :func:`content_order` sorts rows by a seeded 64-bit key computed from each row's content
  (length and leading, middle and trailing bytes of every text, and the label). Sorting by a seeded
  content key *is* a seeded shuffle, but one that only the multiset of rows decides. Rows
  whose keys collide are ordered by their full content, so the order is exact, not likely.
* :func:`data_hash` is SHA-256 over the stored splits in that order: a JSON header (format,
  columns, label names, row counts), then per split and column every value's length and
  then the values' bytes, streamed buffer by buffer (never row by row in Python).
  :func:`take_and_hash` builds the stored splits from the order and hashes them.

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
ROW_BATCH_BYTES: Final = 32 << 20
"""Content taken into stored order at a time, when hashing and writing: the memory a snapshot
needs beyond its memory-mapped source. Smaller batches cost more calls, larger ones memory."""

_U64 = np.uint64
_GOLDEN = _U64(0x9E37_79B9_7F4A_7C15)
_LAST = _U64(0xC2B2_AE3D_27D4_EB4F)
_MIDDLE = _U64(0x1656_67B1_9E37_79F9)

Progress = Callable[[str], None]
"""Called between slices of long work with a stage name; may raise to stop the work."""


def _noop(_: str) -> None:
    return None


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised and in place: spreads every input bit over the whole word."""
    x ^= x >> _U64(30)
    x *= _U64(0xBF58_476D_1CE4_E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D0_49BB_1331_11EB)
    x ^= x >> _U64(31)
    return x


def _is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def _string_offsets(array: pa.Array) -> tuple[np.ndarray, pa.Buffer | None]:
    """Offsets (``len + 1`` int64, absolute in the data buffer) and the data buffer of a string array."""
    if len(array) == 0:  # an empty array may come without an offsets buffer
        return np.zeros(1, dtype=np.int64), None
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[array.offset : array.offset + len(array) + 1]
    return offsets.astype(np.int64, copy=False), buffers[2]


def _string_keys(array: pa.Array) -> np.ndarray:
    """One uint64 per string from its length and first, middle and last 8 bytes (mixed by the caller)."""
    if len(array) == 0:
        return np.zeros(0, dtype=_U64)
    offsets, data = _string_offsets(array)
    raw: pa.Buffer | bytes = data if data is not None else b""
    if len(raw) < 16:  # the windows below need 8 bytes, and short rows may index from the end
        raw = bytes(raw) + bytes(16)
    size = len(raw)
    # A view whose element i is the little-endian word starting at byte i: one gather per row
    # reads 8 bytes wherever the row starts, without copying the data buffer.
    words = np.ndarray((size - 7,), dtype="<u8", buffer=raw, offset=0, strides=(1,))
    start, end = offsets[:-1], offsets[1:]
    length = end - start
    # For rows of at least 16 bytes every window lies inside the row, so the full-array work is
    # three gathers and a few operations; shorter rows (rare in text) are fixed up below.
    # Windows of short rows are clamped or wrap around (a negative index is a valid word too);
    # their stray bytes are masked or zeroed below.
    first = words[np.minimum(start, size - 8)]
    last = words[end - 8]
    middle = words[np.minimum(start + (length - 8) // 2, size - 8)]
    short = np.flatnonzero(length <= 16)
    if len(short):
        short_length = length[short]
        short_start = start[short]
        shift = (short_start - np.minimum(short_start, size - 8)).astype(_U64) * _U64(8)
        # Keep only the row's own bytes (numpy defines shifts by 64 as 0, so 0 - 1 = all ones).
        keep = (_U64(1) << (np.minimum(short_length, 8).astype(_U64) * _U64(8))) - _U64(1)
        first[short] = (first[short] >> shift) & keep
        last[short[short_length <= 8]] = 0  # the first word already holds the whole row
        middle[short] = 0  # the first and last words already cover the row
    # Not mixed here: row_keys mixes all columns once. The odd multipliers keep the parts
    # from cancelling out; a rare collision only costs an exact tie-break, never correctness.
    keys: np.ndarray = length.view(_U64) * _GOLDEN
    keys += first
    last *= _LAST
    keys ^= last
    middle *= _MIDDLE
    keys ^= middle
    return keys


def _column_keys(column: pa.ChunkedArray) -> np.ndarray:
    """One uint64 per row of a string or integer column, whatever its chunking."""
    parts = []
    for chunk in column.chunks:
        if _is_text(chunk.type):
            parts.append(_string_keys(chunk))
        elif pa.types.is_integer(chunk.type):
            parts.append(chunk.to_numpy(zero_copy_only=False).astype(np.int64).view(_U64))
        else:
            raise TypeError(f"cannot key a column of type {chunk.type}")
    return np.concatenate(parts) if parts else np.zeros(0, dtype=_U64)


def take_rows(column: pa.ChunkedArray, rows: np.ndarray) -> pa.Array:
    """Take rows of a chunked column, in the given order, without concatenating its chunks.

    Arrow's own ``take`` on a chunked string column concatenates every chunk first: a copy of
    the whole column (the ``datasets`` cache holds thousands of chunks) for each call, however
    few rows are taken. Here each chunk gives its own rows and only those are put in order.

    Args:
        column: The column (any number of chunks).
        rows: Row indices into the whole column.

    Returns:
        One array of ``len(rows)`` values.
    """
    if column.num_chunks == 1:
        return column.chunk(0).take(pa.array(rows, type=pa.int64()))
    if len(rows) == 0 or column.num_chunks == 0:
        return pa.array([], type=column.type)
    starts = np.cumsum([0, *(len(chunk) for chunk in column.chunks)])
    chunk_of = np.asarray(np.searchsorted(starts, rows, side="right"), dtype=np.int64) - 1
    by_chunk = np.argsort(chunk_of, kind="stable")
    groups = np.split(by_chunk, np.flatnonzero(np.diff(chunk_of[by_chunk])) + 1)
    pieces = [
        column.chunk(int(chunk_of[group[0]])).take(pa.array(rows[group] - starts[chunk_of[group[0]]]))
        for group in groups
    ]
    gathered = pa.concat_arrays(pieces)  # rows grouped by chunk; put them back in the asked order
    inverse = np.empty_like(by_chunk)
    inverse[by_chunk] = np.arange(len(by_chunk))
    return gathered.take(pa.array(inverse))


def row_keys(table: pa.Table, columns: Sequence[str], seed: int) -> np.ndarray:
    """Compute a seeded 64-bit key per row from the content of ``columns``.

    Args:
        table: Rows with string and integer columns and no nulls.
        columns: The columns that make up a row's content, in a fixed order.
        seed: Seed of the shuffle the keys define.

    Returns:
        A uint64 array, one key per row; equal rows get equal keys.
    """
    seed_word = _mix(np.array([seed], dtype=np.int64).view(_U64).copy())[0]
    keys: np.ndarray | None = None
    for position, name in enumerate(columns):
        column_keys = _column_keys(table.column(name))
        if keys is None:
            keys = column_keys.copy()  # integer keys may be a view of the table's buffer
            keys += seed_word
        else:
            keys *= _GOLDEN
            keys += column_keys
            keys += _U64(position)
    if keys is None:
        keys = np.full(table.num_rows, seed_word, dtype=_U64)
    # One mix at the end turns the combination into well-spread, seed-dependent keys.
    mixed: np.ndarray = _mix(keys)
    return mixed


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
        table: Rows with string and integer columns and no nulls (one chunk is fastest).
        columns: The columns that make up a row's content.
        seed: Seed of the shuffle.

    Returns:
        Row indices (int64) in content order. Two tables holding the same multiset of rows
        yield the same sequence of rows.
    """
    keys = row_keys(table, columns, seed)
    top = (keys >> _U64(32)).astype(np.uint32)
    order: np.ndarray = _argsort_uint32(top).astype(np.int64, copy=False)
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
        subset = pa.table({name: take_rows(table.column(name), rows) for name in columns})
        subset = subset.append_column("__key", pa.array(keys[rows]))
        sort_keys = [("__key", "ascending")] + [(name, "ascending") for name in columns]
        within = pc.sort_indices(subset, sort_keys=sort_keys).to_numpy()
        order[positions] = rows[within]
    return order


def _header(columns: Sequence[str], label_names: Sequence[str], rows: Mapping[str, int]) -> "hashlib._Hash":
    """A SHA-256 primed with the length-prefixed JSON header of the hashed layout."""
    header = {
        "format": HASH_FORMAT,
        "columns": list(columns),
        "label_names": list(label_names),
        "splits": dict(rows),
    }
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(len(encoded).to_bytes(8, "little") + encoded)


def _update_text_bytes(digest: "hashlib._Hash", column: pa.ChunkedArray, progress: Progress) -> None:
    """Feed the bytes of every value of a string column, in order, in bounded slices."""
    for chunk in column.chunks:
        offsets, data = _string_offsets(chunk)
        begin, end = int(offsets[0]), int(offsets[-1])
        for cut in range(begin, end, HASH_SLICE_BYTES):
            assert data is not None  # a non-empty span has a data buffer
            digest.update(data.slice(cut, min(HASH_SLICE_BYTES, end - cut)))
            progress("hashing")


def _update_array(digest: "hashlib._Hash", array: np.ndarray) -> None:
    """Feed an array's bytes (its memory, not a copy) to the digest."""
    digest.update(np.ascontiguousarray(array).data)


def _lengths(column: pa.ChunkedArray) -> np.ndarray:
    parts = [np.diff(_string_offsets(chunk)[0]) for chunk in column.chunks]
    lengths: np.ndarray = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return lengths


def _integers(column: pa.ChunkedArray) -> np.ndarray:
    values: np.ndarray = column.to_numpy().astype("<i8", copy=False)
    return values


def data_hash(
    splits: Mapping[str, pa.Table],
    columns: Sequence[str],
    label_names: Sequence[str],
    progress: Progress = _noop,
) -> str:
    """SHA-256 over the stored splits, their columns and the label names (the reference layout).

    Per split and column: integers as int64 little-endian; strings as all value lengths
    (uint64 little-endian), then all value bytes. Chunking cannot show through.

    Args:
        splits: Split name to table, in the order they are stored (``train``, ``eval``).
        columns: Columns to hash, in a fixed order (text, text pair, label).
        label_names: Sorted label names; a label id indexes this list.
        progress: Called between slices of the work.

    Returns:
        The hex digest.
    """
    digest = _header(columns, label_names, {name: table.num_rows for name, table in splits.items()})
    for table in splits.values():
        for name in columns:
            column = table.column(name)
            if _is_text(column.type):
                _update_array(digest, _lengths(column).astype("<u8"))
                _update_text_bytes(digest, column, progress)
            else:
                _update_array(digest, _integers(column))
    return digest.hexdigest()


def take_and_hash(
    splits: Mapping[str, tuple[pa.Table, np.ndarray]],
    columns: Sequence[str],
    label_names: Sequence[str],
    progress: Progress = _noop,
) -> tuple[dict[str, pa.Table], str]:
    """Build the stored splits from row indices, then hash them with :func:`data_hash`.

    One Arrow ``take`` per column and split, in C++ (no Python per row). Overlapping the take
    with the hash in a helper thread was measured slower on the 2-core machines, where the
    other core is rarely free.

    Args:
        splits: Split name to ``(source table, row indices in stored order)``.
        columns: Columns to store and hash, in a fixed order.
        label_names: Sorted label names.
        progress: Called between steps; raising from it stops the work.

    Returns:
        The stored tables (``columns`` only) and the hex digest.
    """
    stored: dict[str, pa.Table] = {}
    for name, (source, rows) in splits.items():
        indices = pa.array(rows, type=pa.int64())
        stored[name] = pa.table({column: source.column(column).take(indices) for column in columns})
        progress("taken")
    return stored, data_hash(stored, columns, label_names, progress)


def _row_bytes(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Bytes each row of ``table`` holds in ``columns`` (text lengths, 8 per integer)."""
    sizes: np.ndarray = np.zeros(table.num_rows, dtype=np.int64)
    for name in columns:
        column = table.column(name)
        sizes += _lengths(column) if _is_text(column.type) else 8
    return sizes


def row_batches(table: pa.Table, rows: np.ndarray, columns: Sequence[str]) -> list[np.ndarray]:
    """Cut row indices into consecutive batches of about :data:`ROW_BATCH_BYTES` of content each.

    Args:
        table: The table the indices refer to.
        rows: Row indices in stored order.
        columns: The stored columns.

    Returns:
        Slices of ``rows`` (views, in order); one empty batch when there are no rows.
    """
    if len(rows) == 0:
        return [rows]
    ends = np.cumsum(_row_bytes(table, columns)[rows])
    cuts = np.searchsorted(ends, np.arange(ROW_BATCH_BYTES, int(ends[-1]), ROW_BATCH_BYTES), side="right")
    return [batch for batch in np.split(rows, np.unique(cuts)) if len(batch)]


def _hash_text_column(
    digest: "hashlib._Hash", column: pa.ChunkedArray, batches: Sequence[np.ndarray], progress: Progress
) -> None:
    rows = np.concatenate(batches)
    _update_array(digest, _lengths(column)[rows].astype("<u8"))
    for batch in batches:
        taken = take_rows(column, batch)  # one batch at a time: bounded memory
        _update_text_bytes(digest, pa.chunked_array([taken]), progress)


def stream_hash(
    splits: Mapping[str, tuple[pa.Table, np.ndarray]],
    columns: Sequence[str],
    label_names: Sequence[str],
    progress: Progress = _noop,
) -> str:
    """The :func:`data_hash` of the splits :func:`take_and_hash` would store, without storing them.

    The same bytes reach the digest in the same order (so snapshot ids do not change), but rows are
    taken a batch at a time and dropped once hashed: memory holds one batch, never a copy of the
    dataset. Sources may have any number of chunks (Arrow takes from chunked columns directly).

    Args:
        splits: Split name to ``(source table, row indices in stored order)``.
        columns: Columns to hash, in a fixed order.
        label_names: Sorted label names.
        progress: Called between batches; raising from it stops the work.

    Returns:
        The hex digest.
    """
    digest = _header(columns, label_names, {name: len(rows) for name, (_, rows) in splits.items()})
    for source, rows in splits.values():
        batches = row_batches(source, rows, columns)
        for name in columns:
            column = source.column(name)
            if _is_text(column.type):
                _hash_text_column(digest, column, batches, progress)
            else:
                _update_array(digest, _integers(column)[rows])
        progress("hashed")
    return digest.hexdigest()


def snapshot_id_for(digest: str) -> str:
    """Derive the snapshot id from a data hash.

    Args:
        digest: The hex SHA-256 from :func:`data_hash`.

    Returns:
        Its first :data:`SNAPSHOT_ID_LENGTH` hex characters.
    """
    return digest[:SNAPSHOT_ID_LENGTH]
