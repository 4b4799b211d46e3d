"""Moving the bytes of one URL into a ``.part`` file over HTTP(S), resuming where it stopped.

httpx does the protocol: separate connect and read timeouts, redirects (at most
``MAX_REDIRECTS``), the system's CA store, and the environment's ``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY``. This module adds what a large archive needs: a drop
mid-body resumes at once with ``Range`` (``If-Range`` guards it when the server gave a strong
ETag or a Last-Modified), a server that cannot resume is restarted from byte 0, and a fault
that may pass (network errors, 5xx, 429) is raised as ``TransientDownloadError`` for the task to
retry, keeping the partial file for that retry. Verifying the bytes is the caller's job.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx

from tasks.core import faults
from tasks.download.config import DatasetConfig, Expected, archive_name
from tasks.download.errors import SourceNotFoundError, TransientDownloadError
from tasks.download.progress import Progress, stage_log

MAX_REDIRECTS = 5
MAX_RESUMES = 20  # drops with progress that resume at once, before the task's retry takes over
MAX_RESTARTS = 2  # servers that cannot resume: restarts from byte 0 before giving up
HEADERS = {"User-Agent": "cifar-pipelines", "Accept-Encoding": "identity"}  # the file's own bytes


class _Interrupted(Exception):
    """The connection dropped mid-body (after ``received`` bytes of this response)."""

    def __init__(self, received: int, reason: str):
        super().__init__(reason)
        self.received = received


class _Restart(Exception):
    """The server cannot resume (416, or a 206 at the wrong offset): start from byte 0."""


def http_client(cfg: DatasetConfig) -> httpx.Client:
    """A client with the dataset's timeouts; ``trust_env`` (the default) honours the proxy
    variables, and ``verify`` the system's CA store (as ``ssl`` sees it, SSL_CERT_FILE included)."""
    return httpx.Client(
        timeout=httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        verify=ssl.create_default_context(),
        headers=HEADERS,
    )


def _send(client: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
    """GET ``url``, redirects followed, the body not read yet."""
    try:
        return client.send(client.build_request("GET", url, headers=headers), stream=True)
    except httpx.TooManyRedirects as exc:
        raise SourceNotFoundError(f"{url}: more than {MAX_REDIRECTS} redirects") from exc
    except httpx.InvalidURL as exc:
        raise SourceNotFoundError(f"{url}: not a valid URL ({exc}); check dataset.source/mirrors") from exc
    except httpx.RequestError as exc:
        raise TransientDownloadError(f"{url}: {type(exc).__name__}: {exc} (network error; "
                                     "retried with backoff)") from exc


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes 1000-1999/2000`` header."""
    try:
        _unit, rest = value.split(" ", 1)
        span, total = rest.split("/", 1)
        return int(span.split("-", 1)[0]), (None if total.strip() == "*" else int(total))
    except (AttributeError, ValueError):
        return None, None


def _validator(resp: httpx.Response) -> str | None:
    """What ``If-Range`` may name for this response: a strong ETag, else Last-Modified."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def _body_offset(resp: httpx.Response, url: str, have: int) -> tuple[int, int | None]:
    """Where this response's body goes in the part file (``have`` or 0) and the file's full
    size when the response says; raises for statuses that carry no usable body."""
    status = resp.status_code
    if status == 416:
        raise _Restart(f"{url}: server refused the Range request (416)")
    if status >= 500 or status == 429:
        raise TransientDownloadError(f"{url}: HTTP {status} {resp.reason_phrase} (server error; "
                                     "retried with backoff)")
    if status not in (200, 206):
        raise SourceNotFoundError(
            f"{url}: HTTP {status} {resp.reason_phrase}. Check the URL in dataset.source/mirrors; "
            "the next mirror (if any) is tried.")
    length = _content_length(resp)
    if status == 206:
        start, total = _content_range(resp.headers.get("Content-Range"))
        if start != have:
            raise _Restart(f"{url}: asked for bytes from {have:,} but the server sent a 206 "
                           f"starting at {start}")
        return have, total
    if have:  # 200: the whole body, whether or not we asked for a range
        stage_log().info(f"{url}: server ignored the Range request (or the file changed); "
                         "restarting from byte 0")
    return 0, length


def _content_length(resp: httpx.Response) -> int | None:
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _write_body(resp: httpx.Response, part: Path, offset: int, progress: Progress) -> None:
    """Append the body to ``part`` (truncated to ``offset`` first), fsynced; _Interrupted
    when the connection drops before the body is complete."""
    length = _content_length(resp)
    received = 0
    with open(part, "ab" if offset else "wb") as f:
        try:
            for block in resp.iter_raw():  # as it arrives: a drop keeps every byte already here
                f.write(block)
                received += len(block)
                progress.update(len(block))
                if received == len(block) and faults.armed("download.mid-stream"):
                    f.flush()  # the first block on disk, where the fault matrix stops the run
                    faults.reached("download.mid-stream")
        except httpx.TransportError as exc:
            raise _Interrupted(received, f"{type(exc).__name__}: {exc}") from exc
        finally:
            f.flush()
            os.fsync(f.fileno())
    if length is not None and received < length:
        raise _Interrupted(received, f"connection closed after {received:,} of {length:,} bytes")


def _request_once(client: httpx.Client, url: str, part: Path, exp: Expected, validator: dict) -> None:
    """One GET into ``part``, resuming with Range from its current size. Returns when the body
    is complete; raises _Interrupted / _Restart / a DownloadError otherwise. ``validator``
    carries the ETag / Last-Modified seen so far from one request to the next."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have and validator.get("value"):
        headers["If-Range"] = validator["value"]
    resp = _send(client, url, headers)
    try:
        offset, total = _body_offset(resp, url, have)
        if resp.status_code == 200:
            validator["value"] = _validator(resp)
        progress = Progress(f"downloading {archive_name(url)}", total or exp.size, offset)
        _write_body(resp, part, offset, progress)
        if progress.done and progress.total:
            stage_log().info(progress.line())
    finally:
        resp.close()


def download_to_part(url: str, part: Path, exp: Expected, cfg: DatasetConfig,
                     max_resumes: int = MAX_RESUMES) -> None:
    """Fill ``part`` with the whole file. A drop after some progress resumes at once with Range;
    a drop with no progress (or too many) raises TransientDownloadError for the task to retry."""
    part.parent.mkdir(parents=True, exist_ok=True)
    resumes = restarts = 0
    validator: dict[str, str | None] = {}
    log = stage_log()
    with http_client(cfg) as client:
        while True:
            have = part.stat().st_size if part.exists() else 0
            if exp.size is not None and have > exp.size:
                part.unlink()
            if exp.size is not None and have == exp.size:
                return  # complete (verified by the caller)
            try:
                _request_once(client, url, part, exp, validator)
                return
            except _Restart as exc:
                restarts += 1
                log.warning(f"{exc}; restarting from byte 0")
                part.unlink(missing_ok=True)
                validator.clear()
                if restarts > MAX_RESTARTS:
                    raise TransientDownloadError(f"{url}: the server cannot resume ({exc})") from exc
            except _Interrupted as exc:
                got = part.stat().st_size if part.exists() else 0
                if exc.received == 0 or resumes >= max_resumes:
                    raise TransientDownloadError(
                        f"{url}: download interrupted at {got:,} bytes ({exc}); the partial file "
                        f"{part} is kept and the next try resumes from it") from exc
                resumes += 1
                log.warning(f"{url}: connection dropped at {got:,} bytes ({exc}); resuming with Range")
