"""Stage 1: download and cache the dataset (see issue: download-and-cache).

Pure functions first, the two Prefect tasks at the bottom:

- ``fetch(cfg, data_dir) -> ArchiveRecord``: stream the archive into
  ``<data_dir>/downloads/<hex16>-<name>.part`` (connect/read timeouts, ``Range`` resume), verify
  size and checksum, then rename it atomically to its content-addressed name. Sources are tried
  in order (``source`` then ``mirrors``); a checksum mismatch or a 404 moves to the next one. A
  second call finds the verified archive and makes no request at all. Local paths and
  ``file://`` URLs are used in place (hashed once; the hash is remembered by file stat).
- ``decode_archive(path, format, max_bytes)``: read members straight from the tarball (nothing is
  extracted), refusing absolute paths, ``..``, links and devices, with a cap on the total size.
  Binary batches are parsed with ``np.frombuffer`` (no per-image Python), python batches with an
  allow-listed unpickler, image folders with Pillow.
- ``decode_and_cache(archive, cfg, data_dir) -> DatasetRecord``: the content-addressed,
  verified ``.npy`` cache of ``tasks/cache.py``, built once under a file lock.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import queue
import ssl
import stat
import sys
import tarfile
import threading
import time
import zlib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urljoin, urlsplit
from zlib import error as zlibError

import numpy as np
from prefect import task
from prefect.tasks import exponential_backoff

from tasks.core import datacache as _cache_module
from tasks.core.settings import SETTINGS
from tasks.core.datacache import DatasetRecord, cache_problems, record_from_manifest, write_dataset_cache
from tasks.core.caching import VerifiedCache
from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_json, file_lock, read_json
from tasks.core.hashing import code_fingerprint, stable_hash
from tasks.core.logs import get_logger

try:  # zlib-ng inflates the 170 MB CIFAR-10 archive ~1.4x faster than zlib, same format and API
    from zlib_ng import zlib_ng as _inflater
except ImportError:  # pragma: no cover - a platform without its wheels: the standard zlib
    _inflater = zlib

OFFICIAL = {
    "cifar10-binary": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "size": 170_052_171,
        "sha256": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        "md5": "c32a1d4ab5d03f1284b67883e8d87530",
    },
    "cifar10-python": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "size": 170_498_071,
        "sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    },
}

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
RECORD = 1 + 3 * 32 * 32  # CIFAR-10 binary record: 1 label byte + 1024 R + 1024 G + 1024 B
BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
CHUNK = 1 << 20
PROGRESS_EVERY_S = 2.0
# Part of every cache key: a change to the decoder or the cache format rebuilds the cache.
CODE_VERSION = code_fingerprint(sys.modules[__name__], _cache_module)


@dataclass(frozen=True)
class DatasetConfig:
    """``dataset:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    format: Literal["cifar10-binary", "cifar10-python", "image-folder"] = "cifar10-binary"
    source: str | None = None  # https URL, file:// URL or local path; None = the official URL
    mirrors: list[str] = field(default_factory=list)
    sha256: str | None = None
    md5: str | None = None
    limit_train: int | None = None  # seeded, class-balanced subset
    limit_test: int | None = None
    subset_seed: int = 0
    max_extract_mb: int = 2048  # archive-bomb cap on decoded/extracted bytes
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) pairs for settings that are wrong together."""
        out: list[tuple[str, str]] = []
        if self.format == "image-folder" and not self.source:
            out.append(("source", "image-folder needs a source: a folder or a .tar/.tar.gz/.zip"))
        official = OFFICIAL.get(self.format, {}).get("url")
        for key, url in [("source", self.source)] + [
            (f"mirrors[{i}]", m) for i, m in enumerate(self.mirrors)
        ]:
            if url and url.startswith(("http://", "https://")) and url != official:
                if not (self.sha256 or self.md5):
                    out.append(
                        (key, f"{url!r} is downloaded over the network but the dataset has no "
                              "sha256 (or md5): add `sha256: <hex>` so a bad download is caught")
                    )
                    break
        if self.sha256 is not None and not _is_hex(self.sha256, 64):
            out.append(("sha256", f"{self.sha256!r} is not 64 hex digits"))
        if self.md5 is not None and not _is_hex(self.md5, 32):
            out.append(("md5", f"{self.md5!r} is not 32 hex digits"))
        for key in ("limit_train", "limit_test", "max_extract_mb", "retries"):
            v = getattr(self, key)
            if v is not None and v < (0 if key == "retries" else 1):
                out.append((key, f"must be positive, got {v}"))
        for key in ("connect_timeout", "read_timeout"):
            if getattr(self, key) <= 0:
                out.append((key, f"must be a positive number of seconds, got {getattr(self, key)}"))
        return out


def _is_hex(s: str, n: int) -> bool:
    return len(s) == n and all(c in "0123456789abcdefABCDEF" for c in s)


# --------------------------------------------------------------------------- errors
class DownloadError(CifarError):
    """No source delivered a verified archive."""


class TransientDownloadError(DownloadError):
    """A network error or a 5xx: the same URL may work in a moment (the task retries these)."""


class SourceNotFoundError(DownloadError):
    """404 (or another 4xx), or a local file that is not there: not retried against that URL."""


class ChecksumError(DownloadError):
    """The bytes are not the archive the config names: not retried against that URL."""


class UnsafeArchiveError(CifarError):
    """An archive member that could escape or abuse the extraction (``..``, absolute, link,
    device, oversized), or a pickle that asks for anything but plain data."""


class DatasetFormatError(CifarError):
    """The archive is safe but its content is not the format the config says."""


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ArchiveRecord:
    path: str  # the verified archive (or the user's local file/folder, used in place)
    sha256: str  # of the file; for a folder, of its file tree (names + contents)
    size: int
    source: str  # the URL or path it came from


@dataclass(frozen=True)
class Expected:
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None

    @property
    def known(self) -> bool:
        return bool(self.sha256 or self.md5)

    @property
    def key(self) -> str:
        """The content address: the expected digest (sha256 preferred)."""
        return (self.sha256 or self.md5 or "").lower()

    def describe(self) -> str:
        parts = [f"sha256 {self.sha256}" if self.sha256 else "", f"md5 {self.md5}" if self.md5 else "",
                 f"{self.size:,} bytes" if self.size else ""]
        return ", ".join(p for p in parts if p) or "(no checksum)"


def expected_for(cfg: DatasetConfig) -> Expected:
    """The checksum the archive must have: the config's, else the built-in one of an official
    source. A local source without one gets ``Expected()`` (it is hashed and used as is)."""
    off = OFFICIAL.get(cfg.format)
    if cfg.sha256 or cfg.md5:
        sha = cfg.sha256.lower() if cfg.sha256 else None
        size = off["size"] if off and sha == off["sha256"] else None
        return Expected(sha, cfg.md5.lower() if cfg.md5 else None, size)
    if off and (cfg.source is None or cfg.source == off["url"]):
        return Expected(off["sha256"], off.get("md5"), off["size"])
    return Expected()


def sources_for(cfg: DatasetConfig) -> list[str]:
    if cfg.source:
        primary = cfg.source
    elif cfg.format in OFFICIAL:
        primary = OFFICIAL[cfg.format]["url"]
    else:
        raise DownloadError(f"dataset.format {cfg.format!r} has no official URL: set dataset.source")
    return [primary, *cfg.mirrors]


def local_path(source: str) -> Path | None:
    """The filesystem path of a ``file://`` URL or plain path; None for http(s)."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        return Path(unquote(urlsplit(source).path))
    if scheme and len(scheme) > 1:
        raise DownloadError(f"{source!r}: unsupported URL scheme {scheme!r}; use https://, "
                            "file:// or a local path")
    return Path(source)


