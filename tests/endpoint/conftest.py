"""The endpoint's tests: real runs saved by the store (``tests/servingfolders.py``: constant models
whose answers are known), served by a real uvicorn server on 127.0.0.1 in a thread
(``tests/endpointserver.py``), called with httpx. One server per module; the runs are built once
per session."""

from __future__ import annotations

import pytest
from servingfolders import constant_runs


@pytest.fixture(scope="session")
def saved_runs(tmp_path_factory):
    """``tiny``: runs answering cat (the champion) and dog; ``other``: one run answering frog."""
    root = tmp_path_factory.mktemp("served")
    tiny = constant_runs(root, (0, 1), "tiny")
    other = constant_runs(root, (2,), "other")
    return {"root": root, "artifacts": root / "artifacts", "tiny": [r.run_id for r in tiny],
            "other": [r.run_id for r in other]}

