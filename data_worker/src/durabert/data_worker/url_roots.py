"""Confining object-store data URLs to the URL prefixes of ``DURABERT_ALLOWED_DATA_ROOTS``.

A worker with object-store credentials can read every bucket those credentials reach, not only
the tenant's datasets. When the allowed data roots list an object-store prefix
(``s3://bucket/datasets``), an ``s3://``/``gs://``/``az://`` source must lie under one of the
listed prefixes; when they list none, such URLs are read as before (unconfined). ``http(s)://``
and ``hf://`` sources are never confined here: the roots do not speak about them.

Prefixes match whole path segments (``s3://bucket/data`` admits ``s3://bucket/data/x.jsonl``,
never ``s3://bucket/data-other/x.jsonl``), on the URL without its query or fragment, and scheme
aliases that read the same store compare equal (``s3a://`` is ``s3://``). A URL with ``.`` or
``..`` segments is refused outright rather than interpreted.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from durabert.shared.errors import invalid_input
from durabert.shared.redaction import redact
from durabert.shared.settings import DATA_URL_SCHEMES

SCHEME_ALIASES: Final = {"s3a": "s3", "gcs": "gs", "az": "abfs", "abfss": "abfs"}
"""Schemes that name the same store as another (fsspec reads both with one backend)."""


def store_url_parts(url: str) -> tuple[str, list[str]] | None:
    """Split an object-store URL into its store and path segments.

    Args:
        url: A data URL or an allowed URL prefix.

    Returns:
        ``("s3", ["bucket", "datasets", "a.jsonl"])`` for ``s3://bucket/datasets/a.jsonl?x=1``;
        None when ``url`` is not an object-store URL (a local path, ``https://``, ``hf://``).
    """
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in DATA_URL_SCHEMES:
        return None
    path = rest.split("?", 1)[0].split("#", 1)[0]
    return SCHEME_ALIASES.get(scheme, scheme), [part for part in path.split("/") if part]


def is_under(url: str, prefix: str) -> bool:
    """Whether an object-store URL lies under a prefix, segment by segment.

    Args:
        url: The data URL.
        prefix: An allowed URL prefix.

    Returns:
        True when both are object-store URLs of the same store and the prefix's segments
        start the URL's segments.
    """
    target, root = store_url_parts(url), store_url_parts(prefix)
    if target is None or root is None or target[0] != root[0]:
        return False
    return target[1][: len(root[1])] == root[1]


def confine_url(entry: str, field: str, url_roots: Sequence[str], folders: Sequence[Path]) -> None:
    """Refuse an object-store URL outside the allowed URL prefixes.

    Args:
        entry: A ``data_files`` entry or a ``dataset_name``.
        field: The request field it came from, for the error.
        url_roots: The allowed URL prefixes; empty leaves every URL unconfined.
        folders: The allowed local folders, named in the error beside the prefixes.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``field`` and the allowed roots.
    """
    parts = store_url_parts(entry)
    if parts is None or not url_roots:
        return
    if any(segment in (".", "..") for segment in parts[1]):
        raise invalid_input(f"{redact(entry)!r}: '.' and '..' segments are refused in data URLs", field=field)
    if not any(is_under(entry, root) for root in url_roots):
        allowed = ", ".join([*(str(folder) for folder in folders), *(redact(root) for root in url_roots)])
        raise invalid_input(f"{redact(entry)!r} is outside the allowed data roots ({allowed})", field=field)