def _name_of(source: str) -> str:
    name = PurePosixPath(unquote(urlsplit(source).path)).name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "archive"


def final_path(cfg: DatasetConfig, data_dir: str | os.PathLike) -> Path | None:
    """Where a downloaded archive lives, named by its expected checksum (None if unknown)."""
    exp = expected_for(cfg)
    if not exp.known:
        return None
    return Path(data_dir) / "downloads" / f"{exp.key[:16]}-{_name_of(sources_for(cfg)[0])}"


# --------------------------------------------------------------------------- hashing
def hash_file(path: str | os.PathLike) -> tuple[str, str, int]:
    """(sha256, md5, size) in one pass."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            md5.update(block)
            size += len(block)
    return sha.hexdigest(), md5.hexdigest(), size


def _stat_sig(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _index_path(data_dir: str | os.PathLike, path: Path) -> Path:
    return Path(data_dir) / "downloads" / "local-index" / f"{stable_hash(str(path.resolve()))}.json"


def _tree_files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def hash_local(path: Path, data_dir: str | os.PathLike) -> tuple[str, str | None, int]:
    """(sha256, md5, size) of a local file, or of a folder's tree (md5 None). Remembered by the
    file's (size, mtime, inode) -- or every file's, for a folder -- so a rerun does not re-read it."""
    if path.is_dir():
        files = _tree_files(path)
        sig = stable_hash([(rel, _stat_sig(p.lstat())) for rel, p in files])
    else:
        sig = stable_hash(_stat_sig(path.stat()))
    index = _index_path(data_dir, path)
    try:
        known = read_json(index)
        if known.get("sig") == sig:
            return known["sha256"], known.get("md5"), known["size"]
    except (OSError, ValueError):
        pass
    if path.is_dir():
        h, size = hashlib.sha256(), 0
        for rel, p in files:
            digest, _, n = hash_file(p)
            h.update(f"{rel}\0{digest}\n".encode())
            size += n
        sha, md5 = h.hexdigest(), None
    else:
        sha, md5, size = hash_file(path)
    atomic_write_json(index, {"path": str(path), "sig": sig, "sha256": sha, "md5": md5, "size": size})
    return sha, md5, size


# --------------------------------------------------------------------------- progress
class Progress:
    """Logs bytes, %, MB/s and ETA at most every ``every`` seconds (run logs and terminal)."""

    def __init__(self, label: str, total: int | None, start: int = 0, every: float = PROGRESS_EVERY_S):
        self.label, self.total, self.done, self.start = label, total, start, start
        self.every = every
        self.t0 = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            _say(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.t0, 1e-9)
        rate = (self.done - self.start) / elapsed
        mb = self.done / 1e6
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            return (f"{self.label}: {mb:,.1f}/{self.total / 1e6:,.1f} MB ({100 * self.done / self.total:.0f}%), "
                    f"{rate / 1e6:.2f} MB/s, ETA {eta:,.0f} s")
        return f"{self.label}: {mb:,.1f} MB, {rate / 1e6:.2f} MB/s"


def _say(msg: str, level: str = "info") -> None:
    logger = get_logger()
    getattr(logger, level)(msg)
    # Outside a Prefect run with no logging configured, still show it in the terminal.
    base = getattr(logger, "logger", logger)
    if base.name == "cifar" and not base.hasHandlers():
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- HTTP
class _Interrupted(Exception):
    """The connection dropped mid-body (after ``received`` bytes of this response)."""

    def __init__(self, received: int, reason: str):
        super().__init__(reason)
        self.received = received


class _Restart(Exception):
    """The server cannot resume (416, or a 206 at the wrong offset): start from byte 0."""


def _open(url: str, headers: dict[str, str], connect_timeout: float, read_timeout: float,
          max_redirects: int = 5) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """GET ``url`` with separate connect and read timeouts; follows redirects."""
    for _ in range(max_redirects + 1):
        parts = urlsplit(url)
        port = parts.port
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, port, timeout=connect_timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, port, timeout=connect_timeout)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            conn.connect()
            conn.sock.settimeout(read_timeout)
            conn.request("GET", target, headers={"User-Agent": "cifar-pipelines", **headers})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransientDownloadError(f"{url}: {type(exc).__name__}: {exc} (network error; "
                                         "retried with backoff)") from exc
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            url = urljoin(url, resp.getheader("Location"))
            conn.close()
            continue
        return conn, resp, url
    raise SourceNotFoundError(f"{url}: more than {max_redirects} redirects")


def _content_range_start(value: str | None) -> tuple[int | None, int | None]:
    # "bytes 1000-1999/2000"
    try:
        unit, rest = value.split(" ", 1)
        span, total = rest.split("/", 1)
        return int(span.split("-", 1)[0]), (None if total.strip() == "*" else int(total))
    except (AttributeError, ValueError):
        return None, None


def _request_once(url: str, part: Path, exp: Expected, cfg: DatasetConfig) -> None:
    """One GET into ``part``: resumes with Range from its current size. Returns when the body
    is complete; raises _Interrupted / _Restart / a DownloadError otherwise."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    conn, resp, real_url = _open(url, headers, cfg.connect_timeout, cfg.read_timeout)
    try:
        if resp.status == 416:
            raise _Restart(f"{url}: server refused the Range request (416)")
        if resp.status >= 500 or resp.status == 429:
            raise TransientDownloadError(f"{url}: HTTP {resp.status} {resp.reason} (server error; "
                                         "retried with backoff)")
        if resp.status not in (200, 206):
            raise SourceNotFoundError(
                f"{url}: HTTP {resp.status} {resp.reason}. Check the URL in dataset.source/mirrors; "
                "the next mirror (if any) is tried.")
        length = resp.getheader("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            start, total = _content_range_start(resp.getheader("Content-Range"))
            if start != have:
                raise _Restart(f"{url}: asked for bytes from {have:,} but the server sent a 206 "
                               f"starting at {start}")
            mode = "ab"
        else:  # 200: the whole body, whether or not we asked for a range
            if have:
                _say(f"{url}: server ignored the Range request; restarting from byte 0")
            have, total, mode = 0, length, "wb"
        total = total or exp.size
        progress = Progress(f"downloading {_name_of(url)}", total, have)
        received = 0
        with open(part, mode) as f:
            while True:
                try:
                    block = resp.read(CHUNK if length is None else min(CHUNK, length - received))
                except (OSError, http.client.HTTPException) as exc:
                    raise _Interrupted(received, f"{type(exc).__name__}: {exc}") from exc
                if not block:
                    break
                f.write(block)
                received += len(block)
                progress.update(len(block))
                if length is not None and received >= length:
                    break
            f.flush()
            os.fsync(f.fileno())
        if length is not None and received < length:
            raise _Interrupted(received, f"connection closed after {received:,} of {length:,} bytes")
        if progress.done and total:
            _say(progress.line())
    finally:
        conn.close()


def download_to_part(url: str, part: Path, exp: Expected, cfg: DatasetConfig, max_resumes: int = 20) -> None:
    """Fill ``part`` with the whole file. A drop after some progress resumes at once with Range;
    a drop with no progress (or too many) raises TransientDownloadError for the task to retry."""
    part.parent.mkdir(parents=True, exist_ok=True)
    resumes = restarts = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if exp.size is not None and have > exp.size:
            part.unlink()
        if exp.size is not None and have == exp.size:
            return  # complete (verified by the caller)
        try:
            _request_once(url, part, exp, cfg)
            return
        except _Restart as exc:
            restarts += 1
            _say(f"{exc}; restarting from byte 0", "warning")
            part.unlink(missing_ok=True)
            if restarts > 2:
                raise TransientDownloadError(f"{url}: the server cannot resume ({exc})") from exc
        except _Interrupted as exc:
            got = part.stat().st_size if part.exists() else 0
            if exc.received == 0 or resumes >= max_resumes:
                raise TransientDownloadError(
                    f"{url}: download interrupted at {got:,} bytes ({exc}); the partial file "
                    f"{part} is kept and the next try resumes from it") from exc
            resumes += 1
            _say(f"{url}: connection dropped at {got:,} bytes ({exc}); resuming with Range", "warning")


# --------------------------------------------------------------------------- fetch
def _sidecar(final: Path) -> Path:
    return final.with_name(final.name + ".json")


def cached_archive(cfg: DatasetConfig, data_dir: str | os.PathLike) -> ArchiveRecord | None:
    """The verified archive already at hand, with no network: a local primary source (hashed
    once, then remembered by its stat), or the downloaded file at its content-addressed name
    with the size and mtime recorded when it was verified (a file touched since is re-hashed).
    None when absent or not intact."""
    exp = expected_for(cfg)
    primary = sources_for(cfg)[0]
    path = local_path(primary)
    if path is not None and path.exists():
        sha, md5, size = hash_local(path, data_dir)
        if (exp.sha256 and sha != exp.sha256) or (exp.md5 and md5 and md5 != exp.md5):
            return None
        return ArchiveRecord(str(path), sha, size, primary)
    final = final_path(cfg, data_dir)
    if final is None:
        return None
    try:
        meta = read_json(_sidecar(final))
        st = final.stat()
    except (OSError, ValueError):
        return None
    if st.st_size != meta.get("size") or (exp.size and st.st_size != exp.size):
        return None
    if (exp.sha256 and meta.get("sha256") != exp.sha256) or (exp.md5 and meta.get("md5") != exp.md5):
        return None
    if st.st_mtime_ns != meta.get("mtime_ns"):
        if hash_file(final)[0] != meta.get("sha256"):
            return None
        atomic_write_json(_sidecar(final), {**meta, "mtime_ns": st.st_mtime_ns})
    return ArchiveRecord(str(final), meta["sha256"], st.st_size, meta.get("source", ""))


def _check(actual: tuple[str, str | None, int], exp: Expected, where: str, dropped: str) -> None:
    sha, md5, size = actual
    bad = []
    if exp.size is not None and size != exp.size:
        bad.append(f"size: expected {exp.size:,} bytes, got {size:,}")
    if exp.sha256 and sha != exp.sha256:
        bad.append(f"sha256: expected {exp.sha256}, got {sha}")
    if exp.md5 and md5 is not None and md5 != exp.md5:
        bad.append(f"md5: expected {exp.md5}, got {md5}")
    if bad:
        raise ChecksumError(
            f"{where} is not the expected archive:\n  " + "\n  ".join(bad) + f"\n{dropped} "
            "To resolve: check dataset.source / mirrors point at this dataset, or, if the "
            "dataset was deliberately updated, set dataset.sha256 to its new checksum.")


def _fetch_http(url: str, cfg: DatasetConfig, data_dir: str | os.PathLike) -> ArchiveRecord:
    exp = expected_for(cfg)
    if not exp.known:
        raise DownloadError(f"{url}: downloading over the network needs dataset.sha256 (or md5) "
                            "so a bad download is caught; add it to pipelines.yaml")
    final = final_path(cfg, data_dir)
    part = final.with_name(final.name + ".part")
    with file_lock(final.with_name(final.name + ".lock"), f"download of {final.name}"):
        hit = cached_archive(cfg, data_dir)  # another run may have finished it meanwhile
        if hit is not None:
            return hit
        t0 = time.monotonic()
        _say(f"downloading {url} -> {final} (expected {exp.describe()})")
        download_to_part(url, part, exp, cfg)
        actual = hash_file(part)
        try:
            _check(actual, exp, url, f"Deleted the partial download {part}; nothing was cached.")
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, final)
        st = final.stat()
        atomic_write_json(_sidecar(final), {"sha256": actual[0], "md5": actual[1], "size": actual[2],
                                            "mtime_ns": st.st_mtime_ns, "source": url})
        _say(f"verified {final.name}: {actual[2] / 1e6:,.1f} MB in {time.monotonic() - t0:.1f} s")
        return ArchiveRecord(str(final), actual[0], actual[2], url)


