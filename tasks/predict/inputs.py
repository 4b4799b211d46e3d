"""What to score: image files, folders of them, and archives (.tar, .tar.gz/.tgz/.tar.bz2/.tar.xz,
.zip), yielded one file at a time as ``Source(name, data)`` or ``Source(name, error=...)``.

A file named on the command line is read whatever its extension (the decoder says whether it is
an image); inside folders and archives only ``*.png``, ``*.jpg`` and ``*.jpeg`` count, hidden
files skipped. Everything passes the shared guards of ``tasks.core``:

- only regular files are opened (``guards_files``: ``O_NONBLOCK``, and ``O_NOFOLLOW`` inside a
  folder): a FIFO, a device or a link in a folder is skipped and named, never read or waited on;
- an archive is read as a stream without extracting it, with the download stage's member checks
  and header bounds (``core.members``): all of it is refused on an absolute or ``..`` name, a
  link, a device or FIFO, a huge GNU long-name or pax header;
- one ``ExtractionBudget`` per call: every file and member of every archive of one call adds up
  to at most ``MAX_INPUT_BYTES`` and ``MAX_INPUT_FILES`` entries; one file at most
  ``MAX_FILE_BYTES`` (a bigger one is named and skipped unread).

One bad path never stops the others; a file's bytes are yielded one at a time, never held.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from zlib import error as ZlibError

from tasks.core.guards_files import NotRegularFileError, TooLargeError, lstat_kind, open_regular
from tasks.core.hashing import hash_file, hash_tree
from tasks.core.members import (
    TAR_ERRORS,
    ExtractionBudget,
    UnsafeArchiveError,
    inflated,
    regular_zip_member,
    tar_stream,
)
from tasks.predict.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_ARCHIVE_BYTES = 4 << 30  # a downloaded input, at most
MAX_INPUT_BYTES = 4 << 30  # what every file and member of one call may add up to
MAX_INPUT_FILES = 100_000  # files and archive entries of one call (CIFAR-10's test set: 10,000)
MAX_FILE_BYTES = 256 << 20  # one image file: a 64 MP photo as PNG fits
BUDGET_REMEDY = "Split the input into smaller parts and score each, or extract it and pass the folder."
_ARCHIVE_ERRORS = (*TAR_ERRORS, zipfile.BadZipFile)
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


@dataclass(frozen=True)
class Source:
    """One input file: its bytes, or why they could not be read."""

    name: str
    data: bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class InputRecord:
    """A local input (file, folder or archive) and the sha256 of its content (a folder: its
    tree hash over relative paths and file contents)."""

    path: str
    sha256: str
    kind: str  # "folder" | "archive" | "file"


class _Corrupt(InputError):
    """A damaged tar stream (reworded by ``_archive_sources``)."""


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith((*TAR_SUFFIXES, ".zip"))


def _is_zip(path: Path) -> bool:
    """A regular file that starts like a zip (opened without blocking: never a FIFO or device)."""
    try:
        fd = open_regular(path, follow_links=True)
    except (OSError, NotRegularFileError):
        return False
    with os.fdopen(fd, "rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def is_archive(path: Path) -> bool:
    return is_archive_name(path.name) or _is_zip(path)


def new_budget(where: str) -> ExtractionBudget:
    """The one budget of a call: bytes and entries of every file and archive it reads."""
    return ExtractionBudget(MAX_INPUT_BYTES, where, BUDGET_REMEDY, max_members=MAX_INPUT_FILES)


def describe_input(path: str | os.PathLike) -> InputRecord:
    """The input's kind and content hash (what the scoring cache is keyed by)."""
    p = Path(path)
    if p.is_dir():
        return InputRecord(str(p), hash_tree(p).sha256, "folder")
    if not p.is_file():
        raise InputError(f"{p}: no such file or folder; give an image, a folder of images or an archive "
                         "(.tar, .tar.gz, .zip) of them, or an http(s) URL of one.")
    return InputRecord(str(p), hash_file(p).sha256, "archive" if is_archive(p) else "file")


def _folder_sources(root: Path, budget: ExtractionBudget) -> Iterator[Source]:
    for dirpath, dirnames, filenames in os.walk(root):  # links to folders are not followed
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(f for f in filenames if not f.startswith(".")):
            p = Path(dirpath) / fn
            try:
                kind = lstat_kind(p)  # never opens it: a FIFO or device is named, not waited on
            except OSError as exc:
                yield Source(str(p), error=f"{p}: unreadable ({exc.strerror or exc}); check its permissions.")
                continue
            if kind is not None:
                if is_image_name(fn) or is_archive_name(fn):
                    yield Source(str(p), error=f"{p} is {kind}, not a regular file; skipped (links and "
                                               "special files in a folder are not read).")
            elif is_image_name(fn):
                yield _file_source(p, budget, follow_links=False)
            elif is_archive(p):
                yield from _archive_sources(p, budget)


def _file_source(p: Path, budget: ExtractionBudget, follow_links: bool = True) -> Source:
    """One file's bytes: a regular file (a FIFO or device is named, never read), at most
    ``MAX_FILE_BYTES``, charged to the call's budget."""
    try:
        fd = open_regular(p, follow_links=follow_links)
    except NotRegularFileError as exc:
        return Source(str(p), error=str(exc))
    except OSError as exc:
        return Source(str(p), error=f"{p}: unreadable ({exc.strerror or exc}); check its permissions.")
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FILE_BYTES:
            return Source(str(p), error=_too_big(str(p), size))
        budget.count(str(p))
        budget.take(size, str(p))
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            return Source(str(p), error=f"{p}: unreadable ({exc.strerror or exc}); check its permissions.")
    if len(data) > MAX_FILE_BYTES:
        return Source(str(p), error=_too_big(str(p), len(data)))
    return Source(str(p), data)


