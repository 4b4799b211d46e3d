"""Getting the verified archive: from disk when it is already there (no request at all), else
from the first source, then the mirrors, that delivers the expected bytes.

Downloads land in ``<data_dir>/downloads/<sha256[:16]>-<name>`` (streamed into ``.part``, checked
for size and checksum, renamed into place, then a ``.json`` sidecar with the size, digests and
mtime it had when verified). Local paths and ``file://`` URLs are used in place and hashed in
full at every run (``hash_local``): a folder that grew, or a file rewritten in place, is seen.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.core.files import atomic_write_json, file_lock, read_json
from tasks.core.guards_text import redact_url
from tasks.core.hashing import FileDigest, closure_fingerprint, hash_file, hash_tree, tree_files
from tasks.download.config import (
    DatasetConfig,
    Expected,
    archive_name,
    expected_for,
    local_path,
    sources_for,
)
from tasks.download.errors import (
    ChecksumError,
    DatasetFormatError,
    DownloadError,
    SourceNotFoundError,
    TransientDownloadError,
    UnsafeArchiveError,
)
from tasks.download.progress import stage_log
from tasks.download.transfer import download_to_part

# The code part of the fetch's cache key: this module and every project module it imports (the
# sources, the transfer, the checks), read from their source. Computed this way since issue 27,
# which changed the key's value once (one re-verification of a downloaded archive).
FETCH_CODE_VERSION = closure_fingerprint("tasks.download.fetching")


@dataclass(frozen=True)
class ArchiveRecord:
    """What the fetch hands on to the decode."""

    path: str  # the verified archive (or the user's local file/folder, used in place)
    sha256: str  # of the file; for a folder, of its file tree (names + contents)
    size: int
    source: str  # the URL or path it came from, its secrets redacted (the record is cached by Prefect)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", redact_url(self.source) if self.source else self.source)


def final_path(cfg: DatasetConfig, data_dir: str | os.PathLike) -> Path | None:
    """Where a downloaded archive lives, named by its expected checksum (None if unknown)."""
    exp = expected_for(cfg)
    if not exp.known:
        return None
    return Path(data_dir) / "downloads" / f"{exp.key[:16]}-{archive_name(sources_for(cfg)[0])}"


def _sidecar(final: Path) -> Path:
    return final.with_name(final.name + ".json")


# --------------------------------------------------------------------------- local files
def hash_local(path: Path, cfg: DatasetConfig) -> FileDigest:
    """sha256 and size of a local file (and its md5 when ``dataset.md5`` is set), or the tree
    hash of a folder (md5 None), read in full at every call.

    There is no stat shortcut: a file rewritten with the same size and mtime is seen. The cost is
    bounded instead: a folder is listed first (regular files only; a link, FIFO or device is
    skipped and named in the log, never opened) and refused past ``dataset.max_extract_mb``, the
    decoder's own budget, before a byte is read; then each file is read once (``hash_tree``):
    about 2 s for the full 60,000-image folder (docs/benchmarks.md)."""
    if not path.is_dir():
        return hash_file(path, md5=bool(expected_for(cfg).md5))
    skipped: list[str] = []
    files = tree_files(path, skipped)
    if skipped:
        stage_log().warning(f"{path}: skipped {len(skipped)} entries that are not regular files "
                            f"(links, FIFOs, sockets, devices are never read): {', '.join(skipped[:5])}"
                            + (" ..." if len(skipped) > 5 else ""))
    total, cap = sum(p.stat().st_size for _, p in files), cfg.max_extract_mb * 2**20
    if total > cap:
        raise UnsafeArchiveError(
            f"{path}: its {len(files):,} files hold {total / 2**20:,.1f} MiB, more than "
            f"dataset.max_extract_mb ({cfg.max_extract_mb:,} MiB); nothing was read. Raise "
            "dataset.max_extract_mb if the folder is genuine, or point dataset.source at a smaller one.")
    return hash_tree(path, files=files)


# --------------------------------------------------------------------------- verification
def verify_digest(actual: FileDigest, exp: Expected, where: str, dropped: str) -> None:
    """ChecksumError naming every mismatch (size, sha256, md5) and what was done with the bytes."""
    bad = []
    if exp.size is not None and actual.size != exp.size:
        bad.append(f"size: expected {exp.size:,} bytes, got {actual.size:,}")
    if exp.sha256 and actual.sha256 != exp.sha256:
        bad.append(f"sha256: expected {exp.sha256}, got {actual.sha256}")
    if exp.md5 and actual.md5 is not None and actual.md5 != exp.md5:
        bad.append(f"md5: expected {exp.md5}, got {actual.md5}")
    if bad:
        raise ChecksumError(
            f"{where} is not the expected archive:\n  " + "\n  ".join(bad) + f"\n{dropped} "
            "To resolve: check dataset.source / mirrors point at this dataset, or, if the "
            "dataset was deliberately updated, set dataset.sha256 to its new checksum.")


def cached_archive(cfg: DatasetConfig, data_dir: str | os.PathLike) -> ArchiveRecord | None:
    """The verified archive already at hand, with no network: a local primary source (hashed
    once, then remembered by its stat), or the downloaded file at its content-addressed name
    with the size and mtime recorded when it was verified (a file touched since is re-hashed).
    None when absent or not intact."""
    exp = expected_for(cfg)
    primary = sources_for(cfg)[0]
    path = local_path(primary)
    if path is not None and path.exists():
        digest = hash_local(path, cfg)
        if (exp.sha256 and digest.sha256 != exp.sha256) or (exp.md5 and digest.md5 and digest.md5 != exp.md5):
            return None
        return ArchiveRecord(str(path), digest.sha256, digest.size, primary)
    final = final_path(cfg, data_dir)
    return None if final is None else _verified_download(final, exp)


def _verified_download(final: Path, exp: Expected) -> ArchiveRecord | None:
    """The downloaded archive at ``final`` if its sidecar vouches for it (re-hashed when the
    file's mtime changed since)."""
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
        if hash_file(final).sha256 != meta.get("sha256"):
            return None
        atomic_write_json(_sidecar(final), {**meta, "mtime_ns": st.st_mtime_ns})
    return ArchiveRecord(str(final), meta["sha256"], st.st_size, meta.get("source", ""))


# --------------------------------------------------------------------------- one source
def _fetch_http(url: str, cfg: DatasetConfig, data_dir: str | os.PathLike) -> ArchiveRecord:
    exp = expected_for(cfg)
    if not exp.known:
        raise DownloadError(f"{url}: downloading over the network needs dataset.sha256 (or md5) "
                            "so a bad download is caught; add it to pipelines.yaml")
    final = final_path(cfg, data_dir)
    part = final.with_name(final.name + ".part")
    log = stage_log()
    with file_lock(final.with_name(final.name + ".lock"), f"download of {final.name}"):
        hit = cached_archive(cfg, data_dir)  # another run may have finished it meanwhile
        if hit is not None:
            return hit
        t0 = time.monotonic()
        log.info(f"downloading {url} -> {final} (expected {exp.describe()})")
        download_to_part(url, part, exp, cfg)
        actual = hash_file(part, md5=True)
        try:
            verify_digest(actual, exp, url, f"Deleted the partial download {part}; nothing was cached.")
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, final)
        st = final.stat()
        atomic_write_json(_sidecar(final), {"sha256": actual.sha256, "md5": actual.md5, "size": actual.size,
                                            "mtime_ns": st.st_mtime_ns, "source": redact_url(url)})
        log.info(f"verified {final.name}: {actual.size / 1e6:,.1f} MB in {time.monotonic() - t0:.1f} s")
        return ArchiveRecord(str(final), actual.sha256, actual.size, url)


