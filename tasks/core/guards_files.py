"""Opening an untrusted path: regular files only, read within a byte cap, never blocking.

A FIFO in a folder of images blocked every reader forever; ``/dev/zero`` (or a ``.png`` link to
it) was read until memory ran out. Here a path is opened with ``O_NONBLOCK`` (opening a FIFO
returns at once) and, inside folders, ``O_NOFOLLOW`` (a link is refused, never followed), then
checked with ``fstat`` on the open descriptor (no race between the check and the read): anything
but a regular file is a ``NotRegularFileError`` naming the path and what it is. Reads stop one
byte past the cap.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from tasks.core.errors import CifarError

READ_CHUNK = 1 << 20


class NotRegularFileError(CifarError):
    """A path that is a FIFO, a device, a socket, a folder or (where links are refused) a link."""


class TooLargeError(CifarError):
    """A file or a set of inputs larger than the bytes allowed for it."""


def kind_of(mode: int) -> str:
    """What a ``st_mode`` is, in words."""
    for test, word in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return word
    return "not a regular file"


def lstat_kind(path: str | os.PathLike) -> str | None:
    """None for a regular file (not a link); else what the path is (without following a link)."""
    mode = os.lstat(path).st_mode
    return None if stat.S_ISREG(mode) else kind_of(mode)


def open_regular(path: str | os.PathLike, follow_links: bool = False) -> int:
    """A read-only descriptor of the regular file ``path``; ``NotRegularFileError`` otherwise.
    ``follow_links``: a link named by the user may lead to a regular file (never to a FIFO or a
    device: the target is checked as well)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise NotRegularFileError(f"{path} is a symbolic link; links inside an input are not "
                                      "followed. Copy the file in instead.") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path} is {kind_of(mode)}, not a regular file; skipped (only "
                                      "regular files are read). Remove it or give the real file.")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, max_bytes: int, follow_links: bool = False,
                 what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, refused past ``max_bytes`` (``TooLargeError``)."""
    fd = open_regular(path, follow_links)
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise TooLargeError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a {what} may have; "
                                "not read.")
        parts, n = [], 0
        while chunk := f.read(min(READ_CHUNK, max_bytes + 1 - n)):
            parts.append(chunk)
            n += len(chunk)
            if n > max_bytes:  # it grew while being read
                raise TooLargeError(f"{path}: more than the {max_bytes:,} bytes a {what} may have; "
                                    "not read further.")
    return b"".join(parts)


def is_regular(path: Path) -> bool:
    """True for a regular file that is not a link (never opens it)."""
    try:
        return lstat_kind(path) is None
    except OSError:
        return False
