"""Where a snapshot's rows come from: allowed local files, remote URLs, or a hub dataset.

Local paths are confined to the worker's allowed data roots (a request must not read
``/etc/passwd`` or another tenant's folder); globs are expanded here, so the files
checked are exactly the files read. Remote URLs (of the network schemes in
:data:`REMOTE_SCHEMES`) and hub ids are left to ``datasets``; any other fsspec scheme or
chain (``local://``, ``zip://...::/path``) is refused, because fsspec would read local
files through it without the roots being checked.
"""

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import pyarrow as pa

from durabert.shared.errors import configuration_error, invalid_input
from durabert.shared.models import FILE_LOADERS, DataFiles, DatasetSnapshotRequest

_GLOB_CHARS = frozenset("*?[")


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


def describe_source(request: DatasetSnapshotRequest) -> str:
    """Name a request's source for error messages and logs.

    Args:
        request: The snapshot request.

    Returns:
        E.g. ``json files ['/data/a.jsonl']`` or ``hub dataset 'glue' (config 'sst2')``.
    """
    if request.dataset_name in FILE_LOADERS:
        return f"{request.dataset_name} files {request.data_files!r}"
    config = f" (config {request.dataset_config_name!r})" if request.dataset_config_name else ""
    return f"dataset {request.dataset_name!r}{config}"


def source_field(request: DatasetSnapshotRequest) -> str:
    """The request field that names the source: ``data_files`` for file loaders, else ``dataset_name``."""
    return "data_files" if request.dataset_name in FILE_LOADERS else "dataset_name"