def _fetch_local(source: str, path: Path, cfg: DatasetConfig, data_dir: str | os.PathLike) -> ArchiveRecord:
    if not path.exists():
        raise SourceNotFoundError(f"{source}: no such file or folder. Check dataset.source "
                                  "(relative paths are resolved against pipelines.yaml's folder).")
    if path.is_dir() and cfg.format != "image-folder":
        raise DatasetFormatError(f"{source} is a folder, but format {cfg.format!r} needs the "
                                 ".tar.gz archive; use format: image-folder for a folder of images")
    sha, md5, size = hash_local(path, data_dir)
    exp = expected_for(cfg)
    if exp.known and not path.is_dir():
        _check((sha, md5, size), exp, str(path), "The file was left untouched.")
    elif exp.sha256 and sha != exp.sha256:
        _check((sha, None, size), Expected(exp.sha256), str(path), "The folder was left untouched.")
    return ArchiveRecord(str(path), sha, size, source)


def fetch(cfg: DatasetConfig, data_dir: str | os.PathLike) -> ArchiveRecord:
    """The verified archive for ``cfg``: from ``data_dir`` if already there (no request at all),
    else from the first source (then mirrors) that delivers the expected bytes."""
    hit = cached_archive(cfg, data_dir)
    if hit is not None:
        return hit
    failures: list[tuple[str, DownloadError]] = []
    for src in sources_for(cfg):
        try:
            path = local_path(src)
            return _fetch_local(src, path, cfg, data_dir) if path is not None else _fetch_http(src, cfg, data_dir)
        except (TransientDownloadError, SourceNotFoundError, ChecksumError) as exc:
            failures.append((src, exc))
            if len(failures) < len(sources_for(cfg)):
                _say(f"{src} failed ({type(exc).__name__}); trying the next mirror", "warning")
    if len(failures) == 1:
        raise failures[0][1]
    kind = TransientDownloadError if any(isinstance(e, TransientDownloadError) for _, e in failures) else DownloadError
    detail = "\n".join(f"- {src}: {exc}" for src, exc in failures)
    raise kind(f"every source failed for the {cfg.format} archive:\n{detail}")


