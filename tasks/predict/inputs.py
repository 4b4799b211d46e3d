"""What to score: image files, folders of them, and archives (.tar, .tar.gz/.tgz/.tar.bz2/.tar.xz,
.zip), yielded one file at a time as ``Source(name, data)`` or ``Source(name, error=...)``.

A file named on the command line is read whatever its extension (the decoder says whether it is
an image); inside folders and archives only ``*.png``, ``*.jpg`` and ``*.jpeg`` count, hidden
files skipped. An archive is read without extracting it and with the download stage's member
checks (``tasks.core.members``): before any of it is used, all of it is refused on an absolute
or ``..`` name, a link, a device or FIFO, or members adding up to more than ``MAX_ARCHIVE_BYTES``.
One bad path never stops the others.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from zlib import error as ZlibError

from tasks.core.hashing import hash_file, hash_tree
from tasks.core.members import (
    ExtractionBudget,
    UnsafeArchiveError,
    regular_tar_member,
    regular_zip_member,
)
from tasks.predict.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_ARCHIVE_BYTES = 4 << 30  # what an archive's members may add up to
BUDGET_REMEDY = "Split it into smaller archives, or extract it and pass the folder."
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ZlibError)


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


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(TAR_SUFFIXES) or name.endswith(".zip") or zipfile.is_zipfile(path)


def describe_input(path: str | os.PathLike) -> InputRecord:
    """The input's kind and content hash (what the scoring cache is keyed by)."""
    p = Path(path)
    if p.is_dir():
        return InputRecord(str(p), hash_tree(p).sha256, "folder")
    if not p.is_file():
        raise InputError(f"{p}: no such file or folder; give an image, a folder of images or an archive "
                         "(.tar, .tar.gz, .zip) of them, or an http(s) URL of one.")
    return InputRecord(str(p), hash_file(p).sha256, "archive" if is_archive(p) else "file")


def _folder_sources(root: Path) -> Iterator[Source]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if is_image_name(fn):
                yield _file_source(p)
            elif is_archive(p):
                yield from _archive_sources(p)


def _file_source(p: Path) -> Source:
    try:
        return Source(str(p), p.read_bytes())
    except OSError as exc:
        return Source(str(p), error=f"{p}: unreadable ({exc.strerror or exc}); check its permissions.")


def _tar_sources(path: Path, where: str) -> Iterator[Source]:
    with tarfile.open(path, "r:*") as tf:
        budget = ExtractionBudget(MAX_ARCHIVE_BYTES, where, BUDGET_REMEDY)
        members = [(m, regular_tar_member(m, where, budget, None)) for m in tf.getmembers()]
        for m, name in members:  # every member checked above, before any is read
            if name is not None and is_image_name(name):
                yield Source(f"{where}:{name}", tf.extractfile(m).read())


def _zip_sources(path: Path, where: str) -> Iterator[Source]:
    with zipfile.ZipFile(path) as zf:
        budget = ExtractionBudget(MAX_ARCHIVE_BYTES, where, BUDGET_REMEDY)
        members = [(info, regular_zip_member(info, where, budget, None)) for info in zf.infolist()]
        for info, name in members:
            if name is None or not is_image_name(name):
                continue
            try:
                data = zf.read(info)
            except (zipfile.BadZipFile, OSError, ZlibError) as exc:  # this member only
                yield Source(f"{where}:{name}", error=f"{where}:{name}: corrupt in the archive ({exc})")
                continue
            budget.take(len(data) - info.file_size, name)  # what inflating added beyond the header
            yield Source(f"{where}:{name}", data)


def _archive_sources(path: Path) -> Iterator[Source]:
    where = str(path)
    reader = _zip_sources if zipfile.is_zipfile(path) else _tar_sources
    try:
        yield from reader(path, where)
    except UnsafeArchiveError as exc:
        yield Source(where, error=str(exc))
    except _ARCHIVE_ERRORS as exc:
        yield Source(where, error=f"{where}: not a readable archive, or corrupt or truncated ({exc}); "
                                  "rebuild it, or extract it and pass the folder.")


def iter_sources(paths: Iterable[str | os.PathLike]) -> Iterator[Source]:
    """Every input file under ``paths``, in the order given (folders sorted by name)."""
    for given in paths:
        p = Path(given)
        if p.is_dir():
            yield from _folder_sources(p)
        elif not p.exists():
            yield Source(str(p), error=f"{p}: no such file or folder")
        elif is_archive(p):
            yield from _archive_sources(p)
        else:
            yield _file_source(p)
