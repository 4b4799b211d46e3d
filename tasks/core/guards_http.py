"""Fetching an untrusted URL into a file, bounded in bytes and in time.

- The file's own bytes only: ``Accept-Encoding: identity`` is asked for, the body is read raw
  (``iter_raw``: what the cap counts is what came over the wire), and a body that comes
  ``Content-Encoding``-ed all the same is refused (1 MB of gzip on the wire was 1 GiB once
  decoded, past a cap that counted decoded bytes).
- An overall deadline (``deadline_s``), checked as each block arrives, besides the timeouts of
  each connect and read: a server sending a byte every 5 s never meets a 30 s read timeout.
- At most ``MAX_REDIRECTS`` redirects, to http(s) only; a loop or a longer chain is an error
  naming the URL, not ``httpx.TooManyRedirects``.
- Messages name the URL with its credentials masked (``CifarError`` redacts them).

``fetch_to_file`` streams into ``<dest>.part`` and renames it into place when complete; the
``.part`` is removed on every failure. Errors: ``HttpFetchError`` (the URL or its answer is
wrong: not retried) and ``TransientHttpError`` (network error, 5xx, 429: may be retried).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tasks.core.errors import CifarError
from tasks.core.files import fsync_dir

HEADERS = {"User-Agent": "cifar-pipelines", "Accept-Encoding": "identity"}
MAX_REDIRECTS = 5
TIMEOUT = 30.0  # seconds to connect, and between two reads
DEADLINE = 3600.0  # seconds for the whole transfer


class HttpFetchError(CifarError):
    """The URL or its answer is wrong (4xx, encoded body, too large, too slow, redirect loop)."""


class TransientHttpError(HttpFetchError):
    """A network error, 5xx or 429: the same URL may answer in a moment."""


def fetch_to_file(url: str, dest: Path, max_bytes: int, deadline_s: float = DEADLINE,
                  timeout_s: float = TIMEOUT, transient: type[CifarError] = TransientHttpError,
                  permanent: type[CifarError] = HttpFetchError) -> Path:
    """Download ``url`` to ``dest`` within ``max_bytes`` and ``deadline_s``; returns ``dest``.
    ``transient`` and ``permanent``: the error classes the caller's retry policy knows."""
    import httpx

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    started = time.monotonic()
    try:
        with httpx.Client(follow_redirects=True, max_redirects=MAX_REDIRECTS, headers=HEADERS,
                          timeout=httpx.Timeout(min(timeout_s, deadline_s))) as client:
            with client.stream("GET", url) as resp:
                _answer_ok(url, resp, transient, permanent)
                size = 0
                with open(part, "wb") as f:
                    for chunk in resp.iter_raw():  # as it arrives (a chunk size would wait to fill it)
                        size += len(chunk)
                        if size > max_bytes:
                            raise permanent(f"{url}: more than {max_bytes / 2**20:,.0f} MiB; refused. Split "
                                            "the input into smaller archives.")
                        if time.monotonic() - started > deadline_s:
                            raise permanent(f"{url}: not complete after {deadline_s:,.0f} s ({size:,} bytes "
                                            "so far); given up (the server sends too slowly). Try a "
                                            "closer copy, or download it yourself and pass the file.")
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
    except httpx.TooManyRedirects:
        part.unlink(missing_ok=True)
        raise permanent(f"{url}: more than {MAX_REDIRECTS} redirects (a redirect loop?); check the URL "
                        "in a browser and give the final one.") from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        part.unlink(missing_ok=True)
        raise permanent(f"{url}: {exc}; only http(s) URLs are fetched (redirects included).") from None
    except httpx.TransportError as exc:
        part.unlink(missing_ok=True)
        raise transient(f"{url}: {type(exc).__name__}: {exc} (network error; retried)") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def _answer_ok(url: str, resp, transient, permanent) -> None:
    status = resp.status_code
    if status >= 500 or status == 429:
        raise transient(f"{url}: HTTP {status} (the server may recover; retried)")
    if status >= 400:
        raise permanent(f"{url}: HTTP {status}; check the URL (it is not retried).")
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise permanent(f"{url}: the server sent a {encoding!r}-encoded body although only the file's own "
                        "bytes were asked for (Accept-Encoding: identity); refused rather than inflated "
                        "without a bound. Serve the file as it is, or download it yourself.")