# --------------------------------------------------------------------------- safe reading
def _safe_name(name: str, where: str) -> str:
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in parts:
        raise UnsafeArchiveError(f"{where}: member {name!r} has an absolute or '..' path; refused "
                                 "(it could write outside the extraction folder). Nothing was extracted.")
    return "/".join(p for p in parts if p not in (".", ""))


class _Budget:
    def __init__(self, max_bytes: int, where: str):
        self.left, self.max, self.where = max_bytes, max_bytes, where

    def take(self, n: int, name: str) -> None:
        self.left -= n
        if self.left < 0:
            raise UnsafeArchiveError(
                f"{self.where}: members add up to more than {self.max / 2**20:,.0f} MiB (at {name!r}); "
                "refused as a possible archive bomb. Raise dataset.max_extract_mb if it is genuine.")


class _HashingReader(io.RawIOBase):
    """A read-only file wrapper that hashes every byte read (to verify while decoding)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
        return n

    def finish(self) -> str:
        while block := self.f.read(CHUNK):
            self.sha.update(block)
        return self.sha.hexdigest()


def _check_member(m: tarfile.TarInfo, where: str, budget: _Budget, dirs: set[str] | None) -> str | None:
    """The member's normalised name if it is a regular file; None for a folder; refuses the
    archive on absolute/``..`` names, links, devices, FIFOs and sparse files."""
    name = _safe_name(m.name, where)
    if m.issym() or m.islnk():
        raise UnsafeArchiveError(f"{where}: member {m.name!r} is a link (to {m.linkname!r}); "
                                 "refused. Nothing was extracted.")
    if m.isdir():
        if dirs is not None:
            dirs.add(name)
        return None
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise UnsafeArchiveError(f"{where}: member {m.name!r} is not a regular file "
                                 f"(tar type {m.type!r}: device, FIFO or sparse); refused.")
    budget.take(m.size, name)
    return name


def iter_tar(path: str | os.PathLike, wanted: Callable[[str], bool], max_bytes: int,
             dirs: set[str] | None = None, digest: list | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the wanted regular members, straight from the (compressed) tar stream.

    Refuses the whole archive on any absolute/``..`` name, link, device or FIFO member, and
    when the members add up to more than ``max_bytes``. ``dirs`` collects folder names; when
    ``digest`` is a list, the sha256 of the archive file is appended to it at the end.
    """
    where = str(path)
    with open(path, "rb") as raw:
        reader = _HashingReader(raw)
        buffered = io.BufferedReader(reader, CHUNK)
        yield from _iter_tar_stream(buffered, where, wanted, _Budget(max_bytes, where), dirs, "r|*")
        if digest is not None:
            buffered.read()  # rest of the stream buffered in
            digest.append(reader.finish())


