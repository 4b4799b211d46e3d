"""Which members of an untrusted archive may be read: the one set of checks behind the download
stage's dataset archives and the predict stage's archives of images.

A member is refused -- and with it the whole archive, before anything of it is used -- on an
absolute or ``..`` name, a link, a device, a FIFO or a sparse file, and when the members add up
to more than the extraction budget (archive bombs) or outnumber its member count. A tar is read
as a stream (``tar_stream``): its headers are charged to the budget too, and a header (GNU long
name, pax) above ``MAX_HEADER_BYTES`` is refused before tarfile reads its body; compressed tars
inflate a bounded read at a time (``inflated``). Moved here from ``tasks.download.archive`` so
that both stages share it; a caller passes one ``ExtractionBudget`` for a whole call (every
archive of one ``cifar predict`` shares it).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from zlib import error as ZlibError

from tasks.core.errors import CifarError

BUDGET_REMEDY = "Raise dataset.max_extract_mb if it is genuine."
MAX_MEMBERS = 1_000_000  # entries (files and folders) one budget admits; CIFAR-10 as JPEGs: 60,010
MAX_HEADER_BYTES = 1 << 20  # a GNU long name or pax header: real ones are a few hundred bytes


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

    def __init__(self, max_bytes: int, where: str, remedy: str = BUDGET_REMEDY,
                 max_members: int = MAX_MEMBERS):
        self.left, self.max, self.where, self.remedy = max_bytes, max_bytes, where, remedy
        self.members_left, self.max_members = max_members, max_members

    def take(self, n: int, name: str) -> None:
        self.left -= n
        if self.left < 0:
            raise UnsafeArchiveError(
                f"{self.where}: members add up to more than {self.max / 2**20:,.0f} MiB (at {name!r}); "
                f"refused as a possible archive bomb. {self.remedy}")

    def count(self, name: str) -> None:
        """One more entry (a member, a folder, a file of a folder)."""
        self.members_left -= 1
        if self.members_left < 0:
            raise UnsafeArchiveError(
                f"{self.where}: more than {self.max_members:,} entries (at {name!r}); refused as a "
                f"possible archive bomb. {self.remedy}")

    def take_headers(self, n: int, name: str) -> None:
        """Charge a tar member's headers (its 512-byte block, long names, pax records, padding)."""
        self.count(name)
        if n > self.left:
            raise UnsafeArchiveError(
                f"{self.where}: members add up to more than {self.max / 2**20:,.0f} MiB (at {name!r}, "
                f"headers included); refused as a possible archive bomb. {self.remedy}")
        self.take(n, name)


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
    budget.count(name)
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


# --------------------------------------------------------------------------- tar streams
_HEADER_TYPES = {tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link",
                 tarfile.XHDTYPE: "pax", tarfile.XGLTYPE: "pax global", tarfile.SOLARIS_XHDTYPE: "pax"}
TAR_ERRORS = (tarfile.TarError, EOFError, OSError, ZlibError, lzma.LZMAError)


class RefusedHeader(Exception):
    """Raised inside tarfile's header parsing; the reader turns it into an UnsafeArchiveError."""


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a long-name or pax header's body in one read: refuse one above
    MAX_HEADER_BYTES while only its 512-byte block is read, and every GNU sparse form before
    tarfile reads a sparse map of unbounded length."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        obj = super().frombuf(buf, encoding, errors)
        if obj.type in _HEADER_TYPES and obj.size > MAX_HEADER_BYTES:
            raise RefusedHeader(f"a {_HEADER_TYPES[obj.type]} header of {obj.size:,} bytes (at most "
                                f"{MAX_HEADER_BYTES:,} are read)")
        if obj.type == tarfile.GNUTYPE_SPARSE:
            raise RefusedHeader(f"member {obj.name!r} is a GNU sparse file")
        return obj

    @staticmethod
    def _sparse(next, pax_headers, form: str) -> RefusedHeader:
        name = pax_headers.get("GNU.sparse.name", next.name)
        return RefusedHeader(f"member {name!r} is a GNU sparse file (pax {form})")

    def _proc_gnusparse_00(self, next, pax_headers, *args):  # tarfile's hooks for pax sparse maps
        raise self._sparse(next, pax_headers, "0.0")

    def _proc_gnusparse_01(self, next, pax_headers, *args):
        raise self._sparse(next, pax_headers, "0.1")

    def _proc_gnusparse_10(self, next, pax_headers, *args):
        raise self._sparse(next, pax_headers, "1.0")


def unsafe_header(where: str, exc: RefusedHeader) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{where}: {exc}; refused as damaged or hostile before reading it. "
                              "Nothing was extracted: rebuild the archive with a plain tar.")


def inflated(f: io.BufferedReader):
    """The tar stream inside ``f``, gzip, bzip2 and xz inflated a bounded read at a time
    (tarfile's own ``r|*`` inflates a whole 10 KiB block at once: gigabytes for a bzip2 bomb)."""
    magic = f.peek(6)[:6]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(f, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f, "rb")
    return f


def tar_stream(fileobj, where: str, budget: ExtractionBudget, dirs: set[str] | None,
               corrupt: type[CifarError] = CifarError,
               ) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, str]]:
    """``(tar, member, name)`` of each regular member of the tar stream ``fileobj``, after its
    checks: every byte of the stream is charged to ``budget`` before a member's data is read (its
    headers here, its data by ``regular_tar_member``), and every entry counted. tarfile's list of
    members is emptied as it goes, so a million tiny members cost no memory. The caller reads a
    member with ``tar.extractfile(member)`` before asking for the next; a member it does not read
    is skipped. A damaged stream is ``corrupt`` naming ``where``."""
    try:  # default 10 KiB blocks: a bigger bufsize makes each small read copy the rest of the
        # buffer (60,000 JPEG members: 3x slower)
        tf = tarfile.open(fileobj=fileobj, mode="r|", tarinfo=BoundedTarInfo)
    except RefusedHeader as exc:
        raise unsafe_header(where, exc) from None
    except TAR_ERRORS as exc:
        raise corrupt(f"{where} is not a readable tar archive: {exc}") from exc
    with tf:
        charged = 0  # stream offset up to which the budget was charged
        try:
            while (m := tf.next()) is not None:
                tf.members.clear()
                budget.take_headers(m.offset_data - charged, m.name)
                charged = m.offset_data + (m.size if m.isreg() else 0)
                name = regular_tar_member(m, where, budget, dirs)
                if m.issparse():
                    raise UnsafeArchiveError(f"{where}: member {m.name!r} is a sparse file; refused.")
                if name is not None:
                    yield tf, m, name
        except RefusedHeader as exc:
            raise unsafe_header(where, exc) from None
        except TAR_ERRORS as exc:
            raise corrupt(f"{where}: the archive is corrupt or truncated ({exc})") from exc
