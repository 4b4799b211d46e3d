"""Which members of an untrusted archive may be read: the one set of checks behind the download
stage's dataset archives and the predict stage's archives of images.

A member is refused -- and with it the whole archive, before anything of it is used -- on an
absolute or ``..`` name, a link, a device, a FIFO or a sparse file, and when the members add up
to more than the extraction budget (archive bombs). Moved here from ``tasks.download.archive``
so that both stages share it.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import PurePosixPath

from tasks.core.errors import CifarError

BUDGET_REMEDY = "Raise dataset.max_extract_mb if it is genuine."


class UnsafeArchiveError(CifarError):
    """An archive member that could escape or abuse the extraction (``..``, absolute, link,
    device, oversized), or a pickle that asks for anything but plain data."""


def safe_member_name(name: str, where: str) -> str:
    """``name`` normalised to a relative posix path; refuses absolute and ``..`` names."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in parts:
        raise UnsafeArchiveError(f"{where}: member {name!r} has an absolute or '..' path; refused "
                                 "(it could write outside the extraction folder). Nothing was extracted.")
    return "/".join(p for p in parts if p not in (".", ""))


class ExtractionBudget:
    """The bytes an archive's members may add up to; refuses the archive past it. ``remedy``
    ends the message: what to change when the archive is genuine."""

    def __init__(self, max_bytes: int, where: str, remedy: str = BUDGET_REMEDY):
        self.left, self.max, self.where, self.remedy = max_bytes, max_bytes, where, remedy

    def take(self, n: int, name: str) -> None:
        self.left -= n
        if self.left < 0:
            raise UnsafeArchiveError(
                f"{self.where}: members add up to more than {self.max / 2**20:,.0f} MiB (at {name!r}); "
                f"refused as a possible archive bomb. {self.remedy}")


def regular_tar_member(m: tarfile.TarInfo, where: str, budget: ExtractionBudget,
                       dirs: set[str] | None) -> str | None:
    """The member's normalised name if it is a regular file; None for a folder; refuses the
    archive on absolute/``..`` names, links, devices, FIFOs and sparse files."""
    name = safe_member_name(m.name, where)
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


def regular_zip_member(info: zipfile.ZipInfo, where: str, budget: ExtractionBudget,
                       dirs: set[str] | None) -> str | None:
    """As :func:`regular_tar_member`, for a zip entry (its declared size taken from the budget;
    the caller takes what inflating adds beyond it)."""
    name = safe_member_name(info.filename, where)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{where}: member {info.filename!r} is a link; refused.")
    if info.is_dir():
        if dirs is not None:
            dirs.add(name)
        return None
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        raise UnsafeArchiveError(f"{where}: member {info.filename!r} is not a regular file; refused.")
    budget.take(info.file_size, name)
    return name
