"""Shared fixtures. Unit tests need none of this; `engine` tests share one Prefect harness."""

from __future__ import annotations

import os
import sys

# Offline and quiet before Prefect or TensorFlow is imported anywhere.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Downloads honour the proxy variables (httpx's trust_env); the tests' servers are on loopback,
# so a proxy set on the machine must neither carry nor break them. Proxy tests set their own.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
    os.environ.pop(_var, None)
    os.environ.pop(_var.lower(), None)

# This session's own training slots (tasks/train/slots.py): each pytest-xdist worker's trainings,
# and the processes its tests start, wait for each other, never for another worker's or a user's.
# Keyed by worker: xdist's workers inherit the controller's environment, so a folder made once
# (by the controller, which imports this file first) was shared by all workers, and one worker's
# kill -9 test saw the other worker's training hold "its" slot (CI, 2026-12-07).
_SLOTS_OF = os.environ.get("PYTEST_XDIST_WORKER", "controller") + f":{os.getpid()}"
if os.environ.get("CIFAR_TEST_SLOTS_OF") != _SLOTS_OF:
    import tempfile

    os.environ["CIFAR_SLOT_DIR"] = tempfile.mkdtemp(prefix="cifar-slots-")
    os.environ["CIFAR_TEST_SLOTS_OF"] = _SLOTS_OF

import pytest


# The files that take longest (seconds on one worker, pytest --durations, 2026-12-07, 2 vCPU AVX2
# host), started first: with `-n 3 --dist loadfile --no-loadscope-reorder` the workers take
# files in this order, longest first, so the last file to start is a short one. (xdist's default
# order, most tests first, started the 200 s fault matrix last.) Only the order: nothing else
# depends on this list, and a file missing from it runs after these.
LONGEST_FIRST = (
    "e2e/test_fault_matrix.py",  # 201 s
    "flows/test_flow.py",  # 183 s
    "flows/test_sweep_flow.py",  # 174 s (-n 0, 2026-12-07)
    "e2e/test_retraining_e2e.py",  # 179 s
    "e2e/test_fault_matrix_server.py",  # 162 s
    "e2e/test_service_e2e.py",  # 143 s
    "train/test_train.py",  # 129 s
    "e2e/test_zombies_e2e.py",  # 123 s, mostly waiting for heartbeats: overlaps best early
    "e2e/test_e2e.py",  # 123 s
    "e2e/test_sweep_pool_e2e.py",  # 78-98 s (-n 0, 2026-12-07)
    "flows/test_cli_faults.py",  # 94 s
    "train/test_fast_recipe.py",  # 72 s
    "e2e/test_predict_e2e.py",  # 62 s
    "flows/test_cache_keys.py",  # 57 s
    "flows/test_cli.py",  # 52 s
)


def _start_rank(item) -> int:
    path = item.path.as_posix()
    for rank, tail in enumerate(LONGEST_FIRST):
        if path.endswith("tests/" + tail):
            return rank
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """Markers from what a test uses, so none can be forgotten: ``engine`` for the Prefect
    harness, ``e2e`` for real processes (the ``procs`` and ``server`` fixtures, or a test under
    tests/e2e/, or one marked ``subprocess``). ``make test-fast`` runs neither. Then the longest
    files first (``LONGEST_FIRST``), each file's tests in their own order."""
    items.sort(key=_start_rank)  # stable
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "prefect_engine" in used:
            item.add_marker(pytest.mark.engine)
        if used & {"procs", "server"} or "e2e" in item.path.parts or item.get_closest_marker("subprocess"):
            item.add_marker(pytest.mark.e2e)


# --------------------------------------------------------------------------- the edit loop's rule
# `make test-fast` runs the tests that start no process: a test that starts one (a `cifar`
# command, a fresh interpreter, a forked worker) is marked ``subprocess`` (or uses ``procs``, or
# lives under tests/e2e/), which makes it e2e; the Prefect harness of ``engine`` tests is one
# too. This guard keeps that true: any other test that starts a process, in its body or its
# fixtures, fails, naming what it started.
_started: list[str] = []


def _note_popen(init):
    def __init__(self, args, *a, **kw):
        # platform.architecture() and .processor() run `file` and `uname` while Prefect or
        # TensorFlow is first imported: a library's own detail, not a process the test starts.
        caller = sys._getframe(1)
        while caller is not None and caller.f_globals.get("__name__") == "subprocess":
            caller = caller.f_back
        if caller is None or caller.f_globals.get("__name__") != "platform":
            _started.append(" ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args))
        return init(self, args, *a, **kw)
    return __init__


def pytest_configure(config):
    import subprocess

    subprocess.Popen.__init__ = _note_popen(subprocess.Popen.__init__)
    os.register_at_fork(before=lambda: _started.append("os.fork()"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    del _started[:]  # a fixture's processes count as the test's own
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    out = yield
    if _started and not (item.get_closest_marker("e2e") or item.get_closest_marker("engine")):
        pytest.fail(f"{item.nodeid} started a process ({_started[0][:200]}) but is not marked: "
                    "mark it @pytest.mark.subprocess (make test-fast runs only tests that start none)",
                    pytrace=False)
    return out


@pytest.fixture(scope="session")
def prefect_engine(tmp_path_factory):
    """One real Prefect API (SQLite, in a temp PREFECT_HOME) for every test that runs flows."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def procs(tmp_path):
    """Processes a test starts; all stopped at teardown. Their logs' tails print on failure
    (pytest shows a test's captured teardown output only when it failed)."""
    from procs import Procs

    p = Procs(tmp_path / "logs")
    try:
        yield p
    finally:
        p.stop_all()
        print(p.report())
