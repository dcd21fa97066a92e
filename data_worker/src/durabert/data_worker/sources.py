"""Where a snapshot's rows come from: allowed local files, remote URLs, or a hub dataset.

Local paths are confined to the worker's allowed data roots (a request must not read
``/etc/passwd`` or another tenant's folder), whichever loader reads them: every packaged
``datasets`` loader (``json``, ``text``, ``arrow``, ``xml``, ``webdataset``, ``imagefolder``, ...,
see :func:`packaged_loaders`) gets its ``data_files`` confined, not only ``json``/``csv``/``parquet``.
Globs are expanded here, so the files checked are exactly the files read.

Nothing is resolved against the worker's current directory, which no request should be able
to depend on: relative ``data_files`` of a packaged loader and a ``dataset_name`` starting with
``./`` or ``../`` are relative to the worker's data folder (``DURABERT_DATA_DIR``) and must still
land inside an allowed root; a bare ``dataset_name`` (a hub id) that names a file or folder in
the current directory is refused, because ``datasets`` would read that instead of the hub.

Remote URLs (of the network schemes in :data:`REMOTE_SCHEMES`) and hub ids are left to
``datasets``, once the fsspec package that reads the scheme is known to be installed; any other
fsspec scheme or chain (``local://``, ``zip://...::/path``) is refused, because fsspec would read
local files through it without the roots being checked. Object-store URLs (``s3://``, ``gs://``,
``az://``) are read with the worker's own credentials (the ``AWS_*`` variables for S3, as for the
artifact store) and, when the allowed data roots list URL prefixes, only under them
(:mod:`.url_roots`); the worker downloads such ``data_files`` itself (:mod:`.staging`), because
``datasets`` refuses every URL in offline mode. An object-store folder as ``dataset_name`` is
refused: ``datasets`` cannot load one (name a packaged loader and its files instead).

A loader that still meets offline mode (an ``http(s)://`` file, an uncached hub dataset with
``HF_HUB_OFFLINE=1``) fails with a ``ConfigurationError`` that says so (:mod:`.failures`): no
retry can fix it.
"""

import functools
import glob
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import pyarrow as pa

from durabert.data_worker.failures import offline_error, offline_refusal
from durabert.data_worker.url_roots import confine_url, store_url_parts
from durabert.shared.errors import configuration_error, invalid_input
from durabert.shared.models import FILE_LOADERS, DataFiles, DatasetSnapshotRequest
from durabert.shared.redaction import redact

_GLOB_CHARS = frozenset("*?[")

KNOWN_PACKAGED_LOADERS: Final = frozenset(
    {
        *FILE_LOADERS,
        *("arrow", "audiofolder", "cache", "conll", "eval", "fasta", "fastq", "folder_based_builder"),
        *("generator", "genbank", "harbor", "hdf5", "iceberg", "imagefolder", "lance", "meshfolder"),
        *("mmcif", "niftifolder", "pandas", "pdb", "pdffolder", "spark", "sql", "text", "tsfile"),
        *("videofolder", "vortex", "webdataset", "xml"),
    }
)
"""Loader names of ``datasets`` 2.x-5.x, kept in case a release hides its own list (see below)."""


@functools.cache
def packaged_loaders() -> frozenset[str]:
    """The ``dataset_name`` values that ``datasets`` serves with a packaged loader.

    ``load_dataset`` checks a name against this registry before anything else, and such a
    loader reads ``data_files`` (or, without them, the files of the current directory): each
    of them must have its files confined.

    Returns:
        The installed ``datasets``' packaged module names, plus :data:`KNOWN_PACKAGED_LOADERS`.
    """
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:  # a private name: if a release moves it, the pinned list still applies
        return KNOWN_PACKAGED_LOADERS
    return KNOWN_PACKAGED_LOADERS | frozenset(_PACKAGED_DATASETS_MODULES)


@dataclass(frozen=True)
class LoadedSource:
    """The splits a snapshot is built from."""

    train: pa.Table
    """The source's ``train`` split."""
    eval: pa.Table | None
    """The source's evaluation split, or None when eval rows must be held out of train."""
    eval_split: str | None
    """Name of that evaluation split."""
    class_names: list[str] | None
    """Names of the label column's ``ClassLabel`` feature, when the source declares one."""


@dataclass(frozen=True)
class ResolvedSource:
    """A request's source after confinement: exactly what ``load_dataset`` is given."""

    path: str
    """``load_dataset``'s first argument: a loader name, an absolute folder, a hub id or a URL."""
    data_files: DataFiles | None
    """Data files, local entries as the absolute files they name."""
    cache_dir: str | None = None
    """The ``datasets`` cache to load into; None for the worker's own (staged files have their own)."""


