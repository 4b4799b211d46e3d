"""What a person sees while the stage works: its log (the Prefect run log inside a run, the
terminal outside one) and the periodic bytes / MB/s / ETA line of a download."""

from __future__ import annotations

import logging
import sys
import time

from tasks.core.logs import get_logger

PROGRESS_EVERY_S = 2.0


class _EchoToStderr(logging.LoggerAdapter):
    """The ``cifar`` logger when nothing is set up to show it: every message also goes to stderr."""

    def log(self, level, msg, *args, **kwargs) -> None:
        super().log(level, msg, *args, **kwargs)
        print(msg % args if args else msg, file=sys.stderr, flush=True)


def stage_log() -> logging.Logger | logging.LoggerAdapter:
    """The logger to tell a person what the stage does. Outside a Prefect run with no logging
    configured, messages still show in the terminal."""
    logger = get_logger()
    base = getattr(logger, "logger", logger)
    if base.name == "cifar" and not base.hasHandlers():
        return _EchoToStderr(logger, {})
    return logger


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
            stage_log().info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.t0, 1e-9)
        rate = (self.done - self.start) / elapsed
        mb = self.done / 1e6
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            return (f"{self.label}: {mb:,.1f}/{self.total / 1e6:,.1f} MB ({100 * self.done / self.total:.0f}%), "
                    f"{rate / 1e6:.2f} MB/s, ETA {eta:,.0f} s")
        return f"{self.label}: {mb:,.1f} MB, {rate / 1e6:.2f} MB/s"
