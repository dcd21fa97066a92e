"""Object-store ``data_files`` staged in the data worker's own folder, so ``datasets`` reads local files.

``datasets`` refuses every URL with ``HF_HUB_OFFLINE=1``, the way workers run here and in
air-gapped clusters; an object store is not the hub, so the worker fetches such files itself
(:mod:`.remote_files`) and gives the packaged loader (``json``, ``csv``, ``parquet``, ...) the
local copies. That works with and without offline mode.

All of a request's globs are expanded, and every match is confined to the allowed URL prefixes
(``DURABERT_ALLOWED_DATA_ROOTS``), before the first byte is downloaded. A staged file keeps its
URL's path (``files/s3/bucket/data/a.jsonl``), so names, extensions (compression) and folders
(labels of folder loaders) are what the loader would have seen; a split keeps its key and its
files their order. What a snapshot is identified by does not move: the manifest records the
request's URLs, and the snapshot id is a hash of the rows only.

One snapshot's staging folder, ``<work_dir>/staging/<random>/``, holds the files and the
``datasets`` cache built from them (its key depends on the files' paths, so the worker's shared
cache would keep one more copy per snapshot); it is removed when the snapshot is done, whether
it succeeded or failed. ``<random>.lock`` beside it stays locked meanwhile: a folder whose lock
is free was left by a killed worker and is removed by the next staging.
"""

import contextlib
import fcntl
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from durabert.data_worker.remote_files import RemoteFile, RemoteFiles
from durabert.data_worker.sources import ResolvedSource, data_file_entries, packaged_loaders
from durabert.data_worker.url_roots import SCHEME_ALIASES, confine_url, store_url_parts
from durabert.shared.errors import invalid_input
from durabert.shared.logging import get_logger
from durabert.shared.models import DataFiles
from durabert.shared.redaction import redact
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)

STAGING_DIR: Final = "staging"
"""Folder under the work dir that holds the snapshots' staging folders."""
FILES_DIR: Final = "files"
"""Folder of a staging folder that holds the staged files, at their URLs' paths."""
CACHE_DIR: Final = "datasets-cache"
"""Folder of a staging folder that holds the ``datasets`` cache of the staged files."""

_QUERY = re.compile(r"\?[^/]*=")
"""A query string (``?key=value``), as opposed to a ``?`` wildcard."""


def is_store_url(entry: str) -> bool:
    """Whether a ``data_files`` entry is an object-store URL (``s3://``, ``gs://``, ``az://`` and aliases)."""
    return store_url_parts(entry) is not None


def needs_staging(source: ResolvedSource) -> bool:
    """Whether a source's loader would be handed object-store URLs.

    Only packaged loaders and local dataset folders get their files staged: a hub dataset's
    ``data_files`` are resolved by ``datasets`` against its repository.
    """
    if not source.data_files:
        return False
    loads_files = source.path in packaged_loaders() or Path(source.path).is_absolute()
    return loads_files and any(is_store_url(entry) for entry in data_file_entries(source.data_files))


def _staged_path(remote: RemoteFile) -> Path:
    """Where a file lies under ``files/``: its store and path, the same for every alias of the scheme."""
    parts = store_url_parts(remote.url)
    segments = [segment for segment in remote.path.split("/") if segment]
    if parts is None or any(segment in (".", "..") for segment in segments):
        raise invalid_input(
            f"{redact(remote.url)!r}: '.' and '..' segments are refused in data URLs", field="data_files"
        )
    return Path(SCHEME_ALIASES.get(parts[0], parts[0]), *segments)


