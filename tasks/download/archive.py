"""Reading members out of an untrusted archive (tar, zip, or a folder) without extracting it.

Every reader yields ``(name, bytes)`` of the regular files its caller wants, straight from the
archive, and refuses the whole archive -- before anything of it is used -- on an absolute or
``..`` name, a link, a device, a FIFO or a sparse file, and when the members add up to more than
the extraction budget (archive bombs). A tar's budget counts its headers too, and a header (GNU
long name, pax) above ``MAX_HEADER_BYTES`` is refused before tarfile reads its body; compressed
tars inflate a bounded read at a time. A caller may pass its own ``ExtractionBudget`` and go on
charging it for what it builds from the members (decoded pixels). A .tar.gz is inflated and
hashed in background threads (``tasks.download.inflate``) while the caller parses each member.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from zlib import error as ZlibError

from tasks.core.members import (  # the member checks, shared with the predict stage
    MAX_HEADER_BYTES,  # noqa: F401  (re-exported: tests and bench read it here)
    TAR_ERRORS,
    ExtractionBudget,
    UnsafeArchiveError,
    inflated,
    regular_zip_member,
    tar_stream,
)
from tasks.core.guards_files import NotRegularFileError, TooLargeError, read_regular
from tasks.download.errors import DatasetFormatError
from tasks.download.inflate import CHUNK, InflatingReader

Members = Iterator[tuple[str, bytes]]
Wanted = Callable[[str], bool]


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


# --------------------------------------------------------------------------- tar
def _tar_members(fileobj, where: str, wanted: Wanted, budget: ExtractionBudget,
                 dirs: set[str] | None, mode: str = "r|") -> Members:
    """The wanted members' bytes, read with the shared stream checks (``core.members.tar_stream``)."""
    for tf, m, name in tar_stream(fileobj, where, budget, dirs, DatasetFormatError):
        if wanted(name):
            try:
                data = tf.extractfile(m).read()
            except TAR_ERRORS as exc:
                raise DatasetFormatError(f"{where}: the archive is corrupt or truncated ({exc})") from exc
            if len(data) != m.size:
                raise DatasetFormatError(f"{where}: member {name!r} is truncated "
                                         f"({len(data):,} of {m.size:,} bytes)")
            yield name, data


def _budget(max_bytes: int | ExtractionBudget, where: str) -> ExtractionBudget:
    return max_bytes if isinstance(max_bytes, ExtractionBudget) else ExtractionBudget(max_bytes, where)


def iter_tar(path: str | os.PathLike, wanted: Wanted, max_bytes: int | ExtractionBudget,
             dirs: set[str] | None = None, digest: list | None = None) -> Members:
    """(name, bytes) of the wanted regular members, straight from the (compressed) tar stream.

    ``max_bytes``: the budget in bytes, or an ``ExtractionBudget`` the caller goes on charging;
    ``dirs`` collects folder names; when ``digest`` is a list, the sha256 of the archive file
    is appended to it at the end.
    """
    where = str(path)
    with open(path, "rb") as raw:
        reader = _HashingReader(raw)
        buffered = io.BufferedReader(reader, CHUNK)
        yield from _tar_members(inflated(buffered), where, wanted, _budget(max_bytes, where), dirs, "r|")
        if digest is not None:
            digest.append(reader.finish())  # what `buffered` read ahead was hashed as it came in