def describe_source(request: DatasetSnapshotRequest) -> str:
    """Name a request's source for error messages and logs (URL credentials removed).

    Args:
        request: The snapshot request.

    Returns:
        E.g. ``json files ['/data/a.jsonl']`` or ``dataset 'glue' (config 'sst2')``.
    """
    if request.dataset_name in packaged_loaders():
        return redact(f"{request.dataset_name} files {request.data_files!r}")
    config = f" (config {request.dataset_config_name!r})" if request.dataset_config_name else ""
    return redact(f"dataset {request.dataset_name!r}{config}")


def source_field(request: DatasetSnapshotRequest) -> str:
    """The request field that names the source: ``data_files`` for packaged loaders, else ``dataset_name``."""
    return "data_files" if request.dataset_name in packaged_loaders() else "dataset_name"


REMOTE_SCHEMES: Final = frozenset({"http", "https", "hf", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""URL schemes of remote stores that ``data_files`` and ``dataset_name`` may name."""

SCHEME_PACKAGES: Final = {
    "http": ("aiohttp", "requests"),
    "https": ("aiohttp", "requests"),
    "hf": ("huggingface_hub",),
    "s3": ("s3fs",),
    "s3a": ("s3fs",),
    "gs": ("gcsfs",),
    "gcs": ("gcsfs",),
    "az": ("adlfs",),
    "abfs": ("adlfs",),
    "abfss": ("adlfs",),
}
"""The Python packages fsspec needs to read each remote scheme (import names = pip names)."""


def _installed(package: str) -> bool:
    """Whether a package can be imported here (checked without importing it)."""
    return importlib.util.find_spec(package) is not None


def _require_backend(entry: str, field: str) -> None:
    """Refuse at once a URL whose fsspec backend is not installed on this worker.

    Without it ``datasets`` raises an ``ImportError`` that a retry cannot fix, after the
    workflow's retry policy has run every attempt.
    """
    scheme = entry.partition("://")[0].lower()
    missing = [name for name in SCHEME_PACKAGES.get(scheme, ()) if not _installed(name)]
    if missing:
        raise configuration_error(
            f"{field}: {redact(entry)!r} needs the Python package(s) {', '.join(missing)} to read "
            f"{scheme}:// URLs, and this data worker does not have them installed; install them "
            "into the data worker's image (or copy the data into an allowed data root)"
        )


def _is_remote(entry: str, field: str) -> bool:
    """Tell a remote URL from a local path, refusing schemes that reach local files.

    Args:
        entry: A ``data_files`` entry or a ``dataset_name``.
        field: The request field, for the error.

    Returns:
        True for a URL of a remote store; False for a local path (``file://`` included).

    Raises:
        ApplicationError: ``InvalidInputError`` for a ``::`` chain or a non-remote scheme.
    """
    if "::" in entry:
        raise invalid_input(
            f"{redact(entry)!r} chains file systems with '::', which can read the worker's local files; "
            "give a plain path or a remote URL",
            field=field,
        )
    scheme, sep, _ = entry.partition("://")
    if not sep or not scheme.isalnum() or scheme.lower() == "file":
        return False
    if scheme.lower() in REMOTE_SCHEMES:
        return True
    raise invalid_input(
        f"{redact(entry)!r}: the {scheme}:// scheme is not allowed; local data is a plain path inside the "
        f"allowed data roots, remote data a URL of {', '.join(sorted(REMOTE_SCHEMES))}",
        field=field,
    )


def _remote(entry: str, field: str) -> bool:
    """Like :func:`_is_remote`, and a remote URL's fsspec package must be installed."""
    if not _is_remote(entry, field):
        return False
    _require_backend(entry, field)
    return True


def _is_local_name(name: str) -> bool:
    """Whether a ``dataset_name`` is written as a local path (absolute, ``~`` or ``./``/``../``)."""
    return name.startswith(("/", ".", "~"))


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def _outside(
    entry: str, roots: Sequence[Path], field: str = "data_files", match: Path | None = None
) -> Exception:
    matched = f" matches {match}," if match is not None else " is"
    return invalid_input(
        f"{redact(entry)!r}{matched} outside the allowed data roots ({_roots_text(roots)})", field=field
    )


def _resolve_file(entry: str, path: Path, roots: Sequence[Path], base: Path) -> list[str]:
    """Resolve one local path without glob characters to the file it names."""
    resolved = path.resolve()
    if not _inside(resolved, roots):
        raise _outside(entry, roots)
    if not resolved.is_file():
        relative = (
            "" if Path(entry.removeprefix("file://")).expanduser().is_absolute() else f"; relative to {base}"
        )
        raise invalid_input(f"{redact(entry)!r} is not a file ({resolved}{relative})", field="data_files")
    return [str(resolved)]


def _resolve_glob(entry: str, path: Path, first_glob: int, roots: Sequence[Path]) -> list[str]:
    """Expand one local glob to the files it matches, all inside ``roots``."""
    parts = path.parts
    if ".." in parts[first_glob:] or not _inside(Path(*parts[:first_glob]).resolve(), roots):
        raise _outside(entry, roots)
    matches = sorted(Path(match).resolve() for match in glob.glob(str(path), recursive=True))
    files = [match for match in matches if match.is_file()]
    escaped = [match for match in files if not _inside(match, roots)]
    if escaped:  # a symlink inside a root can point anywhere
        raise _outside(entry, roots, match=escaped[0])
    if not files:
        raise invalid_input(f"{redact(entry)!r} matches no file", field="data_files")
    return [str(match) for match in files]


def _resolve_entry(entry: str, roots: Sequence[Path], base: Path) -> list[str]:
    """Resolve one local path or glob to the files it names, all inside ``roots``."""
    if _remote(entry, "data_files"):
        return [entry]
    path = Path(entry.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = base / path  # never the current directory: see the module docstring
    first_glob = next((i for i, part in enumerate(path.parts) if _GLOB_CHARS & set(part)), None)
    if first_glob is None:
        return _resolve_file(entry, path, roots, base)
    return _resolve_glob(entry, path, first_glob, roots)


def resolve_data_files(data_files: DataFiles, roots: Sequence[Path], base: Path) -> DataFiles:
    """Resolve local paths and globs of ``data_files`` and confine them to the allowed roots.

    Args:
        data_files: As in the request: a path, a list, or split name to path(s).
        roots: Resolved folders local files may come from.
        base: Folder that relative paths are relative to (the worker's data folder, or a local
            dataset's folder).

    Returns:
        The same shape with local entries replaced by the absolute files they name.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``data_files`` for a path outside the
            roots, a missing file or a glob matching nothing; ``ConfigurationError`` for a URL
            whose fsspec package is not installed.
    """
    if isinstance(data_files, str):
        return _resolve_list([data_files], roots, base)
    if isinstance(data_files, list):
        return _resolve_list(data_files, roots, base)
    return {
        split: _resolve_list([entries] if isinstance(entries, str) else entries, roots, base)
        for split, entries in data_files.items()
    }


def _resolve_list(entries: list[str], roots: Sequence[Path], base: Path) -> list[str]:
    return [file for entry in entries for file in _resolve_entry(entry, roots, base)]


def data_file_entries(data_files: DataFiles) -> list[str]:
    """Every entry of ``data_files`` (a path, a list, or split name to path(s)), in order."""
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, list):
        return list(data_files)
    return [entry for value in data_files.values() for entry in data_file_entries(value)]


def _loader_files(request: DatasetSnapshotRequest, roots: Sequence[Path], data_dir: Path) -> DataFiles:
    """Confine the files of a packaged loader; refuse it without files."""
    if not request.data_files:
        raise invalid_input(
            f"dataset_name {request.dataset_name!r} is a file loader and needs data_files (without them "
            "datasets would read whatever lies in the data worker's current directory)",
            field="data_files",
        )
    return resolve_data_files(request.data_files, roots, data_dir)


def _hub_files(data_files: DataFiles | None, name: str) -> DataFiles | None:
    """Check the ``data_files`` of a hub dataset: patterns inside its repository, or remote URLs.

    ``datasets`` joins them to the repository; an absolute path or ``..`` would leave it.
    """
    for entry in data_file_entries(data_files) if data_files else []:
        if _remote(entry, "data_files"):
            continue
        parts = PurePosixPath(entry.replace("\\", "/")).parts
        if entry.startswith(("/", "~", "file://")) or ".." in parts:
            raise invalid_input(
                f"{redact(entry)!r}: data_files of hub dataset {redact(name)!r} are patterns inside its "
                "repository; absolute paths and '..' are refused",
                field="data_files",
            )
    return data_files


def _local_folder(name: str, roots: Sequence[Path], data_dir: Path) -> Path:
    """Resolve and confine a local dataset folder (relative to the data folder, never the cwd)."""
    path = Path(name).expanduser()
    folder = (path if path.is_absolute() else data_dir / path).resolve()
    if not _inside(folder, roots):
        raise invalid_input(
            f"{name!r} is a local path outside the allowed data roots ({_roots_text(roots)})",
            field="dataset_name",
        )
    if not folder.is_dir():
        raise invalid_input(f"{name!r} is not a folder ({folder})", field="dataset_name")
    _check_folder_links(folder, roots)
    return folder


def _refuse_current_directory(name: str) -> None:
    """Refuse a hub id that ``datasets`` would read from the worker's current directory instead."""
    if Path(name).exists() or Path(name).is_symlink():
        raise invalid_input(
            f"{name!r} names a file or folder in the data worker's current directory, which datasets would "
            "read instead of the hub dataset; give a local dataset as an absolute path inside the allowed "
            "data roots, or as ./name relative to the data folder",
            field="dataset_name",
        )


def resolve_source(
    request: DatasetSnapshotRequest, roots: Sequence[Path], data_dir: Path, url_roots: Sequence[str] = ()
) -> ResolvedSource:
    """Confine a request's source to the allowed roots and say exactly what will be loaded.

    Args:
        request: The snapshot request.
        roots: Resolved folders local data may come from.
        data_dir: The worker's data folder, which relative local paths are relative to.
        url_roots: Object-store URL prefixes that ``s3://``/``gs://``/``az://`` data must lie
            under (:mod:`.url_roots`); empty leaves such URLs unconfined.

    Returns:
        What to pass to ``load_dataset``: local entries as absolute, confined paths.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``dataset_name`` or ``data_files``;
            ``ConfigurationError`` for a URL whose fsspec package is not installed.
    """
    resolved = _resolve_source(request, roots, data_dir)
    confine_url(resolved.path, "dataset_name", url_roots, roots)
    for entry in data_file_entries(resolved.data_files) if resolved.data_files else []:
        confine_url(entry, "data_files", url_roots, roots)
    _refuse_store_folder(resolved.path)  # after confinement: a URL outside the roots is told so first
    return resolved


def _resolve_source(request: DatasetSnapshotRequest, roots: Sequence[Path], data_dir: Path) -> ResolvedSource:
    name = request.dataset_name
    if name in packaged_loaders():
        return ResolvedSource(name, _loader_files(request, roots, data_dir))
    if _remote(name, "dataset_name"):
        return ResolvedSource(name, _hub_files(request.data_files, name))
    if _is_local_name(name):
        folder = _local_folder(name, roots, data_dir)
        files = resolve_data_files(request.data_files, roots, folder) if request.data_files else None
        return ResolvedSource(str(folder), files)
    _refuse_current_directory(name)
    return ResolvedSource(name, _hub_files(request.data_files, name))


def _refuse_store_folder(name: str) -> None:
    """Refuse an object-store URL as ``dataset_name``: ``datasets`` has no loader for one."""
    if store_url_parts(name) is not None:
        raise invalid_input(
            f"{redact(name)!r} is an object-store folder, which is not a dataset name; give the loader as "
            f"dataset_name (json, csv, parquet, ...) and the files as data_files, e.g. "
            f"{redact(name.rstrip('/'))}/*.jsonl",
            field="dataset_name",
        )


def _check_folder_links(folder: Path, roots: Sequence[Path]) -> None:
    """Refuse a local dataset folder holding a symlink that leads outside the roots.

    ``datasets`` discovers and reads every data file under the folder, following links.
    """
    for path in folder.rglob("*"):
        if path.is_symlink() and not _inside(path.resolve(), roots):
            raise invalid_input(
                f"{str(folder)!r} holds {path.name!r}, a link to {path.resolve()}, outside the allowed "
                f"data roots ({_roots_text(roots)})",
                field="dataset_name",
            )


def _load_dataset_dict(
    request: DatasetSnapshotRequest, source: ResolvedSource, trust_remote_code: bool
) -> Any:
    """Call ``load_dataset``; a refusal of offline mode, wherever it hides, is a configuration error."""
    from datasets import config

    url = _web_url(source)
    if url is not None and config.HF_HUB_OFFLINE:
        # Refused before datasets tries: offline, it fails on such a URL in ways that depend on the
        # network (a FileNotFoundError when the host is unreachable), some of which look retryable.
        refusal = ConnectionError(f"Offline mode is enabled. Tried to reach {url}")
        raise offline_error(refusal, describe_source(request))
    try:
        return _load_or_refuse(request, source, trust_remote_code)
    except Exception as exc:
        # datasets wraps it (ConnectionError, DatasetGenerationError, our InvalidInputError's cause):
        # look at the whole chain, as the loader left it.
        if offline_refusal(exc):
            raise offline_error(exc, describe_source(request)) from exc
        raise


def _loader_options(source: ResolvedSource, trust_remote_code: bool) -> dict[str, Any]:
    """``load_dataset``'s options beyond the source: remote code, the cache of staged files."""
    # Passed on only when asked for and allowed (datasets 4+ ignores it and runs no scripts).
    options: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
    if source.cache_dir is not None:
        options["cache_dir"] = source.cache_dir
    return options


def _web_url(source: ResolvedSource) -> str | None:
    """The first ``http(s)://`` URL a source names (loader path or data file), if any."""
    entries = [source.path, *(data_file_entries(source.data_files) if source.data_files else [])]
    return next((entry for entry in entries if entry.lower().startswith(("http://", "https://"))), None)


def _load_or_refuse(request: DatasetSnapshotRequest, source: ResolvedSource, trust_remote_code: bool) -> Any:
    """Call ``load_dataset``, turning each way it fails on bad input into a non-retryable error."""
    # datasets is imported here, not at module level: it takes seconds to import and the
    # worker's other modules (and their tests) do not need it.
    from datasets import disable_progress_bars, load_dataset
    from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError

    disable_progress_bars()  # tqdm bars would interleave with the worker's JSON log lines
    described = describe_source(request)
    try:
        return load_dataset(
            source.path,
            request.dataset_config_name,
            data_files=source.data_files,
            **_loader_options(source, trust_remote_code),
        )
    except (DatasetNotFoundError, DataFilesNotFoundError) as exc:
        raise invalid_input(
            f"cannot find {described}: {_first_line(exc)}", field=source_field(request)
        ) from exc
    except DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise invalid_input(f"cannot read {described}: {_first_line(cause)}", field="data_files") from exc
    except StopIteration as exc:
        # The json loader infers features from the first table with next(); an empty file has
        # none. Left alone, StopIteration cannot be set on the activity's asyncio future and
        # the attempt would hang forever, holding a worker slot.
        raise invalid_input(f"{described} has no rows (empty file)", field=source_field(request)) from exc
    except pa.ArrowInvalid as exc:  # a zero-byte or corrupt Parquet file, before any row is read
        raise invalid_input(f"cannot read {described}: {_first_line(exc)}", field="data_files") from exc
    except ImportError as exc:  # a package the source needs is missing: no retry installs it
        raise configuration_error(f"cannot load {described}: {_first_line(exc)}") from exc
    except ValueError as exc:
        if "corresponds to no data" in str(exc):  # how datasets reports files without rows
            raise invalid_input(f"{described} has no rows", field=source_field(request)) from exc
        # Unknown config, unsupported option: the request cannot be served as asked.
        raise configuration_error(f"cannot load {described}: {_first_line(exc)}") from exc


def load_source(
    request: DatasetSnapshotRequest, source: ResolvedSource, *, trust_remote_code: bool
) -> LoadedSource:
    """Load the source's train split and its evaluation split, if it has one.

    Args:
        request: The snapshot request (config, eval split names, label field).
        source: The confined source, as :func:`resolve_source` returned it.
        trust_remote_code: Whether a hub dataset may run its own code (already allowed by the worker).

    Returns:
        The loaded splits as Arrow tables.

    Raises:
        ApplicationError: ``InvalidInputError`` for a missing dataset, unreadable files or no
            ``train`` split; ``ConfigurationError`` when the loader refuses the request.
    """
    from datasets import ClassLabel, DatasetDict

    loaded = _load_dataset_dict(request, source, trust_remote_code)
    described = describe_source(request)
    if not isinstance(loaded, DatasetDict):
        raise configuration_error(f"{described} did not load as named splits")
    if "train" not in loaded:
        raise invalid_input(
            f"{described} has no 'train' split (splits: {', '.join(loaded) or 'none'})",
            field=source_field(request),
        )
    eval_split = next((name for name in request.eval_split_names if name in loaded and name != "train"), None)
    feature = loaded["train"].features.get(request.label_field)
    return LoadedSource(
        train=_to_table(loaded["train"]),
        eval=_to_table(loaded[eval_split]) if eval_split else None,
        eval_split=eval_split,
        class_names=list(feature.names) if isinstance(feature, ClassLabel) else None,
    )


def _to_table(dataset: Any) -> pa.Table:
    """The split's rows as one Arrow table (zero-copy slices of the memory-mapped cache)."""
    table: pa.Table = dataset.with_format("arrow")[:]
    return table


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, URL credentials removed (loaders echo URLs)."""
    text = str(exc).strip() or type(exc).__name__
    return redact(text.splitlines()[0])
