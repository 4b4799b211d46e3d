"""``cifar reports [--port N]``: the artifacts folder over HTTP on 127.0.0.1, read-only.

Browsers refuse ``file://`` links on an ``http://`` page, so the report links in Prefect's UI
work only when the reports are served over HTTP too. This is Python's own static file server
(``http.server``) with three limits: it binds to the loopback address only, it answers GET and
HEAD and nothing else (no writes, no uploads), and it serves only files whose real path lies
inside the folder (``..`` and symbolic links that lead out are refused with 404). Set
``CIFAR_REPORTS_URL`` to its address (``http://127.0.0.1:8765``) in the environment of the flow
runs (the shell of `cifar run`/`cifar serve`, or a pipeline's ``deploy.env``) and the link
artifacts point at it.
"""

from __future__ import annotations

import functools
import os
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tasks.core.errors import CifarError

HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class ReportsServerError(CifarError):
    pass


class ReadOnlyHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of files under ``directory``; every other method is refused (405)."""

    server_version = "cifar-reports"

    def translate_path(self, path: str) -> str:
        candidate = super().translate_path(path)  # drops "..", "." and drive parts already
        root = os.path.realpath(self.directory)
        real = os.path.realpath(candidate)
        if real != root and not real.startswith(root + os.sep):
            return os.path.join(root, ".refused", "outside")  # a path that never exists: 404
        return candidate

    def _refuse(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET and HEAD only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args) -> None:
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


def make_server(root: str | os.PathLike, port: int = DEFAULT_PORT, quiet: bool = False) -> ThreadingHTTPServer:
    """The server (not started) for ``root`` on 127.0.0.1:``port`` (0: any free port)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportsServerError(f"{root} is not a folder: there is nothing to serve yet. Run a pipeline "
                                 "first (`cifar run smoke`), or pass --config for the file whose "
                                 "artifacts_dir holds the runs.")
    handler = functools.partial(ReadOnlyHandler, directory=str(root.resolve()))
    try:
        server = ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        raise ReportsServerError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc}); "
                                 "choose another port with --port N") from exc
    server.quiet = quiet  # type: ignore[attr-defined]
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def serve_reports(root: str | os.PathLike, port: int = DEFAULT_PORT) -> None:
    """Serve until interrupted (``cifar reports``)."""
    server = make_server(root, port)
    url = url_of(server)
    print(f"serving {Path(root).resolve()} read-only at {url}/ (index: {url}/index.html)")
    print(f"link artifacts point here when the flow runs have CIFAR_REPORTS_URL={url}")
    try:
        server.serve_forever()
    finally:
        server.server_close()


class Background:
    """The server on a thread, for tests and scripts: ``with Background(root) as url: ...``."""

    def __init__(self, root: str | os.PathLike, port: int = 0):
        self.server = make_server(root, port, quiet=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return url_of(self.server)

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