class _Inflating(io.RawIOBase):
    """The inflated bytes of a .gz file, produced ahead by a background thread.

    The thread reads the file in 1 MiB chunks, hands each to a hashing thread and inflates it
    (zlib-ng, or zlib, both release the GIL) into a bounded queue, so inflating, hashing and
    the consumer's parsing run at once on separate cores. Inflated output is capped at
    ``max_bytes`` + 1 MiB (archive bombs); a truncated or corrupt stream raises in the consumer.
    The bytes hashed are the bytes inflated: ``sha256()`` is the digest of what was decoded.
    """

    AHEAD = 16  # chunks of inflated output queued ahead of the consumer (<= 64 MiB)

    def __init__(self, path: str | os.PathLike, max_bytes: int, where: str):
        super().__init__()
        self._path, self._where, self._limit = path, where, max_bytes + (1 << 20)
        self._max_mb = max_bytes / 2**20
        self._out: queue.Queue = queue.Queue(self.AHEAD)
        self._raw: queue.Queue = queue.Queue(self.AHEAD)
        self._sha = hashlib.sha256()
        self._buf, self._pos, self._done = b"", 0, False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._hasher = threading.Thread(target=self._hash, name="cifar-archive-hash", daemon=True)
        self._producer = threading.Thread(target=self._produce, name="cifar-archive-inflate", daemon=True)
        self._hasher.start()
        self._producer.start()

    def readable(self) -> bool:
        return True

    def _put(self, q: queue.Queue, item) -> None:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _hash(self) -> None:
        while True:
            try:
                chunk = self._raw.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if chunk is None:
                return
            self._sha.update(chunk)

    def _produce(self) -> None:
        total = 0
        try:
            with open(self._path, "rb") as f:
                d = _inflater.decompressobj(31)
                while chunk := f.read(CHUNK):
                    self._put(self._raw, chunk)
                    data = chunk
                    while data and not self._stop.is_set():
                        if d.eof:  # another gzip member follows, or trailing zero padding
                            if not data.strip(b"\0"):
                                break
                            d = _inflater.decompressobj(31)
                        out = d.decompress(data, 4 * CHUNK)  # bounded: a bomb cannot balloon here
                        data = d.unconsumed_tail if not d.eof else d.unused_data
                        if out:
                            total += len(out)
                            if total > self._limit:
                                raise UnsafeArchiveError(
                                    f"{self._where}: inflates to more than {self._max_mb:,.0f} MiB; refused "
                                    "as a possible archive bomb. Raise dataset.max_extract_mb if it is genuine.")
                            self._put(self._out, out)
                    if self._stop.is_set():
                        return
                if not d.eof:
                    raise DatasetFormatError(f"{self._where}: the gzip stream is truncated "
                                             f"(after {total:,} inflated bytes)")
        except (zlib.error, _inflater.error) as exc:
            self._error = DatasetFormatError(f"{self._where}: the archive is corrupt ({exc})")
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            self._error = exc
        finally:
            self._put(self._raw, None)
            self._put(self._out, None)

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            if self._done:
                return 0
            item = self._out.get()
            if item is None:
                self._done = True
                if self._error is not None:
                    raise self._error
                return 0
            self._buf, self._pos = item, 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def sha256(self) -> str:
        """The archive's digest; call after reading to the end."""
        scratch = bytearray(CHUNK)
        while self.readinto(scratch):
            pass
        self._hasher.join()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._stop.set()  # an abandoned read: the threads drop out instead of blocking
        super().close()


def _iter_tar_stream(fileobj, where: str, wanted: Callable[[str], bool], budget: _Budget,
                     dirs: set[str] | None, mode: str) -> Iterator[tuple[str, bytes]]:
    try:
        tf = tarfile.open(fileobj=fileobj, mode=mode)  # default 10 KiB blocks: a bigger bufsize
        # makes each small read copy the rest of the buffer (60,000 JPEG members: 3x slower)
    except tarfile.TarError as exc:
        raise DatasetFormatError(f"{where} is not a readable tar archive: {exc}") from exc
    with tf:
        try:
            for m in tf:
                name = _check_member(m, where, budget, dirs)
                if name is not None and wanted(name):
                    data = tf.extractfile(m).read()
                    if len(data) != m.size:
                        raise DatasetFormatError(f"{where}: member {name!r} is truncated "
                                                 f"({len(data):,} of {m.size:,} bytes)")
                    yield name, data
        except (tarfile.TarError, EOFError, OSError, zlibError) as exc:
            raise DatasetFormatError(f"{where}: the archive is corrupt or truncated ({exc})") from exc


