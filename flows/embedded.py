"""The embedded Prefect API of ``cifar run`` and ``cifar data``, owned by the command.

Without ``PREFECT_API_URL`` Prefect would start a temporary API server (uvicorn, ~200 MB) in a
child process the first time a flow needs one, and stop it from an ``atexit`` hook. Three things
go wrong with that: a ``kill -9`` of the command skips the hook and leaves the server running,
reparented to PID 1; the hook's "Stopping temporary server" line comes after the command's last
line (the report's path); and the command first imports Prefect's whole server (FastAPI,
SQLAlchemy: ~6 s of CPU on a slow core) only to start it, then waits for the child to import it
all again. So the command starts the server itself, as the very first thing, the way Prefect
would (uvicorn on Prefect's app factory, the UI off, ephemeral mode), with two changes: the child
runs under ``python -m flows.embedded PARENT_PID`` which makes the kernel send it SIGTERM the
moment its parent dies (``PR_SET_PDEATHSIG`` on Linux; elsewhere a thread that watches the
parent); and the command points ``PREFECT_API_URL`` at it, so Prefect's client talks to it as to
any server and never imports the server's code. The command imports its flow while the child
starts (the two overlap on two cores), waits until the API answers, and stops it after Prefect's
log and event queues are drained, before printing its last lines. ``PREFECT_UI_URL`` is set
empty meanwhile: this API has no UI and is gone when the command ends, so nothing links to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PORT_IN_USE = 3  # uvicorn's exit status when its port was taken between our check and its bind


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedServer:
    """Prefect's API app under uvicorn in a child process bound to this one (see above)."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.process: subprocess.Popen[Any] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> None:
        """Start the child; return at once (``wait_ready`` waits for it)."""
        self.port = _free_port()
        prefect_dir = os.path.dirname(importlib.util.find_spec("prefect").origin)
        args = [  # as Prefect 3.9's SubprocessASGIServer._run_uvicorn_command runs it
            "--app-dir", os.path.dirname(prefect_dir),
            "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "error", "--lifespan", "on",
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
        env.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
        # A session of its own: Ctrl-C or a SIGTERM to the command's process group must not stop
        # the API before the flow has reported its state to it (flows/interrupts.py).
        # PR_SET_PDEATHSIG still ends it the moment the command itself dies.
        self.process = subprocess.Popen([sys.executable, "-m", "flows.embedded", str(os.getpid()), *args],
                                        env=env, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        """Return when the API answers its health check; RuntimeError after ``timeout`` seconds."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() == PORT_IN_USE:
                    self.launch()
                    continue
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server process exited with status {self.process.returncode}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                time.sleep(0.1)
        raise RuntimeError("Timed out while attempting to connect to the temporary Prefect API server.")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def _startup_timeout() -> float:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


def _start(server, meanwhile: Callable[[], Any] | None = None) -> Any:
    """Launch the temporary API, run ``meanwhile`` while it starts, wait until it answers; what
    ``meanwhile`` returned, or a CifarError that says why the API did not start and what to do."""
    from tasks.core.errors import CifarError

    try:
        server.launch()
        result = meanwhile() if meanwhile else None
        server.wait_ready(_startup_timeout())
        return result
    except BaseException as exc:
        server.stop()  # a signal while it starts, too: nothing of it is left behind
        if not isinstance(exc, RuntimeError):
            raise
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        raise CifarError(
            f"the temporary Prefect API did not answer within {_startup_timeout():.0f} s (load "
            f"average {load:.1f} on {os.cpu_count()} cores; {str(exc)[:300]}). Nothing ran. To "
            "resolve it: run the command again when the machine is less busy; or wait longer with "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300; or start one server for good "
            "(`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api.") from None


@contextlib.contextmanager
def embedded_api(meanwhile: Callable[[], Any] | None = None) -> Iterator[Any]:
    """Run the body against Prefect's temporary API, started here and bound to this process, and
    stop it at the end; yields what ``meanwhile`` (run while the API starts: the flow's imports)
    returned. With ``PREFECT_API_URL`` naming a server, that one is used (not ours to manage)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        _require_reachable(PREFECT_API_URL.value())
        yield meanwhile() if meanwhile else None
        return
    server = EmbeddedServer()
    result = _start(server, meanwhile)
    before = {name: os.environ.get(name) for name in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    _set_prefect_env({"PREFECT_API_URL": server.api_url, "PREFECT_UI_URL": ""})  # the run's processes too
    try:
        yield result
    finally:
        try:
            _drain_prefect_queues()
        finally:
            server.stop()
            _set_prefect_env(before)


def _set_prefect_env(values: dict[str, str | None]) -> None:
    """Set (None: unset) Prefect's variables in this process's environment, and in the settings
    Prefect already read from it (its own way to pick up an environment change)."""
    from prefect.context import refresh_global_settings_context

    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    refresh_global_settings_context()


if __name__ == "__main__":
    _main(sys.argv[1:])
