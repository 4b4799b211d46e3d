"""The embedded Prefect API of ``cifar run`` and ``cifar data``, owned by the command.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server (uvicorn, ~200 MB) in a child
process the first time a flow needs one, and stops it from an ``atexit`` hook. Two things go
wrong with that: a ``kill -9`` of the command skips the hook and leaves the server running,
reparented to PID 1; and the hook's "Stopping temporary server" line comes after the command's
last line (the report's path). So the command starts the server itself, before the flow, as the
very object Prefect looks up (``SubprocessASGIServer()``'s instance for the default port), with
one change: the child runs under ``python -m flows.embedded PARENT_PID`` which makes the kernel
send it SIGTERM the moment its parent dies (``PR_SET_PDEATHSIG`` on Linux; elsewhere a thread
that watches the parent), then runs uvicorn exactly as Prefect would. The command stops it,
after Prefect's log and event queues are drained, before printing its last lines.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """In the server process: end it when ``parent`` (the cifar command) dies, however it dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)  # this process's own symbols: libc's prctl
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def watch() -> None:  # the portable half, and the backstop if SIGTERM is not acted on
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _main(argv: list[str]) -> None:
    """``python -m flows.embedded PARENT_PID UVICORN_ARGS...``: uvicorn, bound to its parent."""
    _die_with_parent(int(argv[0]))
    sys.argv = ["uvicorn", *argv[1:]]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)


def _server_class():
    from prefect.server.api.server import SubprocessASGIServer

    class BoundServer(SubprocessASGIServer):
        """Prefect's temporary API server, started through ``flows.embedded`` (see above)."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            args = [  # as SubprocessASGIServer._run_uvicorn_command (Prefect 3.9) runs it
                "--app-dir", str(prefect.__module_path__.parent),
                "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on",
            ]
            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1",
                   **get_current_settings().to_environment_variables(exclude_unset=True)}
            # A session of its own: Ctrl-C or a SIGTERM to the command's process group must not
            # stop the API before the flow has reported its state to it (flows/interrupts.py).
            # PR_SET_PDEATHSIG still ends it the moment the command itself dies.
            return subprocess.Popen([sys.executable, "-m", "flows.embedded", str(os.getpid()), *args],
                                    env=env, start_new_session=True)

    return BoundServer


def _drain_prefect_queues() -> None:
    """Send the logs and events still queued while the server is up (as prefect_test_harness
    does), so nothing tries to reach it, and fails loudly, after it stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(RuntimeError):  # never started
            worker.drain_all(timeout=10)


def _require_reachable(api_url: str) -> None:
    """CifarError, before any flow starts, when nothing answers at ``PREFECT_API_URL`` (Prefect
    would fail deep inside the flow call with a traceback). Any HTTP answer counts as reachable:
    a server that wants a key says so itself."""
    import httpx

    from tasks.core.errors import CifarError

    try:
        httpx.get(api_url.rstrip("/") + "/health", timeout=10)
    except httpx.TransportError as exc:
        raise CifarError(
            f"the Prefect API at PREFECT_API_URL={api_url} does not answer ({type(exc).__name__}: {exc}). "
            "Start it (`prefect server start`), point PREFECT_API_URL at a running one, or unset "
            "PREFECT_API_URL: `cifar run` then starts its own temporary API.") from None


def _start(server) -> None:
    """Start the temporary API, or a CifarError that says why it did not and what to do."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    from tasks.core.errors import CifarError

    try:
        server.start()
    except BaseException as exc:
        server.stop()  # a signal while it starts, too: nothing of it is left behind
        if not isinstance(exc, RuntimeError):
            raise
        # Prefect's "Timed out while attempting to connect to ephemeral Prefect API server"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        raise CifarError(
            f"the temporary Prefect API did not answer within "
            f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s (load average {load:.1f} on "
            f"{os.cpu_count()} cores; Prefect said: {str(exc)[:300]}). Nothing ran. To resolve it: run the "
            "command again when the machine is less busy; or wait longer with "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300; or start one server for good "
            "(`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api.") from None


@contextlib.contextmanager
def embedded_api() -> Iterator[None]:
    """Run the body with Prefect's temporary API started here and bound to this process; stop it
    at the end. A no-op when ``PREFECT_API_URL`` names a server (that one is not ours)."""
    from prefect.server.api.server import SubprocessASGIServer, subprocess_server_logger
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        _require_reachable(PREFECT_API_URL.value())
        yield  # a real server: not ours to manage
        return
    if SubprocessASGIServer._instances.get(None) is not None:
        yield  # one already started in this process (a test harness): not ours either
        return
    server = _server_class()()  # registered as the default instance Prefect's client looks up
    _start(server)
    try:
        yield
    finally:
        _drain_prefect_queues()
        level = subprocess_server_logger.level
        subprocess_server_logger.setLevel(logging.WARNING)  # no "Stopping temporary server" line
        try:
            server.stop()
        finally:
            subprocess_server_logger.setLevel(level)


if __name__ == "__main__":
    _main(sys.argv[1:])
