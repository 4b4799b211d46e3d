"""Shared fixtures. Unit tests need none of this; `engine` tests share one Prefect harness."""

from __future__ import annotations

import os

# Offline and quiet before Prefect or TensorFlow is imported anywhere.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(scope="session")
def prefect_engine(tmp_path_factory):
    """One real Prefect API (SQLite, in a temp PREFECT_HOME) for every test that runs flows."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    with prefect_test_harness(server_startup_timeout=120):
        yield
