"""Test helper: ``serving`` runs `cifar endpoint`'s app (``flows.endpoint.create_app``) in a real
uvicorn server on 127.0.0.1 in a thread, for tests/endpoint; ``copy_artifacts`` gives a test its own
copy of saved runs to change."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path

import httpx


def copy_artifacts(saved_runs, dest: Path) -> Path:
    """A private copy of the saved runs, for a test that changes them (registry, files)."""
    shutil.copytree(saved_runs["artifacts"], dest)
    return dest


@contextlib.contextmanager
def serving(artifacts: Path, pipelines: list[str], ready: bool = True, **config):
    """A real uvicorn server with ``create_app`` on 127.0.0.1 (a free port), in a thread;
    yields (httpx client, app) once it listens (and, with ``ready``, once /readyz says so)."""
    import uvicorn

    from flows.endpoint import EndpointConfig, create_app

    app = create_app(artifacts, pipelines, config=EndpointConfig(**config))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the endpoint did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        while ready and client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.02)
        yield client, app
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=15)
