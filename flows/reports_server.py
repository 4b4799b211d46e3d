"""``cifar reports [--port N]``: the artifacts folder over HTTP on 127.0.0.1, read-only.

Browsers refuse ``file://`` links on an ``http://`` page, so the report links in Prefect's UI
work only when the reports are served over HTTP too. This is Python's own static file server
(``http.server``) with these limits: it binds to the loopback address only and answers only
requests whose ``Host`` is a loopback name (``127.0.0.1``, ``localhost``, ``[::1]``: a page on
another site that rebinds its DNS name to 127.0.0.1 gets 421); it answers GET and HEAD and nothing
else (no writes, no uploads); it serves only files whose real path lies inside the folder (``..``
and symbolic links that lead out are refused with 404) and no dotfile or dot-folder (``.env``:
404); a connection idle for ``IDLE_TIMEOUT`` seconds is closed and at most ``MAX_CONNECTIONS``
are served at once (500 half-sent requests held 502 threads forever); a client that hangs up
is one line in the log, not a traceback. Set
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
from tasks.core.guards_text import escape

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
IDLE_TIMEOUT = 10.0  # seconds a connection may wait for (the rest of) a request
MAX_CONNECTIONS = 32


class ReportsServerError(CifarError):
    pass


def port_number(value: str) -> int:
    """``--port``: a whole number 0..65535 (argparse's type: a wrong one is a usage error)."""
    import argparse

    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {value!r}")
    return port


def loopback_host(header: str | None) -> bool:
    """True for a Host header naming the loopback address (with or without a port)."""
    if not header:
        return False
    host = header.strip().lower()
    if host.startswith("["):
        host = host.split("]", 1)[0] + "]"
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return host in LOOPBACK_NAMES


class ReadOnlyHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of files under ``directory``; every other method is refused (405)."""

    server_version = "cifar-reports"
    timeout = IDLE_TIMEOUT  # socket timeout: an idle or half-sent request is dropped

    def translate_path(self, path: str) -> str:
        candidate = super().translate_path(path)  # drops "..", "." and drive parts already
        root = os.path.realpath(self.directory)
        real = os.path.realpath(candidate)
        if real != root and not real.startswith(root + os.sep):
            return os.path.join(root, ".refused", "outside")  # a path that never exists: 404
        rel = os.path.relpath(candidate, root)
        if any(part.startswith(".") and part != "." for part in rel.split(os.sep)):
            return os.path.join(root, ".refused", "dotfile")  # .env, .git, a temp folder: 404
        return candidate

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if not loopback_host(self.headers.get("Host")):
            self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "only loopback Host names are served "
                            "(127.0.0.1, localhost, [::1])")
            return False
        return True

    def list_directory(self, path):
        """The folder's entries, dotfiles left out (the stock listing names them)."""
        import html
        import io
        import urllib.parse

        try:
            names = sorted(n for n in os.listdir(path) if not n.startswith("."))
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "No permission to list directory")
            return None
        title = html.escape(urllib.parse.unquote(self.path.split("?", 1)[0]), quote=False)
        rows = "".join(f'<li><a href="{urllib.parse.quote(n + ("/" if os.path.isdir(os.path.join(path, n)) else ""))}">'
                       f"{html.escape(n)}</a></li>" for n in names)
        body = (f"<!DOCTYPE HTML><html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
                f"<body><h1>{title}</h1><ul>{rows}</ul></body></html>").encode("utf-8", "surrogateescape")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def _refuse(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET and HEAD only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args) -> None:
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *(escape(a) if isinstance(a, str) else a for a in args))


class _Server(ThreadingHTTPServer):
    """At most MAX_CONNECTIONS handled at once (more are closed at once); a client that hangs up
    or times out is one line, not a traceback."""

    daemon_threads = True
    # A burst of connects waits in the kernel's queue until accepted (and refused at once when
    # the server is full): with socketserver's default of 5, the rest of a burst sat in SYN
    # retransmits, 1 s, 3 s, 7 s... before the server even saw them.
    request_queue_size = 128

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.quiet = False

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: refuse rather than start another thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            if not self.quiet:
                print(f"{client_address[0]}:{client_address[1]}: connection ended "
                      f"({type(exc).__name__}: {exc})", file=sys.stderr)
            return
        super().handle_error(request, client_address)


def make_server(root: str | os.PathLike, port: int = DEFAULT_PORT, quiet: bool = False,
                idle_timeout: float = IDLE_TIMEOUT) -> ThreadingHTTPServer:
    """The server (not started) for ``root`` on 127.0.0.1:``port`` (0: any free port)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportsServerError(f"{root} is not a folder: there is nothing to serve yet. Run a pipeline "
                                 "first (`cifar run smoke`), or pass --config for the file whose "
                                 "artifacts_dir holds the runs.")
    handler_class = type("Handler", (ReadOnlyHandler,), {"timeout": idle_timeout})
    handler = functools.partial(handler_class, directory=str(root.resolve()))
    try:
        server = _Server((HOST, port), handler)
    except (OSError, OverflowError) as exc:
        raise ReportsServerError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc}); "
                                 "choose another port with --port N") from exc
    server.quiet = quiet
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

    def __init__(self, root: str | os.PathLike, port: int = 0, idle_timeout: float = IDLE_TIMEOUT):
        self.server = make_server(root, port, quiet=True, idle_timeout=idle_timeout)
        # polled every 50 ms, so that leaving the block stops it at once (the default 0.5 s poll
        # made each stop wait up to half a second)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return url_of(self.server)

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
