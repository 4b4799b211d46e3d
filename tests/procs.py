"""Start and stop real processes for the end-to-end tests (and the benchmarks).

Every process runs in its own process group (``start_new_session``) with its output going to a
file, so that stopping it also stops what it spawned (a Prefect server's uvicorn, a runner's flow
subprocesses) and a failing test can show the tail of each log. ``Procs`` remembers everything
it started and stops all of it, SIGTERM first, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's bin/: prefect and cifar live next to python


def exe(name: str) -> str:
    """A console script installed next to this interpreter (``prefect``, ``cifar``)."""
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the project into this venv "
                                f"(pip install -e '.[test]')")
    return str(path)


def interruptible() -> None:
    """``preexec_fn``: the child starts with Ctrl-C's default action, as from a terminal. A test
    run in the background of a non-interactive shell (``make test &``, some CI runners) inherits
    SIGINT ignored, and Python then never turns SIGINT into KeyboardInterrupt: the Ctrl-C tests
    would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: str | os.PathLike, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no output file)"
    return "\n".join(text.splitlines()[-lines:])


def migrated_database() -> Path:
    """A Prefect SQLite database already migrated to this Prefect's head, built once per machine
    and Prefect version (a file lock keeps xdist workers from building it twice).

    A fresh PREFECT_HOME's first server or temporary API runs every Alembic migration: ~5 s of
    CPU and wall each, measured here (10.2 s to healthy on a fresh database, 4.7 s on a migrated
    one), paid by ~15 homes a suite. Prefect's own migrations are not what these tests test."""
    import prefect

    root = Path(tempfile.gettempdir()) / f"cifar-tests-prefect-db-{prefect.__version__}"
    done = root / "prefect.db"
    if done.exists():
        return done
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or its holder dies
        if not done.exists():
            work = Path(tempfile.mkdtemp(dir=root))
            try:
                subprocess.run([exe("prefect"), "server", "database", "upgrade", "-y"], check=True, timeout=300,
                               env=prefect_env(work, None), capture_output=True)
                os.replace(work / "prefect.db", done)  # a complete database or none (no -wal: closed)
            finally:
                shutil.rmtree(work, ignore_errors=True)  # a failed build leaves nothing behind either
    return done


def prefect_home(path: str | os.PathLike) -> str:
    """``path`` made a PREFECT_HOME whose database is already migrated (``migrated_database``)."""
    home = Path(path)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copyfile(migrated_database(), home / "prefect.db")
    return str(home)


def prefect_env(home: str | os.PathLike, api_url: str | None, **extra: str) -> dict[str, str]:
    """A clean environment for a Prefect client or server: its own PREFECT_HOME, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_COLORS": "false",
        "PREFECT_CLI_WRAP_LINES": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",  # rich wraps tables at 80 columns without a terminal
    })
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


def stop_group(popen: subprocess.Popen, term_timeout: float = 10.0) -> int | None:
    """SIGTERM the process group, wait, then SIGKILL it. Returns the exit code."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(term_timeout)
        except subprocess.TimeoutExpired:
            pass
    # Kill what is left of the group, the leader included (children may outlive it).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)
    return popen.returncode


