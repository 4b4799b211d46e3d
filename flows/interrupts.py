"""Ctrl-C and SIGTERM end a command in seconds, in one line, with the conventional exit code.

A terminal's Ctrl-C, ``timeout``, ``docker stop``, systemd and CI cancellation signal the whole
process group. The command turns SIGTERM (and SIGHUP) into an exception in its main thread, as
Python already does for SIGINT, so that the flow engine marks the run Crashed through the API
(the embedded API server runs in a session of its own, ``flows.embedded``, so it is still up),
every ``finally`` runs (locks released, the server stopped), and ``main`` prints one line naming
what was interrupted. Exit codes: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}

# What the command is doing now, and the innermost step a signal stopped, for the line it prints.
_doing: list[str] = []
_stopped: list[str] = []


class Interrupted(BaseException):
    """A signal asked the command to stop (a BaseException, like KeyboardInterrupt: no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []


def _raise(signum: int, frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


_gentle: list[bool] = []  # while set: the first Ctrl-C stops as SIGTERM would (see ctrl_c_as_sigterm)


def _interrupt(signum: int, frame) -> None:
    _received.append(signum)
    term = signal.getsignal(signal.SIGTERM)
    if _gentle and _received.count(signal.SIGINT) == 1 and callable(term) and term is not _raise:
        term(signal.SIGTERM, frame)  # the handler a library put in for SIGTERM: its own clean stop
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_as_sigterm() -> Iterator[None]:
    """For the block, the first Ctrl-C runs the SIGTERM handler that code inside installed, when
    there is one, instead of raising KeyboardInterrupt; a second Ctrl-C raises. Prefect's runner
    (``cifar serve``) stops cleanly on SIGTERM, cancelling its flow runs and waiting for them; a
    KeyboardInterrupt in its event loop abandons them, killed before they can report, so they
    would stay Running."""
    _gentle.append(True)
    try:
        yield
    finally:
        _gentle.pop()


def last_signal() -> int | None:
    """The last signal this process's own handlers saw (Prefect's SIGTERM handler, which it
    installs while serving, records nothing)."""
    return _received[-1] if _received else None


def install() -> None:
    """SIGTERM and SIGHUP raise ``Interrupted`` in the main thread (SIGINT keeps Python's
    KeyboardInterrupt). Prefect's flow engine swaps its own SIGTERM handler in while a flow runs
    and restores this one after; either way the run is marked Crashed and the command unwinds."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started ignoring it
        signal.signal(signal.SIGINT, _interrupt)


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Name the step under way (``the download of train``) for the interruption's line."""
    _doing.append(what)
    try:
        yield
    except BaseException as exc:
        if not _stopped and signal_of(exc) is not None:
            _stopped.append(what)
        raise
    finally:
        _doing.pop()


def signal_of(exc: BaseException) -> int | None:
    """The signal behind ``exc``: KeyboardInterrupt, ``Interrupted`` or Prefect's
    TerminationSignal (raised by its SIGTERM handler while a flow runs); None otherwise."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, Interrupted):
        return exc.signum
    number = getattr(exc, "signal", None)
    if type(exc).__name__ == "TerminationSignal" and isinstance(number, int):
        return number
    return None


def message(command: str, signum: int) -> str:
    """The one line a signalled command prints."""
    what = (_stopped or _doing or [command])[-1]
    line = f"interrupted by {NAMES.get(signum, f'signal {signum}')}: {what} stopped"
    if command.startswith(("cifar run", "cifar data")):
        line += ("; its flow run is marked Crashed. Run the same command again: finished stages are "
                 "cached and a download resumes where it stopped"
                 + (", a training at the next epoch" if command.startswith("cifar run") else ""))
    return line


def exit_code(signum: int) -> int:
    return 128 + int(signum)