REMOTE_SCHEMES: Final = frozenset({"http", "https", "hf", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""URL schemes of remote stores that ``data_files`` and ``dataset_name`` may name."""


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
            f"{entry!r} chains file systems with '::', which can read the worker's local files; "
            "give a plain path or a remote URL",
            field=field,
        )
    scheme, sep, _ = entry.partition("://")
    if not sep or not scheme.isalnum() or scheme.lower() == "file":
        return False
    if scheme.lower() in REMOTE_SCHEMES:
        return True
    raise invalid_input(
        f"{entry!r}: the {scheme}:// scheme is not allowed; local data is a plain path inside the "
        f"allowed data roots, remote data a URL of {', '.join(sorted(REMOTE_SCHEMES))}",
        field=field,
    )


def _is_local_name(name: str) -> bool:
    """Whether ``datasets.load_dataset`` would read ``name`` as a local folder or file."""
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def _resolve_entry(entry: str, roots: Sequence[Path], base: Path) -> list[str]:
    """Resolve one local path or glob to the files it names, all inside ``roots``."""
    if _is_remote(entry, "data_files"):
        return [entry]
    path = Path(entry.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = base / path
    parts = path.parts
    first_glob = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), None)
    if first_glob is None:
        resolved = path.resolve()
        if not _inside(resolved, roots):
            raise invalid_input(
                f"{entry!r} is outside the allowed data roots ({_roots_text(roots)})", field="data_files"
            )
        if not resolved.is_file():
            raise invalid_input(f"{entry!r} is not a file ({resolved})", field="data_files")
        return [str(resolved)]
    if ".." in parts[first_glob:] or not _inside(Path(*parts[:first_glob]).resolve(), roots):
        raise invalid_input(
            f"{entry!r} is outside the allowed data roots ({_roots_text(roots)})", field="data_files"
        )
    matches = sorted(Path(match).resolve() for match in glob.glob(str(path), recursive=True))
    files = [match for match in matches if match.is_file()]
    escaped = [match for match in files if not _inside(match, roots)]
    if escaped:  # a symlink inside a root can point anywhere
        raise invalid_input(
            f"{entry!r} matches {escaped[0]}, outside the allowed data roots ({_roots_text(roots)})",
            field="data_files",
        )
    if not files:
        raise invalid_input(f"{entry!r} matches no file", field="data_files")
    return [str(match) for match in files]


def resolve_data_files(data_files: DataFiles, roots: Sequence[Path], base: Path) -> DataFiles:
    """Resolve local paths and globs of ``data_files`` and confine them to the allowed roots.

    Args:
        data_files: As in the request: a path, a list, or split name to path(s).
        roots: Resolved folders local files may come from.
        base: Folder that relative paths are relative to (the worker's data folder).

    Returns:
        The same shape with local entries replaced by the absolute files they name.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``data_files`` for a path outside the
            roots, a missing file or a glob matching nothing.
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


def _entries(data_files: DataFiles) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, list):
        return list(data_files)
    return [entry for value in data_files.values() for entry in _entries(value)]


def confine_data_files(
    request: DatasetSnapshotRequest, roots: Sequence[Path], data_dir: Path
) -> DataFiles | None:
    """Confine a request's ``data_files`` to the allowed roots, whatever ``dataset_name`` is.

    ``datasets`` joins ``data_files`` to the dataset's folder, and an absolute path or ``..``
    leaves it: a local folder inside the roots with ``data_files: /etc/passwd`` would read that
    file. So local entries are resolved and confined for a local folder as for ``json``/``csv``/
    ``parquet``; for a hub dataset they must be relative patterns inside its repository.

    Args:
        request: The snapshot request (``dataset_name`` must already pass :func:`check_dataset_path`).
        roots: Resolved folders local files may come from.
        data_dir: The worker's data folder, which relative paths of file loaders are relative to.

    Returns:
        The ``data_files`` to load: local entries as the absolute files they name.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``data_files``.
    """
    data_files = request.data_files
    name = request.dataset_name
    if not data_files:
        if _is_local_name(name):
            _check_folder_links(Path(name).expanduser(), roots)
        return data_files
    if name in FILE_LOADERS:
        return resolve_data_files(data_files, roots, data_dir)
    if _is_local_name(name):
        return resolve_data_files(data_files, roots, Path(name).expanduser().resolve())
    for entry in _entries(data_files):
        if _is_remote(entry, "data_files"):
            continue
        parts = PurePosixPath(entry.replace("\\", "/")).parts
        if entry.startswith(("/", "~", "file://")) or ".." in parts:
            raise invalid_input(
                f"{entry!r}: data_files of hub dataset {name!r} are patterns inside its repository; "
                "absolute paths and '..' are refused",
                field="data_files",
            )
    return data_files


def _check_folder_links(folder: Path, roots: Sequence[Path]) -> None:
    """Refuse a local dataset folder holding a symlink that leads outside the roots.

    ``datasets`` discovers and reads every data file under the folder, following links.
    """
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        if path.is_symlink() and not _inside(path.resolve(), roots):
            raise invalid_input(
                f"{str(folder)!r} holds {path.name!r}, a link to {path.resolve()}, outside the allowed "
                f"data roots ({_roots_text(roots)})",
                field="dataset_name",
            )


def check_dataset_path(name: str, roots: Sequence[Path]) -> None:
    """Refuse a ``dataset_name`` that is a local folder outside the allowed roots.

    ``datasets.load_dataset`` reads a local folder when one exists under that name, so a
    hub-looking id could otherwise read any folder of the worker.

    Args:
        name: The request's ``dataset_name``.
        roots: Resolved folders local data may come from.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``dataset_name``.
    """
    if name in FILE_LOADERS or _is_remote(name, "dataset_name"):
        return
    if _is_local_name(name) and not _inside(Path(name).expanduser().resolve(), roots):
        raise invalid_input(
            f"{name!r} is a local path outside the allowed data roots ({_roots_text(roots)})",
            field="dataset_name",
        )


def load_source(
    request: DatasetSnapshotRequest, data_files: DataFiles | None, *, trust_remote_code: bool
) -> LoadedSource:
    """Load the source's train split and its evaluation split, if it has one.

    Args:
        request: The snapshot request (name, config, eval split names, label field).
        data_files: Data files as resolved by :func:`resolve_data_files`.
        trust_remote_code: Whether a hub dataset may run its own code (already allowed by the worker).

    Returns:
        The loaded splits as Arrow tables.

    Raises:
        ApplicationError: ``InvalidInputError`` for a missing dataset, unreadable files or no
            ``train`` split; ``ConfigurationError`` when the loader refuses the request.
    """
    # datasets is imported here, not at module level: it takes seconds to import and the
    # worker's other modules (and their tests) do not need it.
    from datasets import ClassLabel, DatasetDict, disable_progress_bars, load_dataset
    from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError

    disable_progress_bars()  # tqdm bars would interleave with the worker's JSON log lines
    source = describe_source(request)
    # Passed on only when asked for and allowed (datasets 4+ ignores it and runs no scripts).
    kwargs: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        loaded = load_dataset(
            request.dataset_name, request.dataset_config_name, data_files=data_files, **kwargs
        )
    except (DatasetNotFoundError, DataFilesNotFoundError) as exc:
        raise invalid_input(f"cannot find {source}: {_first_line(exc)}", field=source_field(request)) from exc
    except DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise invalid_input(f"cannot read {source}: {_first_line(cause)}", field="data_files") from exc
    except StopIteration as exc:
        # The json loader infers features from the first table with next(); an empty file has
        # none. Left alone, StopIteration cannot be set on the activity's asyncio future and
        # the attempt would hang forever, holding a worker slot.
        raise invalid_input(f"{source} has no rows (empty file)", field=source_field(request)) from exc
    except pa.ArrowInvalid as exc:  # a zero-byte or corrupt Parquet file, before any row is read
        raise invalid_input(f"cannot read {source}: {_first_line(exc)}", field="data_files") from exc
    except ValueError as exc:
        if "corresponds to no data" in str(exc):  # how datasets reports files without rows
            raise invalid_input(f"{source} has no rows", field=source_field(request)) from exc
        # Unknown config, unsupported option: the request cannot be served as asked.
        raise configuration_error(f"cannot load {source}: {_first_line(exc)}") from exc
    if not isinstance(loaded, DatasetDict):
        raise configuration_error(f"{source} did not load as named splits")
    if "train" not in loaded:
        raise invalid_input(
            f"{source} has no 'train' split (splits: {', '.join(loaded) or 'none'})",
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
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
