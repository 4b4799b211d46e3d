"""One logger for every stage: Prefect's run logger inside a run, the ``cifar`` logger outside;
and whether the code runs inside a Prefect run at all (``in_prefect_run``)."""

from __future__ import annotations

import logging
import sys

from tasks.core.guards_text import redact


class _Redacting(logging.LoggerAdapter):
    """Every message and argument with the credentials of its URLs masked
    (``tasks.core.guards_text.redact``): a source URL with ``user:pw@`` or a pre-signed query
    never reaches a log line."""

    def log(self, level, msg, *args, **kwargs):
        if self.isEnabledFor(level):
            msg = redact(msg)
            args = tuple(redact(a) if isinstance(a, str) else a for a in args)
            self.logger.log(level, msg, *args, **kwargs)

    def process(self, msg, kwargs):
        return msg, kwargs


def get_logger() -> logging.LoggerAdapter:
    """The Prefect run logger inside a flow/task run, else the plain ``cifar`` logger; either
    with URL credentials masked.

    Prefect is not imported to find out: no run can exist in a process that never imported it,
    and code that runs without Prefect (``cifar predict``) starts 2.5 s faster."""
    if "prefect" not in sys.modules:
        return _Redacting(logging.getLogger("cifar"))
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return _Redacting(get_run_logger())
    except MissingContextError:
        return _Redacting(logging.getLogger("cifar"))


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (where artifacts can be published). Prefect is not
    imported to find out, as for ``get_logger``."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None
