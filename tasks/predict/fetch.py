"""An input given as an http(s) URL, downloaded into ``<data_dir>/predict-inputs/`` (streamed to a
``.part`` file, renamed when complete). Network errors, 5xx and 429 are ``TransientFetchError``
(the task retries them); any other status, an oversized, encoded or too slow body, or a redirect
loop is an ``InputError`` (``tasks.core.guards_http``). The file is removed once scored."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from pathlib import Path

from tasks.core.guards_http import DEADLINE, fetch_to_file
from tasks.predict.errors import InputError
from tasks.predict.inputs import MAX_ARCHIVE_BYTES


class TransientFetchError(InputError):
    """The URL may answer in a moment (network error, 5xx, 429): retried by the task."""


def is_url(value: str) -> bool:
    return urllib.parse.urlsplit(str(value)).scheme in ("http", "https")


def local_name(url: str) -> str:
    """``<sha256(url)[:16]>-<last path segment>`` with only safe characters (suffix kept)."""
    base = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]) or "input"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".") or "input"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{safe[-100:]}"


def fetch_url(url: str, dest_dir: str | os.PathLike, max_bytes: int = MAX_ARCHIVE_BYTES,
              deadline_s: float = DEADLINE) -> Path:
    """Download ``url`` into ``dest_dir`` through the core HTTP guard (identity encoding, raw
    bytes counted, an overall deadline, redirect errors naming the URL); returns the file's path."""
    return fetch_to_file(url, Path(dest_dir) / local_name(url), max_bytes, deadline_s,
                         transient=TransientFetchError, permanent=InputError)


def remove_fetched(path: str | os.PathLike, dest_dir: str | os.PathLike) -> None:
    """Delete a downloaded input once it was scored (only a file inside ``dest_dir``)."""
    p, root = Path(path), Path(dest_dir)
    if p.parent.resolve() == root.resolve() and p.is_file():
        p.unlink(missing_ok=True)