def iter_tar_threaded(path: str | os.PathLike, wanted: Wanted, max_bytes: int | ExtractionBudget,
                      dirs: set[str] | None = None, digest: list | None = None) -> Members:
    """Like :func:`iter_tar`, faster for a .tar.gz (CIFAR-10's 170 MB): the archive inflates and
    is hashed in background threads while the caller parses each member as it arrives, so
    decoding overlaps decompression. Other compressions go through :func:`iter_tar`."""
    where = str(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        yield from iter_tar(path, wanted, max_bytes, dirs, digest)
        return
    budget = _budget(max_bytes, where)
    stream = InflatingReader(path, budget.max, where)
    try:
        yield from _tar_members(stream, where, wanted, budget, dirs, "r|")
        if digest is not None:
            digest.append(stream.sha256())
    finally:
        stream.close()


# --------------------------------------------------------------------------- zip and folders
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def _zip_member_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, where: str) -> bytes:
    """The member's bytes, inflated no further than its declared size (``zf.read`` inflates a
    whole member in one call, however small the size it declares): a member whose bytes are
    not what its header says fails its CRC. Only stored and deflate members are read: zipfile
    inflates bzip2 and LZMA members without any bound."""
    if info.compress_type not in _ZIP_METHODS:
        raise DatasetFormatError(
            f"{where}: member {name!r} uses zip compression method {info.compress_type}; only "
            "stored and deflate members are read. Re-zip it with the usual (deflate) compression.")
    try:
        with zf.open(info) as f:
            return f.read(info.file_size)
    except (zipfile.BadZipFile, OSError, ZlibError, EOFError) as exc:
        raise DatasetFormatError(f"{where}: member {name!r} is corrupt ({exc})") from exc
    except RuntimeError as exc:  # encrypted (and NotImplementedError's unsupported features)
        raise DatasetFormatError(f"{where}: member {name!r} cannot be read ({exc}); re-zip it "
                                 "without a password") from exc


def iter_zip(path: str | os.PathLike, wanted: Wanted, max_bytes: int | ExtractionBudget,
             dirs: set[str] | None = None) -> Members:
    where = str(path)
    budget = _budget(max_bytes, where)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetFormatError(f"{where} is not a readable zip archive: {exc}") from exc
    with zf:
        for info in zf.infolist():
            name = regular_zip_member(info, where, budget, dirs)
            if name is not None and wanted(name):
                yield name, _zip_member_bytes(zf, info, name, where)


def iter_folder(root: Path, wanted: Wanted, max_bytes: int | ExtractionBudget,
                dirs: set[str] | None = None, prune: Callable[[str], bool] | None = None) -> Members:
    """The wanted regular files under ``root``. A folder for which ``prune(relative name)`` is
    true is not entered; any other linked folder, and a wanted file that is a link or special
    file, refuses the whole folder (links are not followed: one can point outside it or loop)."""
    budget = _budget(max_bytes, str(root))
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unlistable):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        if dirs is not None and rel_dir != ".":
            dirs.add(rel_dir)
        keep = []
        for d in sorted(dirnames):
            rel = (here / d).relative_to(root).as_posix()
            if prune is not None and prune(rel):
                continue
            if (here / d).is_symlink():
                raise UnsafeArchiveError(
                    f"{here / d} is a link to a folder ({os.readlink(here / d)}); links are not "
                    "followed. Copy the folder in, or point dataset.source at the real folders.")
            keep.append(d)
        dirnames[:] = keep
        for fn in sorted(filenames):
            yield from _folder_file(root, here / fn, wanted, budget)


def _unlistable(exc: OSError) -> None:
    """os.walk skips a folder it cannot list; a dataset folder must not lose a class so."""
    raise DatasetFormatError(f"{exc.filename} cannot be listed ({exc.strerror or exc}); fix its "
                             "permissions or remove it") from exc


def _folder_file(root: Path, p: Path, wanted: Wanted, budget: ExtractionBudget) -> Members:
    rel = p.relative_to(root).as_posix()
    if not wanted(rel):
        return
    budget.count(rel)
    try:  # regular files only, opened without following a link or blocking on a FIFO
        data = read_regular(p, max(budget.left, 0), what="dataset's files in all")
    except NotRegularFileError as exc:
        raise UnsafeArchiveError(f"{exc} (copy the image in instead)") from None
    except TooLargeError:
        budget.take(budget.left + 1, rel)  # refuses, naming the budget and its remedy
        raise
    except OSError as exc:
        raise DatasetFormatError(f"{p} cannot be read ({exc.strerror or exc}); fix its permissions "
                                 "or remove it") from exc
    budget.take(len(data), rel)
    yield rel, data
