"""The endpoint's tests: real runs saved by the store (``tests/servingfolders.py``: constant models
whose answers are known), served by a real uvicorn server on 127.0.0.1 in a thread, called with
httpx. One server per module; the runs are built once per session."""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servingfolders import constant_runs  # noqa: E402


@pytest.fixture(scope="session")
def saved_runs(tmp_path_factory):
    """``tiny``: runs answering cat (the champion) and dog; ``other``: one run answering frog."""
    root = tmp_path_factory.mktemp("served")
    tiny = constant_runs(root, (0, 1), "tiny")
    other = constant_runs(root, (2,), "other")
    return {"root": root, "artifacts": root / "artifacts", "tiny": [r.run_id for r in tiny],
            "other": [r.run_id for r in other]}


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