def _too_big(name: str, size: int) -> str:
    return (f"{name}: {size:,} bytes, more than the {MAX_FILE_BYTES >> 20} MiB an image may have; "
            "skipped unread. Resize it (the models see 32x32 images).")


def _tar_members(path: Path, where: str, budget: ExtractionBudget):
    with open(path, "rb") as raw:
        yield from tar_stream(inflated(io.BufferedReader(raw)), where, budget, None, _Corrupt)


def _tar_sources(path: Path, where: str, budget: ExtractionBudget) -> Iterator[Source]:
    """Two passes over the stream: the first checks every member (charged to the call's budget)
    without reading any data, so a refused archive yields nothing; the second reads the images."""
    for _ in _tar_members(path, where, budget):
        pass
    again = ExtractionBudget(budget.max, where, BUDGET_REMEDY, max_members=budget.max_members)
    for tf, m, name in _tar_members(path, where, again):
        if not is_image_name(name):
            continue  # skipped unread: the stream moves past it
        if m.size > MAX_FILE_BYTES:
            yield Source(f"{where}:{name}", error=_too_big(f"{where}:{name}", m.size))
            continue
        data = tf.extractfile(m).read()
        if len(data) != m.size:
            yield Source(f"{where}:{name}", error=f"{where}:{name}: truncated in the archive "
                                                  f"({len(data):,} of {m.size:,} bytes)")
            continue
        yield Source(f"{where}:{name}", data)


def _zip_sources(path: Path, where: str, budget: ExtractionBudget) -> Iterator[Source]:
    _zip_entries_fit(path, where, budget)
    with zipfile.ZipFile(path) as zf:
        members = [(info, regular_zip_member(info, where, budget, None)) for info in zf.infolist()]
        for info, name in members:  # every member checked above, before any is read
            if name is None or not is_image_name(name):
                continue
            label = f"{where}:{name}"
            if info.file_size > MAX_FILE_BYTES:
                yield Source(label, error=_too_big(label, info.file_size))
            elif info.compress_type not in _ZIP_METHODS:
                yield Source(label, error=f"{label}: zip compression method {info.compress_type}; only "
                                          "stored and deflate members are read. Re-zip it.")
            else:
                try:  # inflated no further than the size its header declares (else its CRC fails)
                    with zf.open(info) as f:
                        yield Source(label, f.read(info.file_size))
                except (zipfile.BadZipFile, OSError, ZlibError, EOFError, RuntimeError) as exc:
                    yield Source(label, error=f"{label}: corrupt in the archive ({exc})")


def _zip_entries_fit(path: Path, where: str, budget: ExtractionBudget) -> None:
    """Refuse a zip whose central directory declares more entries than the budget has left
    before zipfile builds an object for each (1,000,000 entries: ~600 MB)."""
    with open(path, "rb") as f:
        end = zipfile._EndRecData(f)  # the end record's fields, as zipfile itself reads them
    if end and end[zipfile._ECD_ENTRIES_TOTAL] > budget.members_left:
        raise UnsafeArchiveError(f"{where}: declares {end[zipfile._ECD_ENTRIES_TOTAL]:,} entries, more than "
                                 f"the {budget.max_members:,} one call reads; refused unread. {BUDGET_REMEDY}")


def _archive_sources(path: Path, budget: ExtractionBudget) -> Iterator[Source]:
    where = str(path)
    try:
        fd = open_regular(path, follow_links=True)
    except (NotRegularFileError, OSError) as exc:
        yield Source(where, error=str(exc) if isinstance(exc, NotRegularFileError)
                     else f"{where}: unreadable ({exc.strerror or exc}); check its permissions.")
        return
    os.close(fd)
    reader = _zip_sources if zipfile.is_zipfile(path) else _tar_sources
    try:
        yield from reader(path, where, budget)
    except (UnsafeArchiveError, TooLargeError) as exc:
        yield Source(where, error=str(exc))
    except (*_ARCHIVE_ERRORS, _Corrupt) as exc:
        yield Source(where, error=f"{where}: not a readable archive, or corrupt or truncated ({exc}); "
                                  "rebuild it, or extract it and pass the folder.")


def iter_sources(paths: Iterable[str | os.PathLike],
                 budget: ExtractionBudget | None = None) -> Iterator[Source]:
    """Every input file under ``paths``, in the order given (folders sorted by name), all of
    them within one budget (``new_budget``). Past it, the rest is one error naming where."""
    paths = [Path(p) for p in paths]
    budget = budget or new_budget(", ".join(map(str, paths[:3])) + (" ..." if len(paths) > 3 else ""))
    try:
        for p in paths:
            if p.is_dir():
                yield from _folder_sources(p, budget)
            elif not p.exists():
                yield Source(str(p), error=f"{p}: no such file or folder")
            elif is_archive(p):
                yield from _archive_sources(p, budget)
            else:
                yield _file_source(p, budget)
    except UnsafeArchiveError as exc:  # the call's budget is spent: nothing more is read
        yield Source(budget.where, error=str(exc))
