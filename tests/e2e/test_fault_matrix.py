"""The fault matrix on `cifar run`'s own temporary Prefect API (issue 26; tests/faultmatrix.py
says what each fault must leave and what the rerun must show; docs/reliability.md has the table).

This API's share of the fault points (``faultmatrix.SHARES``; every point, in all three rotations,
with CIFAR_FAULT_MATRIX=full), kill -9 / SIGTERM / SIGINT rotating over them; batch scoring runs
only as a deployment, so it is in the real-server half (tests/e2e/test_fault_matrix_server.py).
"""

from __future__ import annotations

import pytest

from archives import FileServer
from faultmatrix import Chain, offsets, record, rotation
from procs import Procs

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("offset", offsets(0))
def test_killed_at_every_step_on_the_temporary_api_then_resumed(tmp_path, offset):
    home = tmp_path / "prefect-home"  # the temporary API's database, kept across the chain's runs
    home.mkdir()
    with Procs(tmp_path / "logs") as procs, FileServer() as server:
        chain = Chain(tmp_path, procs, server, "temporary", home, api_url=None)
        try:
            for point, how in rotation(offset, "temporary"):
                chain.fault(point, how)
            chain.finish()
            chain.assert_resumed_and_intact()
        finally:
            record(chain.outcomes, "temporary")
            print(procs.report(15))
