"""Checking the requested columns and turning labels into sorted names and integer ids.

Every refusal here is a non-retryable ``InvalidInputError`` that names the request field
and the source, because no retry can fix a missing column or a null label.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from durabert.shared.errors import invalid_input
from durabert.shared.models import DatasetSnapshotRequest

MAX_LABELS = 10_000
"""Most classes a snapshot accepts: the label names travel in every run's Temporal payloads
(2 MB limit), and more distinct labels than this almost always means ``label_field`` names a
text column."""


@dataclass(frozen=True)
class Fields:
    """The request's column names."""

    text: str
    """Text column (``text_field``)."""
    label: str
    """Label column (``label_field``)."""
    text_pair: str | None = None
    """Second text column (``text_pair_field``), if any."""

    @property
    def texts(self) -> dict[str, str]:
        """Request field name to column name, for the text columns."""
        found = {"text_field": self.text}
        if self.text_pair is not None:
            found["text_pair_field"] = self.text_pair
        return found

    @property
    def stored(self) -> list[str]:
        """Columns of a stored split, in hashing order: text, text pair, label."""
        return [*self.texts.values(), self.label]


def request_fields(request: DatasetSnapshotRequest) -> Fields:
    """The request's columns, refusing one column named for two roles.

    A label column that is also the text column would train the model to read its answer
    (and turn every distinct text into a class name that travels in the run's payloads).

    Args:
        request: The snapshot request.

    Returns:
        The columns.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``label_field`` or ``text_pair_field``.
    """
    text, pair, label = request.text_field, request.text_pair_field, request.label_field
    if label == text:
        raise invalid_input(
            f"{label!r} is also the text_field; the label must be a column of its own", field="label_field"
        )
    if pair is not None and pair in (text, label):
        role = "text_field" if pair == text else "label_field"
        raise invalid_input(
            f"{pair!r} is also the {role}; the second text must be a column of its own",
            field="text_pair_field",
        )
    return Fields(text=text, label=label, text_pair=pair)


def _plain_string(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Decode dictionary and view encodings so that strings have one of the two offset layouts."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_string_view(column.type):
        column = column.cast(pa.large_string())
    return column


def select_columns(table: pa.Table, fields: Fields, split: str, source: str) -> pa.Table:
    """Keep only the text and label columns of one split, refusing missing or unusable ones.

    Args:
        table: The split as loaded.
        fields: The requested columns.
        split: Split name, for messages.
        source: Human description of the source, for messages.

    Returns:
        A table of the text column(s) (strings, no nulls) and the raw label column.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``text_field``, ``text_pair_field`` or
            ``label_field``.
    """
    columns: dict[str, pa.ChunkedArray] = {}
    for field, name in [*fields.texts.items(), ("label_field", fields.label)]:
        if name not in table.column_names:
            raise invalid_input(
                f"column {name!r} is not in split {split!r} of {source} "
                f"(columns: {', '.join(table.column_names) or 'none'})",
                field=field,
            )
        columns[name] = table.column(name)
    for field, name in fields.texts.items():
        column = _plain_string(columns[name])
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise invalid_input(f"column {name!r} of {source} holds {column.type}, not text", field=field)
        if column.null_count:
            raise invalid_input(
                f"column {name!r} has {column.null_count} null value(s) in split {split!r} of {source}",
                field=field,
            )
        columns[name] = column
    return pa.table(columns)


def _label_values(column: pa.ChunkedArray, class_names: Sequence[str] | None) -> pa.ChunkedArray:
    """Map a hub ``ClassLabel`` column's ids to its names, so ids are re-derived from sorted names."""
    if class_names is None:
        return column
    ids = column.cast(pa.int64())
    # ClassLabel uses -1 for "no label": the caller reports it like any other null label.
    missing = pc.or_(pc.less(ids, 0), pc.greater_equal(ids, len(class_names)))
    ids = pc.if_else(missing, pa.scalar(None, pa.int64()), ids)
    return pc.take(pa.array(list(class_names), pa.large_string()), ids)


def _normalised_labels(
    values: Mapping[str, pa.ChunkedArray], label_field: str, source: str
) -> dict[str, pa.ChunkedArray]:
    """Labels of every split as int64 or large_string, refusing nulls, other types and a mix."""
    normalised: dict[str, pa.ChunkedArray] = {}
    kinds = set()
    for split, raw in values.items():
        if raw.null_count:
            raise invalid_input(
                f"column {label_field!r} has {raw.null_count} null or missing label(s) in split "
                f"{split!r} of {source}; every row needs a label",
                field="label_field",
            )
        column = _plain_string(raw)
        if pa.types.is_integer(column.type):
            normalised[split], kind = column.cast(pa.int64()), "integer"
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            normalised[split], kind = column.cast(pa.large_string()), "string"
        else:
            raise invalid_input(
                f"column {label_field!r} of {source} holds {column.type} in split {split!r}; labels "
                "must be integers or strings (a float is a regression target, not a class)",
                field="label_field",
            )
        kinds.add(kind)
    if len(kinds) > 1:
        raise invalid_input(
            f"column {label_field!r} of {source} mixes integer and string labels across splits",
            field="label_field",
        )
    return normalised


def _sorted_classes(values: Mapping[str, pa.ChunkedArray], label_field: str, source: str) -> list[int | str]:
    """The distinct labels of all splits, sorted; between 2 and :data:`MAX_LABELS` of them."""
    uniques: set[int | str] = set()
    for column in values.values():
        uniques.update(pc.unique(column).to_pylist())
    if len(uniques) < 2:
        raise invalid_input(
            f"column {label_field!r} of {source} has {len(uniques)} class(es) "
            f"({', '.join(map(str, sorted(uniques, key=str)))}); classification needs at least two",
            field="label_field",
        )
    if len(uniques) > MAX_LABELS:
        raise invalid_input(
            f"column {label_field!r} of {source} has {len(uniques)} distinct labels, more than "
            f"{MAX_LABELS:,} (is it a text column?)",
            field="label_field",
        )
    return sorted(uniques)  # one kind only (checked before), so they compare


def encode_labels(
    splits: Mapping[str, pa.Table],
    label_field: str,
    source: str,
    class_names: Sequence[str] | None = None,
) -> tuple[dict[str, pa.Table], list[str]]:
    """Replace raw labels with ids into the sorted label names of all splits together.

    Integer labels are sorted by value (so labels ``0..n-1`` keep their ids) and named by
    their decimal form; string labels are sorted as strings.

    Args:
        splits: Split name to table from :func:`select_columns`.
        label_field: The label column.
        source: Human description of the source, for messages.
        class_names: Names of a hub ``ClassLabel`` feature, whose ids become those names.

    Returns:
        The splits with the label column as int64 ids, and the sorted label names.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``label_field`` for null or
            non-integer, non-string labels, or fewer than two classes.
    """
    raw = {name: _label_values(table.column(label_field), class_names) for name, table in splits.items()}
    values = _normalised_labels(raw, label_field, source)
    ordered = _sorted_classes(values, label_field, source)
    value_set = pa.array(ordered, type=next(iter(values.values())).type)
    encoded = {}
    for split, table in splits.items():
        ids = pc.index_in(values[split], value_set=value_set).cast(pa.int64())
        encoded[split] = table.set_column(table.column_names.index(label_field), label_field, ids)
    return encoded, [str(value) for value in ordered]