class Proc:
    """One long-running process in its own group, its stdout+stderr in ``log``."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str],
                 cwd: str | os.PathLike | None = None):
        self.name, self.argv, self.log = name, list(argv), Path(log)
        self._out = open(self.log, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True, preexec_fn=interruptible,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before printing "
                                   f"{needle!r}:\n{tail(self.log)}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not print {needle!r} within {timeout:.0f} s:\n{tail(self.log)}")

    def stop(self, term_timeout: float = 10.0) -> int | None:
        try:
            return stop_group(self.popen, term_timeout)
        finally:
            self._out.close()

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} {'running' if self.alive() else self.popen.returncode}>"


class Procs:
    """Starts processes, runs commands, and stops everything it started (use as a context)."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.started: list[Proc] = []
        self.logs: list[Path] = []
        self._n = 0

    def _log(self, name: str) -> Path:
        self._n += 1
        path = self.logdir / f"{self._n:02d}-{name}.log"
        self.logs.append(path)
        return path

    def start(self, name: str, argv: Sequence[str], env: dict[str, str], cwd=None) -> Proc:
        proc = Proc(name, argv, self._log(name), env, cwd)
        self.started.append(proc)
        return proc

    def run(self, name: str, argv: Sequence[str], env: dict[str, str], timeout: float,
            cwd=None, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command to completion (own process group, killed whole on timeout)."""
        log = self._log(name)
        t0 = time.monotonic()
        with open(log, "wb") as out:
            popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                     start_new_session=True, preexec_fn=interruptible)
            try:
                rc = popen.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_group(popen, 5)
                raise TimeoutError(f"{name} ({' '.join(argv)}) ran past {timeout:.0f} s; "
                                   f"output:\n{tail(log)}") from None
            finally:
                stop_group(popen, 5)  # nothing it spawned outlives it
        result = subprocess.CompletedProcess(list(argv), rc, log.read_text(errors="replace"), "")
        result.seconds = time.monotonic() - t0  # type: ignore[attr-defined]
        if check and rc != 0:
            raise AssertionError(f"{name} exited {rc}: {' '.join(argv)}\n{tail(log, 60)}")
        return result

    def stop_all(self) -> None:
        for proc in reversed(self.started):  # clients before the server they talk to
            proc.stop()
        self.started.clear()

    def report(self, lines: int = 30) -> str:
        """The tail of every log, for a failing test."""
        return "\n".join(f"----- {log.name} (last {lines} lines) -----\n{tail(log, lines)}"
                         for log in self.logs)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5,
               alive: Proc | None = None) -> None:
    """Poll ``check`` until true; fail early when ``alive`` (the process we wait on) died."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if alive is not None and not alive.alive():
            raise RuntimeError(f"{alive.name} exited ({alive.popen.returncode}) while waiting for "
                               f"{what}:\n{tail(alive.log)}")
        if time.monotonic() > deadline:
            extra = f"\n{tail(alive.log)}" if alive is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@contextlib.contextmanager
def prefect_server(procs: Procs, home: str | os.PathLike, port: int | None = None,
                   timeout: float = 120.0, **extra_env: str) -> Iterator[str]:
    """A real ``prefect server start`` on 127.0.0.1; yields its API URL once /api/health answers."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(prefect_home(home), None, PREFECT_SERVER_API_HOST="127.0.0.1",
                      PREFECT_SERVER_API_PORT=str(port), **extra_env)
    server = procs.start("prefect-server", [exe("prefect"), "server", "start", "--host",
                                            "127.0.0.1", "--port", str(port)], env)
    try:
        wait_until(f"{url}/health", lambda: http_ok(f"{url}/health"), timeout, alive=server)
        yield url
    finally:
        server.stop()


def client_env(server: tuple[str, str | os.PathLike], **extra: str) -> dict[str, str]:
    """The environment of a client of ``server`` (its API URL and PREFECT_HOME), never proxied."""
    url, home = server
    return prefect_env(home, url, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                       **extra)


def module_server(tmp_path_factory, **extra_env: str) -> Iterator[tuple[str, Path]]:
    """The body of a module-scoped ``server`` fixture: (api_url, home) of a real Prefect server
    with a temporary PREFECT_HOME, stopped at the end, pass or fail; its log tail printed then."""
    root = tmp_path_factory.mktemp("prefect-server")
    home = root / "home"
    home.mkdir()
    with Procs(root / "logs") as procs:
        with prefect_server(procs, home, timeout=180, **extra_env) as url:
            yield url, home
        log = procs.logs[0]
    print(f"prefect server log ({log}):\n{tail(log, 30)}")


def descendants(pid: int) -> set[int]:
    """Every living descendant of ``pid`` (Linux /proc): what a stopped command must not leave."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += [k for k in kids if k not in out]
            out.update(kids)
    return out


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, already dead, does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False
