"""Removing credentials from data URLs before durabert writes them anywhere.

A data source may be given as ``https://user:token@host/train.jsonl`` or as a pre-signed
``s3://bucket/train.jsonl?AWSAccessKeyId=...&Signature=...``. The URL is needed to read the
data, but it must not reach manifests, logs, activity results or error messages: those are
kept for a long time and read by people who were never given the credentials.

The workflow *input* itself is stored by Temporal in the run's history as given; durabert
cannot redact that. Credentials belong in the data worker's environment (``AWS_*`` variables,
``~/.netrc``, a cloud identity), not in the URL.
"""

import re
from typing import Any, Final

REDACTED: Final = "REDACTED"
"""What a removed credential is replaced with."""

SENSITIVE_QUERY_KEY: Final = re.compile(
    r"token|sig|signature|credential|secret|password|passwd|pwd|key|auth|session", re.IGNORECASE
)
"""Query parameter names whose value is a credential (matched anywhere in the name, so
``X-Amz-Signature``, ``X-Goog-Credential``, ``AWSAccessKeyId``, ``sig`` and ``access_token`` all
match). Redacting a harmless parameter by mistake costs nothing; missing a secret does."""

# ``scheme://userinfo@``: the userinfo (user name and password, or a bare token) is a secret.
# Greedy up to the last ``@`` before the path, so an unencoded ``@`` in a password is covered.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s'\"?#]+)@")
# ``?key=value`` / ``&key=value`` / ``;key=value``, inside a URL or in free text (fsspec error
# messages sometimes print a URL without its scheme).
_QUERY_PARAMETER = re.compile(r"(?P<lead>[?&;])(?P<key>[^=&;#\s'\"]+)=(?P<value>[^&;#\s'\"]*)")


def _redact_parameter(match: re.Match[str]) -> str:
    if not SENSITIVE_QUERY_KEY.search(match["key"]) or not match["value"]:
        return match.group(0)
    return f"{match['lead']}{match['key']}={REDACTED}"


def redact(text: str) -> str:
    """Remove URL credentials from a URL or from any text that may contain URLs.

    Args:
        text: A URL, a message, a log value.

    Returns:
        The text with every URL's user information replaced by ``REDACTED@`` and the values
        of credential-like query parameters replaced by ``REDACTED``; the rest (scheme, host,
        path, harmless parameters) is kept so that the source can still be recognised.
    """
    if "@" not in text and "=" not in text:  # the common case: nothing that could hold a secret
        return text
    text = _USERINFO.sub(lambda match: f"{match['scheme']}{REDACTED}@", text)
    return _QUERY_PARAMETER.sub(_redact_parameter, text)


def redact_value(value: Any) -> Any:
    """Redact every string inside a JSON-like value (``data_files`` shapes, log fields).

    Args:
        value: A string, or lists, tuples and dicts of them; anything else is returned as is.

    Returns:
        A copy of the same shape with every string passed through :func:`redact`.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    return value
