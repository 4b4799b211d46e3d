"""Failures that are the user's to fix, and how they reach the terminal: one paragraph, no traceback.

Used by the command line and by flow-run processes that Prefect starts itself (a served or
pooled run imports ``flows.cifar``, which installs the same filter).
"""

from __future__ import annotations

import errno
import logging
import os

from flows import interrupts
from tasks.core.errors import CifarError


# OS faults a user fixes on their side (a full, read-only or foreign disk, a path through a file).
_DISK_REMEDIES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your quota on that disk",
    errno.EROFS: "remount that disk read-write",
    errno.EACCES: "give this user access to that path",
    errno.EPERM: "give this user access to that path",
    errno.ENOTDIR: "remove or rename the file that stands where a folder is expected",
}


def disk_fault(exc: BaseException | None) -> str | None:
    """The message for an OSError the user can fix (disk full, read-only, no permission, a file in
    the way), naming the path; None for any other exception. Writes are atomic (temp file, then
    rename), so such a fault leaves no half-written file behind."""
    if not isinstance(exc, OSError) or exc.errno not in _DISK_REMEDIES:
        return None
    where = exc.filename or "a file under data_dir or artifacts_dir"
    return (f"cannot use {where}: {exc.strerror or os.strerror(exc.errno)} ({errno.errorcode[exc.errno]}). "
            f"Nothing half-written was kept. To resolve it, {_DISK_REMEDIES[exc.errno]}, or point "
            "the pipeline elsewhere (--set data_dir=/other/disk/cifar or --set artifacts_dir=..., "
            "or the same keys in pipelines.yaml), then run the command again: finished stages stay cached.")



class _NoTracebackForExpected(logging.Filter):
    """Prefect logs a failed task's exception with its traceback; for expected failures
    (CifarError: a bad download, a refused archive, a failed validation) the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        expected = record.exc_info and (isinstance(record.exc_info[1], CifarError)
                                        or disk_fault(record.exc_info[1]) is not None
                                        or interrupts.signal_of(record.exc_info[1]) is not None)
        # Prefect's event emitter logs a traceback when the embedded API is already stopping
        # as a run's last heartbeat goes out; the one-line message says enough.
        lost_event = record.exc_info and record.name.startswith("prefect.events")
        if expected or lost_event:
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_expected_tracebacks() -> None:
    """Drop the tracebacks of expected failures from Prefect's log handlers (the message stays)."""
    flt = _NoTracebackForExpected()
    for name in ("prefect", "prefect.task_runs", "prefect.flow_runs", "prefect.task_engine",
                 "prefect.flow_engine", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _NoTracebackForExpected) for f in handler.filters):
                handler.addFilter(flt)
