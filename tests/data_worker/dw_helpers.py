"""Row generators and request builders shared by the data worker tests."""

from typing import Any

from durabert.shared.models import DatasetSnapshotRequest


def reviews(count: int, *, sort_by_label: bool = False) -> list[dict[str, Any]]:
    """Deterministic review-like rows with two string classes."""
    rows = [
        {"sentence": f"review {i}: {'great' if i % 3 else 'dull'} film number {i * 7919 % 1000}", "label": ""}
        for i in range(count)
    ]
    for i, row in enumerate(rows):
        row["label"] = "positive" if (i * 2654435761) % 7 < 4 else "negative"
    if sort_by_label:
        rows.sort(key=lambda row: row["label"])
    return rows


def json_request(data_files: Any, **overrides: Any) -> DatasetSnapshotRequest:
    """A snapshot request for JSON files with the ``sentence``/``label`` columns."""
    fields: dict[str, Any] = {
        "run_id": "test-run",
        "dataset_name": "json",
        "data_files": data_files,
        "text_field": "sentence",
        "label_field": "label",
    }
    fields.update(overrides)
    return DatasetSnapshotRequest(**fields)