def iter_tar_threaded(path: str | os.PathLike, wanted: Callable[[str], bool], max_bytes: int,
                      dirs: set[str] | None = None, digest: list | None = None) -> Iterator[tuple[str, bytes]]:
    """Like :func:`iter_tar`, faster for a .tar.gz (CIFAR-10's 170 MB): the archive inflates and
    is hashed in background threads while the caller parses each member as it arrives, so
    decoding overlaps decompression. Other compressions go through :func:`iter_tar`."""
    where = str(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        yield from iter_tar(path, wanted, max_bytes, dirs, digest)
        return
    stream = _Inflating(path, max_bytes, where)
    try:
        yield from _iter_tar_stream(stream, where, wanted, _Budget(max_bytes, where), dirs, "r|")
        if digest is not None:
            digest.append(stream.sha256())
    finally:
        stream.close()


def iter_zip(path: str | os.PathLike, wanted: Callable[[str], bool], max_bytes: int,
             dirs: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    where = str(path)
    budget = _Budget(max_bytes, where)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetFormatError(f"{where} is not a readable zip archive: {exc}") from exc
    with zf:
        for info in zf.infolist():
            name = _safe_name(info.filename, where)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"{where}: member {info.filename!r} is a link; refused.")
            if info.is_dir():
                if dirs is not None:
                    dirs.add(name)
                continue
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                raise UnsafeArchiveError(f"{where}: member {info.filename!r} is not a regular file; refused.")
            budget.take(info.file_size, name)
            if wanted(name):
                try:
                    data = zf.read(info)
                except (zipfile.BadZipFile, OSError, zlibError) as exc:
                    raise DatasetFormatError(f"{where}: member {name!r} is corrupt ({exc})") from exc
                budget.take(len(data) - info.file_size, name)
                yield name, data


def iter_folder(root: Path, wanted: Callable[[str], bool], max_bytes: int,
                dirs: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    budget = _Budget(max_bytes, str(root))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        if dirs is not None and rel_dir != ".":
            dirs.add(rel_dir)
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if not wanted(rel):
                continue
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeArchiveError(f"{p} is a link or special file; refused (copy the image in instead)")
            budget.take(st.st_size, rel)
            yield rel, p.read_bytes()


# --------------------------------------------------------------------------- safe unpickling
class _AllowListUnpickler(pickle.Unpickler):
    """Plain containers, bytes, numbers -- and exactly the NumPy reconstructors a pickled
    uint8 array needs. Any other global (os.system, builtins.eval, ...) is refused, so the
    pickle's code is never run."""

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")):
            return np._core.multiarray._reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def safe_unpickle(data: bytes, where: str) -> Any:
    try:
        return _AllowListUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "is not allowed" in str(exc):
            raise UnsafeArchiveError(
                f"{where}: the pickle asks for {exc}; refused without running it. A CIFAR-10 "
                "batch holds only a dict of bytes, lists and a uint8 array: this archive was "
                "tampered with or is not CIFAR-10 -- delete it and download the official one.") from exc
        raise DatasetFormatError(f"{where}: not a valid pickle ({exc})") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DatasetFormatError(f"{where}: not a valid CIFAR-10 pickle ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- decoding
def planar_to_hwc(src: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(N, 3072) channel-planar rows (1024 R, 1024 G, 1024 B, each row-major) -> (N, 32, 32, 3).
    One strided copy per channel: ~4x faster than copying a transposed view (whose innermost
    loop would be 3 long)."""
    src = src.reshape(-1, 3, 1024)
    if out is None:
        out = np.empty((len(src), 32, 32, 3), dtype=np.uint8)
    flat = out.reshape(len(src), 1024, 3)
    for c in range(3):
        flat[:, :, c] = src[:, c, :]
    return out


def _binary_records(data, where: str) -> np.ndarray:
    if len(data) % RECORD:
        raise DatasetFormatError(
            f"{where}: {len(data):,} bytes is not a multiple of {RECORD} (1 label byte + 3,072 "
            f"pixel bytes per image): the file is truncated or not CIFAR-10 binary "
            f"({len(data) // RECORD:,} whole records + {len(data) % RECORD} bytes).")
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)


def parse_binary_batch(data: bytes, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte + 1024 R + 1024 G + 1024 B (row-major) -> x (N,32,32,3), y (N,)."""
    a = _binary_records(data, where)
    y = a[:, 0].copy()
    _check_labels(y, num_classes, where)
    return planar_to_hwc(a[:, 1:]), y


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.size and int(y.max()) >= num_classes:
        i = int(np.argmax(y >= num_classes))
        raise DatasetFormatError(f"{where}: record {i} has label {int(y[i])}, outside 0..{num_classes - 1} "
                                 f"({num_classes} classes)")


def _check_classes(classes: list[str], where: str) -> tuple[str, ...]:
    if tuple(classes) != CIFAR10_CLASSES:
        raise DatasetFormatError(f"{where}: class names {classes} are not CIFAR-10's "
                                 f"{list(CIFAR10_CLASSES)}; is this the right archive and format?")
    return CIFAR10_CLASSES


def _missing(got: dict[str, bytes], need: list[str], where: str, fmt: str) -> None:
    missing = [n for n in need if n not in got]
    if missing:
        raise DatasetFormatError(f"{where}: the {fmt} archive lacks {', '.join(missing)}; "
                                 "is dataset.format right for this archive?")


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts)


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


class _Split:
    """One split's batches (train: data_batch_1..5), each converted to (N, 32, 32, 3) as it comes
    out of the archive -- straight into the split's single array while the batches are all one
    size (the official archives: no concatenation afterwards)."""

    def __init__(self, names: list[str]):
        self.names, self.x, self.n = names, None, None
        self.parts: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}

    def add(self, name: str, planar: np.ndarray, y: np.ndarray) -> None:
        if self.n is None:
            self.n = len(y)
            self.x = np.empty((self.n * len(self.names), 32, 32, 3), dtype=np.uint8)
        if len(y) == self.n and name not in self.parts:
            i = self.names.index(name)
            planar_to_hwc(planar, self.x[i * self.n:(i + 1) * self.n])
            self.parts[name] = (None, y)  # None: in place in self.x
        else:
            self.parts[name] = (planar_to_hwc(planar), y)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        xs = [self.parts[n][0] for n in self.names]
        y = _stack([self.parts[n][1] for n in self.names])
        if all(x is None for x in xs):
            return self.x, y
        return _stack([self.x[i * self.n:(i + 1) * self.n] if x is None else x
                       for i, x in enumerate(xs)]), y


def _read_batches(path, fmt: str, folder: str, suffix: str, meta: str, max_bytes: int,
                  digest: list | None, parse: Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]):
    """Both CIFAR-10 layouts: ``parse`` turns each batch into planar pixels + labels the moment
    it comes out of the archive (while the rest inflates). Returns the train and test arrays and
    the raw bytes of the ``meta`` member (class names)."""
    names = [f"{folder}/{b}{suffix}" for b in (*TRAIN_BATCHES, "test_batch")]
    meta = f"{folder}/{meta}"
    train, test = _Split(names[:5]), _Split(names[5:])
    got: dict[str, bytes | None] = {}
    for name, data in iter_tar_threaded(path, lambda n: n in names or n == meta, max_bytes, digest=digest):
        if name == meta:
            got[name] = data
        else:
            got[name] = None  # converted already; only its presence is kept
            (train if name in train.names else test).add(name, *parse(data, f"{path}:{name}"))
    _missing(got, [*names, meta], str(path), fmt)
    return (*train.arrays(), *test.arrays()), got[meta], f"{path}:{meta}"


def decode_binary(path: str | os.PathLike, max_bytes: int, digest: list | None = None) -> Arrays:
    def parse(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
        a = _binary_records(data, where)
        _check_labels(a[:, 0], len(CIFAR10_CLASSES), where)
        return a[:, 1:], a[:, 0].copy()

    arrays, meta, where = _read_batches(path, "cifar10-binary", BIN_DIR, ".bin", "batches.meta.txt",
                                        max_bytes, digest, parse)
    classes = _check_classes([ln.strip() for ln in meta.decode("utf-8", "replace").splitlines()
                              if ln.strip()], where)
    return (*arrays, classes)


def parse_python_batch(data: bytes, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (planar pixels (N, 3072) uint8, labels (N,) uint8)."""
    d = safe_unpickle(data, where)
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{where}: expected a dict, got {type(d).__name__}")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DatasetFormatError(f"{where}: the batch has no 'data'/'labels' (keys: {sorted(d)})")
    x = np.asarray(d["data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DatasetFormatError(f"{where}: 'data' is {x.dtype} {x.shape}, expected uint8 (N, 3072)")
    labels = np.asarray(d["labels"])
    if labels.shape != (x.shape[0],) or labels.size and (labels.min() < 0):
        raise DatasetFormatError(f"{where}: {labels.shape[0]} labels for {x.shape[0]} images")
    if labels.size and labels.max() >= num_classes:
        _check_labels(labels, num_classes, where)
    return x, labels.astype(np.uint8)


def decode_python(path: str | os.PathLike, max_bytes: int, digest: list | None = None) -> Arrays:
    arrays, meta, where = _read_batches(
        path, "cifar10-python", PY_DIR, "", "batches.meta", max_bytes, digest,
        lambda data, where: parse_python_batch(data, where, len(CIFAR10_CLASSES)))
    m = safe_unpickle(meta, where)
    raw = m.get(b"label_names", m.get("label_names")) if isinstance(m, dict) else None
    if not isinstance(raw, list):
        raise DatasetFormatError(f"{where}: no 'label_names' list")
    classes = _check_classes([c.decode() if isinstance(c, bytes) else str(c) for c in raw], where)
    return (*arrays, classes)


def _decode_image(name: str, data: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> (H, W) for grayscale, (H, W, 3) otherwise; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as im:
            target = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            if im.mode != target:
                im = im.convert(target)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"{name}: corrupt or unreadable image ({exc}); only PNG and JPEG "
                                 "are read. Replace or remove the file.") from exc


def decode_image_folder(path: str | os.PathLike, max_bytes: int, digest: list | None = None) -> Arrays:
    """``train/<class>/*`` and ``test/<class>/*`` (optionally under one top folder); classes are
    the sorted folder names; images PNG/JPEG, all one size; grayscale stays 1 channel unless
    some image is colour."""
    path = Path(path)
    dirs: set[str] = set()

    def wanted(name: str) -> bool:
        parts = name.split("/")
        return (len(parts) >= 3 and parts[-3] in ("train", "test") and not parts[-1].startswith(".")
                and len(parts) <= 4)

    if path.is_dir():
        items = list(iter_folder(path, wanted, max_bytes, dirs))
    elif zipfile.is_zipfile(path):
        items = list(iter_zip(path, wanted, max_bytes, dirs))
    else:
        items = list(iter_tar(path, wanted, max_bytes, dirs, digest=digest))
    # the folder that holds train/ and test/: the root, or a single top folder
    prefixes = {n.rsplit("/", 3)[0] if n.count("/") == 3 else "" for n, _ in items}
    for d in dirs:  # empty class folders show up only as directories
        parts = d.split("/")
        if len(parts) in (2, 3) and parts[-2] in ("train", "test"):
            prefixes.add("/".join(parts[:-2]))
    if len(prefixes) != 1:
        raise DatasetFormatError(f"{path}: expected train/<class>/* and test/<class>/* (found "
                                 f"{sorted(prefixes) or 'no images'} as roots)")
    root = prefixes.pop()
    pre = f"{root}/" if root else ""
    splits: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
    for d in dirs:
        if d.startswith(pre) and d[len(pre):].count("/") == 1:
            split, cls = d[len(pre):].split("/")
            if split in splits:
                splits[split].setdefault(cls, [])
    for name, data in items:
        split, cls, _ = name[len(pre):].split("/")
        splits[split].setdefault(cls, []).append((name, data))
    for split, classes in splits.items():
        if not classes:
            raise DatasetFormatError(f"{path}: no {pre}{split}/<class>/ folders with images")
        for cls, files in classes.items():
            if not files:
                raise DatasetFormatError(f"{path}: the class folder {pre}{split}/{cls}/ is empty; "
                                         "add images or remove the folder")
    classes = tuple(sorted(splits["train"]))
    if set(splits["test"]) != set(classes):
        raise DatasetFormatError(
            f"{path}: train/ and test/ have different class folders: only in train: "
            f"{sorted(set(classes) - set(splits['test']))}, only in test: "
            f"{sorted(set(splits['test']) - set(classes))}")
    ref: dict[str, Any] = {}
    out = []
    for split in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(classes):
            for name, data in sorted(splits[split][cls]):
                img = _decode_image(f"{path}:{name}", data)
                if not ref:
                    ref.update(shape=img.shape[:2], name=name)
                elif img.shape[:2] != ref["shape"]:
                    raise DatasetFormatError(
                        f"{path}:{name} is {img.shape[1]}x{img.shape[0]} pixels but {ref['name']} is "
                        f"{ref['shape'][1]}x{ref['shape'][0]}: every image must be the same size")
                images.append(img)
                labels.append(label)
        out.append((images, np.asarray(labels, dtype=np.uint8)))
    color = any(img.ndim == 3 for images, _ in out for img in images)
    arrays = []
    for images, labels in out:
        h, w = ref["shape"]
        x = np.empty((len(images), h, w, 3 if color else 1), dtype=np.uint8)
        for i, img in enumerate(images):
            x[i] = img if img.ndim == 3 else img[..., None]  # broadcasts gray to RGB when needed
        arrays += [x, labels]
    return arrays[0], arrays[1], arrays[2], arrays[3], classes


DECODERS = {"cifar10-binary": decode_binary, "cifar10-python": decode_python, "image-folder": decode_image_folder}


def decode_archive(path: str | os.PathLike, fmt: str, max_bytes: int, digest: list | None = None) -> Arrays:
    """(x_train, y_train, x_test, y_test, classes) from an archive (or image folder)."""
    try:
        decoder = DECODERS[fmt]
    except KeyError:
        raise DatasetFormatError(f"unknown dataset.format {fmt!r}; known: {', '.join(DECODERS)}") from None
    return decoder(path, max_bytes, digest=digest)


def balanced_subset(y: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` samples, as even across classes as the data allows, drawn with
    ``seed``: every class gives ``n // k``, the remainder goes to randomly chosen classes, and a
    class too small to give its share gives all it has."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(y), dtype=np.int64)
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        rank[idx[rng.permutation(len(idx))]] = np.arange(len(idx))
    class_order = rng.permutation(num_classes)  # who gets the remainder
    tiebreak = np.empty(num_classes, dtype=np.int64)
    tiebreak[class_order] = np.arange(num_classes)
    order = np.lexsort((tiebreak[y], rank))  # by rank, then by the shuffled class order
    return np.sort(order[:n])


# --------------------------------------------------------------------------- the cache
def dataset_fingerprint(archive: ArchiveRecord, cfg: DatasetConfig) -> str:
    limited = cfg.limit_train is not None or cfg.limit_test is not None
    return stable_hash(archive.sha256, cfg.format, cfg.limit_train, cfg.limit_test,
                       cfg.subset_seed if limited else None, CODE_VERSION)


def dataset_dir(archive: ArchiveRecord, cfg: DatasetConfig, data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "datasets" / dataset_fingerprint(archive, cfg)


def decode_and_cache(archive: ArchiveRecord, cfg: DatasetConfig, data_dir: str | os.PathLike) -> DatasetRecord:
    """The verified dataset cache for ``archive``: returned as is when intact; else decoded
    (the archive re-hashed as it is read) and published atomically, once, under a lock."""
    out = dataset_dir(archive, cfg, data_dir)
    if not cache_problems(out):
        return record_from_manifest(out, read_json(out / "manifest.json"))
    with file_lock(out.with_name(f".{out.name}.lock"), f"decoding {out.name}"):
        problems = cache_problems(out)
        if not problems:
            return record_from_manifest(out, read_json(out / "manifest.json"))
        if out.exists():
            _say(f"rebuilding the dataset cache {out}: {'; '.join(problems)}", "warning")
        t0 = time.perf_counter()
        src = Path(archive.path)
        digest: list[str] = []
        x_train, y_train, x_test, y_test, classes = decode_archive(
            src, cfg.format, cfg.max_extract_mb * 2**20, digest=digest)
        if src.is_file():
            actual = digest[0] if digest else hash_file(src)[0]
            if actual != archive.sha256:
                raise ChecksumError(
                    f"{src} changed since it was verified: sha256 {actual}, expected "
                    f"{archive.sha256}. Nothing was cached. Delete the file and run again to "
                    "fetch it anew.")
        if cfg.limit_train is not None:
            keep = balanced_subset(y_train, cfg.limit_train, len(classes), cfg.subset_seed)
            x_train, y_train = x_train[keep], y_train[keep]
        if cfg.limit_test is not None:
            keep = balanced_subset(y_test, cfg.limit_test, len(classes), cfg.subset_seed + 1)
            x_test, y_test = x_test[keep], y_test[keep]
        seconds = time.perf_counter() - t0
        meta = {"source": archive.source, "archive_sha256": archive.sha256, "archive_size": archive.size,
                "format": cfg.format, "limit_train": cfg.limit_train, "limit_test": cfg.limit_test,
                "subset_seed": cfg.subset_seed, "code_version": CODE_VERSION,
                "decode_seconds": round(seconds, 3)}
        record = write_dataset_cache(out, x_train, y_train, x_test, y_test, classes, meta)
        _say(f"decoded {record.train_size:,} train + {record.test_size:,} test images "
             f"{record.input_shape} in {seconds:.1f} s -> {out}")
        return record


def describe(record: DatasetRecord) -> str:
    """A few lines for a person: size, shape, classes and per-class counts."""
    m = read_json(Path(record.path) / "manifest.json")
    counts = m.get("counts", {})
    lines = [f"dataset {record.fingerprint}: {record.train_size:,} train / {record.test_size:,} test "
             f"images of {record.input_shape}, {record.num_classes} classes",
             f"  source {m.get('source')} (sha256 {str(m.get('archive_sha256'))[:16]}...)",
             f"  cache  {record.path}"]
    for cls in record.classes:
        lines.append(f"  {cls:<12} train {counts.get('train', {}).get(cls, 0):>6,}  "
                     f"test {counts.get('test', {}).get(cls, 0):>6,}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- Prefect tasks
def retry_if_transient(task, task_run, state) -> bool:
    """Retry network errors and 5xx only; a checksum mismatch or a 404 would fail again."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable result is not a transient network error
        return False
    return isinstance(exc, TransientDownloadError)


def retry_options(cfg: DatasetConfig, backoff_factor: float = 2.0) -> dict[str, Any]:
    """``fetch_archive.with_options(**retry_options(cfg))`` applies ``dataset.retries``."""
    return {"retries": cfg.retries, "retry_delay_seconds": exponential_backoff(backoff_factor)(max(cfg.retries, 1))}


def _fetch_key(inputs: dict[str, Any]) -> str:
    cfg: DatasetConfig = inputs["cfg"]
    exp = expected_for(cfg)
    if exp.known:
        content = [exp.sha256, exp.md5, exp.size]
    else:  # a local file or folder without a configured checksum: its content hash
        path = local_path(sources_for(cfg)[0])
        content = [hash_local(path, inputs["data_dir"])[0]] if path is not None and path.exists() else [None]
    return stable_hash("fetch", cfg.format, content, CODE_VERSION)


def _fetch_valid(inputs: dict[str, Any], key: str) -> bool:
    return cached_archive(inputs["cfg"], inputs["data_dir"]) is not None


def _decode_key(inputs: dict[str, Any]) -> str:
    return dataset_fingerprint(inputs["archive"], inputs["cfg"])


def _decode_valid(inputs: dict[str, Any], key: str) -> bool:
    return not cache_problems(dataset_dir(inputs["archive"], inputs["cfg"], inputs["data_dir"]))


@task(
    name="fetch-archive",
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    cache_policy=VerifiedCache(key_fn=_fetch_key, valid_fn=_fetch_valid),
    persist_result=True,
)
def fetch_archive(cfg: DatasetConfig, data_dir: str) -> ArchiveRecord:
    """Download (or find) and verify the archive; retried with backoff on network errors."""
    return fetch(cfg, data_dir)


@task(
    name="decode-dataset",
    cache_policy=VerifiedCache(key_fn=_decode_key, valid_fn=_decode_valid),
    persist_result=True,
)
def decode_dataset(archive: ArchiveRecord, cfg: DatasetConfig, data_dir: str) -> DatasetRecord:
    """Decode the archive into the verified, memory-mappable ``.npy`` cache (once)."""
    return decode_and_cache(archive, cfg, data_dir)
