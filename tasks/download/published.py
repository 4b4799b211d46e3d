"""A published checksum to follow (``dataset.sha256_url``): the small ``.sha256`` file a mirror
publishes beside its archive, read at every run. The archive is then fetched exactly as with a
pinned ``dataset.sha256``: found on disk under that checksum (no download), else downloaded and
verified against it. A changed published file is a new archive, hence a new dataset and a retrain.
"""

from __future__ import annotations

import dataclasses
import re

import httpx

from tasks.download.config import DatasetConfig, archive_name, local_path, sources_for
from tasks.download.errors import DownloadError, SourceNotFoundError, TransientDownloadError
from tasks.download.transfer import http_client

MAX_CHECKSUM_BYTES = 64 * 1024  # a checksum file is a few lines; anything bigger is not one
_LINE = re.compile(r"^\s*([0-9a-fA-F]{64})(?:\s+\*?(\S.*?))?\s*$")


class ChecksumFileError(DownloadError):
    """The published checksum file is not one (or names no checksum for the archive)."""


def parse_checksums(text: str, archive: str, where: str) -> str:
    """The sha256 for ``archive`` in a ``sha256sum``-style file: the line naming it (by its last
    path part), or the only checksum when the file holds just one. Lower case."""
    found: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ChecksumFileError(
                f"{where}: {line[:80]!r} is not a checksum line (`<64 hex digits>  <file name>`, as "
                "sha256sum writes it); check dataset.sha256_url points at the archive's .sha256 file")
        found.append((m.group(1).lower(), m.group(2)))
    named = [h for h, name in found if name and name.replace("\\", "/").rsplit("/", 1)[-1] == archive]
    if named:
        return named[0]
    if len(found) == 1:
        return found[0][0]
    names = ", ".join(n or "(no name)" for _, n in found[:5]) or "nothing"
    raise ChecksumFileError(f"{where}: no checksum for {archive!r} (it lists {names}); point "
                            "dataset.sha256_url at the checksum file of dataset.source")


def _read(url: str, cfg: DatasetConfig) -> str:
    path = local_path(url)
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CHECKSUM_BYTES + 1)
        except OSError as exc:
            raise SourceNotFoundError(f"dataset.sha256_url {url}: cannot be read ({exc.strerror or exc})") from exc
    else:
        try:
            with http_client(cfg) as client:
                resp = client.get(url)
        except httpx.RequestError as exc:
            raise TransientDownloadError(f"dataset.sha256_url {url}: {type(exc).__name__}: {exc} "
                                         "(network error; retried with backoff)") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientDownloadError(f"dataset.sha256_url {url}: HTTP {resp.status_code} (retried)")
        if resp.status_code >= 400:
            raise SourceNotFoundError(f"dataset.sha256_url {url}: HTTP {resp.status_code}; check the URL")
        data = resp.content
    if len(data) > MAX_CHECKSUM_BYTES:
        raise ChecksumFileError(f"dataset.sha256_url {url}: more than {MAX_CHECKSUM_BYTES // 1024} KiB, "
                                "which is no checksum file; check the URL")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChecksumFileError(f"dataset.sha256_url {url}: not text ({exc}); check the URL") from exc


def follow(cfg: DatasetConfig) -> DatasetConfig:
    """``cfg`` with ``sha256`` set to the checksum published at ``cfg.sha256_url`` (read now) and
    ``sha256_url`` cleared: what the fetch and every cache key then use. ``cfg`` as is without one."""
    if not cfg.sha256_url:
        return cfg
    text = _read(cfg.sha256_url, cfg)
    sha256 = parse_checksums(text, archive_name(sources_for(cfg)[0]), f"dataset.sha256_url {cfg.sha256_url}")
    return dataclasses.replace(cfg, sha256=sha256, sha256_url=None)
