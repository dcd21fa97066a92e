"""Fixtures of the data worker tests: settings without a server and small data files."""

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from durabert.shared.settings import DurabertSettings

WriteRows = Callable[[str, Sequence[dict[str, Any]]], Path]


@pytest.fixture
def local_settings(tmp_path: Path) -> DurabertSettings:
    """Settings with a fresh artifact store and data folder, for tests that need no server."""
    (tmp_path / "data").mkdir()
    return DurabertSettings(artifact_root=tmp_path / "artifacts", data_dir=tmp_path / "data")


@pytest.fixture
def write_rows(local_settings: DurabertSettings) -> WriteRows:
    """Write rows as a JSONL file in the data folder and return its path."""

    def write(name: str, rows: Sequence[dict[str, Any]]) -> Path:
        path = local_settings.data_dir / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    return write