def _fetch_local(source: str, path: Path, cfg: DatasetConfig, data_dir: str | os.PathLike) -> ArchiveRecord:
    if not path.exists():
        raise SourceNotFoundError(f"{source}: no such file or folder. Check dataset.source "
                                  "(relative paths are resolved against pipelines.yaml's folder).")
    if path.is_dir() and cfg.format != "image-folder":
        raise DatasetFormatError(f"{source} is a folder, but format {cfg.format!r} needs the "
                                 ".tar.gz archive; use format: image-folder for a folder of images")
    digest = hash_local(path, cfg)
    exp = expected_for(cfg)
    if exp.known and not path.is_dir():
        verify_digest(digest, exp, str(path), "The file was left untouched.")
    elif exp.sha256 and digest.sha256 != exp.sha256:
        verify_digest(digest, Expected(exp.sha256), str(path), "The folder was left untouched.")
    return ArchiveRecord(str(path), digest.sha256, digest.size, source)


# --------------------------------------------------------------------------- every source
def fetch(cfg: DatasetConfig, data_dir: str | os.PathLike) -> ArchiveRecord:
    """The verified archive for ``cfg``: from ``data_dir`` if already there (no request at all),
    else from the first source (then mirrors) that delivers the expected bytes."""
    hit = cached_archive(cfg, data_dir)
    if hit is not None:
        return hit
    sources = sources_for(cfg)
    failures: list[tuple[str, DownloadError]] = []
    for src in sources:
        try:
            path = local_path(src)
            return _fetch_local(src, path, cfg, data_dir) if path is not None else _fetch_http(src, cfg, data_dir)
        except (TransientDownloadError, SourceNotFoundError, ChecksumError) as exc:
            failures.append((src, exc))
            if len(failures) < len(sources):
                stage_log().warning(f"{src} failed ({type(exc).__name__}); trying the next mirror")
    if len(failures) == 1:
        raise failures[0][1]
    kind = TransientDownloadError if any(isinstance(e, TransientDownloadError) for _, e in failures) else DownloadError
    detail = "\n".join(f"- {src}: {exc}" for src, exc in failures)
    raise kind(f"every source failed for the {cfg.format} archive:\n{detail}")
