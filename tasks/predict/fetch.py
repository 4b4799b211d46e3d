"""An input given as an http(s) URL, downloaded into ``<data_dir>/predict-inputs/`` (streamed to a
``.part`` file, renamed when complete). Network errors, 5xx and 429 are ``TransientFetchError``
(the task retries them); any other status or an oversized body is an ``InputError``."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from pathlib import Path

from tasks.core.files import fsync_dir
from tasks.predict.errors import InputError
from tasks.predict.inputs import MAX_ARCHIVE_BYTES

TIMEOUT = 30.0  # seconds to connect, and between two reads


class TransientFetchError(InputError):
    """The URL may answer in a moment (network error, 5xx, 429): retried by the task."""


def is_url(value: str) -> bool:
    return urllib.parse.urlsplit(str(value)).scheme in ("http", "https")


def local_name(url: str) -> str:
    """``<sha256(url)[:16]>-<last path segment>`` with only safe characters (suffix kept)."""
    base = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]) or "input"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".") or "input"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{safe[-100:]}"


def _check_status(url: str, status: int) -> None:
    if status >= 500 or status == 429:
        raise TransientFetchError(f"{url}: HTTP {status} (the server may recover; retried)")
    if status >= 400:
        raise InputError(f"{url}: HTTP {status}; check the URL (it is not retried).")


def fetch_url(url: str, dest_dir: str | os.PathLike, max_bytes: int = MAX_ARCHIVE_BYTES) -> Path:
    """Download ``url`` into ``dest_dir``; returns the file's path."""
    import httpx

    dest = Path(dest_dir) / local_name(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=httpx.Timeout(TIMEOUT)) as resp:
            _check_status(url, resp.status_code)
            size = 0
            with open(part, "wb") as f:
                for chunk in resp.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise InputError(f"{url}: more than {max_bytes / 2**30:.0f} GiB; refused. Split "
                                         "the input into smaller archives.")
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
    except httpx.TransportError as exc:
        part.unlink(missing_ok=True)
        raise TransientFetchError(f"{url}: {type(exc).__name__}: {exc} (retried)") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
