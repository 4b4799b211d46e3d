"""Untrusted text on its way out: names made safe for a terminal, a CSV cell or JSON, and
secrets taken out before anything is recorded or logged. One place for each rule:

- ``escape``: control characters (C0, DEL, C1), bidirectional overrides and lone surrogates
  shown as ``\\xNN`` / ``\\uNNNN``, so an escape sequence in a file name never reaches the
  terminal and ``\\r`` never overwrites a line; a byte that was not UTF-8 (a surrogate from
  ``os.fsdecode``) shows as the ``\\xNN`` of that byte, so ``--json`` is valid UTF-8.
- ``csv_cell``: ``escape`` plus a ``'`` before a cell that a spreadsheet would run as a formula
  (one starting with ``=``, ``+``, ``-``, ``@``, a tab or ``\\r``: OWASP's CSV injection rule).
- ``redact`` / ``redact_url`` / ``redact_mapping``: a URL's user and password, query values of
  signature-like keys (``X-Amz-Signature``, ``sig``, ``token``, ``key``, ...) and the values of
  a mapping of environment variables (``deploy.env``) become ``***``, the key kept beside it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

MASK = "***"
_BIDI = {0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# query keys whose value is a credential (lower-cased, compared whole or as a suffix after - or _)
SECRET_KEYS = ("signature", "sig", "token", "key", "secret", "password", "passwd", "pwd", "auth",
               "credential", "x-amz-credential", "x-amz-security-token", "access_token", "api_key",
               "apikey", "client_secret", "session")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def _escaped(m: re.Match) -> str:
    c = ord(m.group())
    if 0xDC80 <= c <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"


def escape(text: Any) -> str:
    """``text`` with every character that could move the cursor, recolour the terminal, reorder
    the line or break UTF-8 shown as an escape; ordinary text (CJK, emoji, spaces) unchanged."""
    return _UNSAFE.sub(_escaped, str(text))


def csv_cell(text: Any) -> str:
    """``escape(text)``, and a leading ``'`` where a spreadsheet would read a formula."""
    raw = str(text)
    out = escape(raw)
    return "'" + out if raw.startswith(_FORMULA_START) else out


def _secret_key(key: str) -> bool:
    k = key.lower()
    return any(k == s or k.endswith(("-" + s, "_" + s, "." + s)) for s in SECRET_KEYS)


def redact_url(url: str) -> str:
    """``url`` without its credentials: ``user:pw@`` -> ``***@``, signature-like query values
    -> ``***``. Anything that does not parse as a URL is returned as it is."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = []
        for item in query.split("&"):
            key, sep, value = item.partition("=")
            pairs.append(f"{key}={MASK}" if sep and value and _secret_key(urllib.parse.unquote(key)) else item)
        query = "&".join(pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: Any) -> str:
    """Every URL inside ``text`` redacted (a log line, an error message)."""
    return _URL.sub(lambda m: redact_url(m.group()), str(text))


def redact_mapping(env: Mapping[str, Any] | None) -> dict[str, str]:
    """Each value of an environment mapping (``deploy.env``) as ``***``, its key kept."""
    return {str(k): MASK for k in (env or {})}


def redact_record(obj: Any) -> Any:
    """A JSON-able record (metadata, a manifest) with every URL in its strings redacted and the
    values of any ``env`` mapping masked; other values unchanged."""
    if isinstance(obj, dict):
        return {k: (redact_mapping(v) if k == "env" and isinstance(v, dict) else redact_record(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_record(v) for v in obj]
    if isinstance(obj, str) and "://" in obj:
        return redact(obj)
    return obj