class StagingArea:
    """One snapshot's staging folder: created on first use, removed (with its lock) on close."""

    def __init__(self, settings: DurabertSettings, progress: Callable[[str], None]) -> None:
        """Prepare the area; nothing is created until a source needs staging.

        Args:
            settings: The worker's settings (work dir, store retry window, allowed data roots).
            progress: Called before each download; raising from it stops the work.
        """
        self._parent = settings.work_dir.expanduser() / STAGING_DIR
        self._reader = RemoteFiles(settings.store.retry_seconds)
        self._url_roots: Sequence[str] = settings.data_url_roots
        self._folders: Sequence[Path] = settings.data_roots
        self._progress = progress
        self._folder: Path | None = None
        self._lock: IO[str] | None = None

    def __enter__(self) -> "StagingArea":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the staging folder and its lock (nothing happens when none was made)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self._folder.with_suffix(".lock").unlink()
            self._folder = None
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def stage(self, source: ResolvedSource) -> ResolvedSource:
        """Download a source's object-store files and name the local copies instead.

        Args:
            source: The confined source, as :func:`~.sources.resolve_source` returned it.

        Returns:
            The source itself when it needs no staging; else the same loader and shape of
            ``data_files`` with every object-store entry replaced by the local files it names,
            and the ``datasets`` cache inside the staging folder.

        Raises:
            ApplicationError: ``InvalidInputError`` naming ``data_files`` for a URL outside the
                allowed prefixes (as given or as matched), with a query string, or matching
                nothing; ``ConfigurationError`` naming the credential variables; a retryable
                ``ArtifactStoreError`` when the store stays unreachable.
        """
        if not needs_staging(source) or source.data_files is None:
            return source
        matches = {
            entry: self._expand(entry)
            for entry in data_file_entries(source.data_files)
            if is_store_url(entry)
        }
        folder = self._create()
        started = time.monotonic()
        local = self._download({remote.url: remote for found in matches.values() for remote in found}, folder)
        log.info("data files staged", files=len(local), seconds=round(time.monotonic() - started, 3))

        def replace(entry: str) -> list[str]:
            return [local[remote.url] for remote in matches[entry]] if entry in matches else [entry]

        return ResolvedSource(
            source.path, _map_entries(source.data_files, replace), cache_dir=str(folder / CACHE_DIR)
        )

    def _expand(self, entry: str) -> list[RemoteFile]:
        """The files one URL names, each confined; refused when it names none."""
        if _QUERY.search(entry):
            raise invalid_input(
                f"{redact(entry)!r}: object-store URLs take no query string; the data worker reads them "
                "with its own credentials",
                field="data_files",
            )
        found = self._reader.expand(entry)
        for remote in found:  # a glob can match keys that the pattern's prefix did not show
            confine_url(remote.url, "data_files", self._url_roots, self._folders)
            _staged_path(remote)
        if not found:
            raise invalid_input(f"{redact(entry)!r} matches no file", field="data_files")
        return found

    def _download(self, remotes: dict[str, RemoteFile], folder: Path) -> dict[str, str]:
        """Download each file once; return URL to local path."""
        local: dict[str, str] = {}
        for url, remote in remotes.items():
            self._progress("staging")
            target = folder / FILES_DIR / _staged_path(remote)
            self._reader.download(remote, target)
            local[url] = str(target)
        return local

    def _create(self) -> Path:
        """Lock and create this snapshot's folder, after removing killed workers' leftovers."""
        if self._folder is not None:
            return self._folder
        self._parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self._parent)
        name = uuid.uuid4().hex
        # The lock is taken before the folder exists, so a folder whose lock is free is abandoned.
        self._lock = (self._parent / f"{name}.lock").open("a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._folder = self._parent / name
        self._folder.mkdir()
        return self._folder


def remove_leftovers(parent: Path) -> list[str]:
    """Remove staging folders whose lock no live staging holds (a killed worker's).

    Args:
        parent: ``<work_dir>/staging``.

    Returns:
        The names of the folders removed.
    """
    removed = []
    for lock_path in sorted(parent.glob("*.lock")):
        with lock_path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by a running snapshot
            shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            removed.append(lock_path.stem)
    if removed:
        log.info("removed staging leftovers", folders=removed)
    return removed


def _map_entries(data_files: DataFiles, replace: Callable[[str], list[str]]) -> DataFiles:
    """The same shape of ``data_files`` with each entry replaced by the list ``replace`` gives."""
    if isinstance(data_files, dict):
        return {split: _map_list(entries, replace) for split, entries in data_files.items()}
    return _map_list(data_files, replace)


def _map_list(entries: str | list[str], replace: Callable[[str], list[str]]) -> list[str]:
    return [new for entry in ([entries] if isinstance(entries, str) else entries) for new in replace(entry)]
