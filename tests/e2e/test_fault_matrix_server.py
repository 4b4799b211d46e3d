"""The fault matrix against a real `prefect server start` (issue 26; tests/faultmatrix.py says what
each fault must leave and what the rerun must show; docs/reliability.md has the table).

The same chain as on the temporary API, at the other fault points (``faultmatrix.SHARES``; every
point with CIFAR_FAULT_MATRIX=full), then batch scoring:
`cifar serve` runs the `cifar-predict` deployment, which is stopped where its outputs are written
but not yet published, and scored again once served anew.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import time
import uuid

import numpy as np
import pytest

from archives import FileServer
from faultmatrix import PIPELINE, RUN_BOUND, SIGNALS, Chain, Outcome, offsets, record, rotation, tagged
from procs import Procs, exe, module_server, wait_until

pytestmark = pytest.mark.e2e
UUID_RE = re.compile(r"UUID:\s*([0-9a-f-]{36})")
POINT = "score.before-publish"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory)


def _images(folder, n: int = 6) -> int:
    from PIL import Image

    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return n


def _state(server, flow_run_id) -> str:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=server[0]) as client:
        return client.read_flow_run(flow_run_id).state.name


def _score(chain: Chain, procs: Procs, server, photos, point: str | None):
    """`cifar serve` (with the fault point when given) and one cifar-predict deployment run."""
    env = dict(chain.env, PREFECT_RUNNER_POLL_FREQUENCY="1", **({"CIFAR_FAULT_POINT": point} if point else {}))
    serve = procs.start(f"serve-{point or 'again'}", [exe("cifar"), "serve", "--config", str(chain.config),
                                                      "--pipeline", PIPELINE], env, cwd=chain.root)
    serve.wait_for_output("serving 2 deployment(s)", timeout=120)
    argv = [exe("prefect"), "deployment", "run", f"cifar-predict/{PIPELINE}", "--param", f"input={photos}"]
    if point is None:
        argv += ["--watch", "--watch-timeout", str(int(RUN_BOUND))]
    res = procs.run("trigger", argv, chain.env, timeout=RUN_BOUND + 30, check=False)
    return serve, uuid.UUID(UUID_RE.search(res.stdout).group(1)), res


def _batch_scoring_fault(chain: Chain, procs: Procs, server, how: str) -> None:
    photos = chain.root / "photos"
    n = _images(photos)
    serve, run_id, _ = _score(chain, procs, server, photos, POINT)
    serve.wait_for_output(f"fault point {POINT} reached", timeout=RUN_BOUND)
    reached = time.monotonic()
    flow_pid = int(re.search(rf"fault point {re.escape(POINT)} reached \(pid (\d+)\)", serve.output()).group(1))
    if how == "kill -9":
        os.kill(flow_pid, signal.SIGKILL)  # the flow run's own process, as the OOM killer would
        wait_until("the flow run's process gone", lambda: not os.path.exists(f"/proc/{flow_pid}"), 10)
        code = None
    else:
        os.killpg(serve.pid, signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGINT)
        code = serve.popen.wait(15)
        assert code == (143 if how.startswith("SIGTERM") else 130), serve.output()[-3000:]
        assert serve.output().strip().splitlines()[-1].startswith("interrupted by "), serve.output()[-2000:]
    took = time.monotonic() - reached
    outcome = Outcome(chain.api, POINT, how, -9 if code is None else code, round(took, 2))
    chain.outcomes.append(outcome)
    serve.stop()
    wait_until("nothing of the served runs left", lambda: not tagged(chain.tag), 10)
    state = _state(server, run_id)
    if how != "kill -9":  # a killed one is left Running: the zombie automation's (test_zombies_e2e)
        assert state in ("Crashed", "Cancelled"), state
    outputs = chain.root / "artifacts" / PIPELINE / "predictions"
    published = [d for d in outputs.iterdir() if not d.name.startswith(".")] if outputs.is_dir() else []
    assert published == [], f"outputs published by a stopped scoring: {published}"

    t0 = time.monotonic()
    serve, again, res = _score(chain, procs, server, photos, None)
    assert res.returncode == 0 and "Completed" in res.stdout, res.stdout[-2000:]
    outcome.rerun_seconds = round(time.monotonic() - t0, 1)
    serve.stop()
    (folder,) = [d for d in outputs.iterdir() if not d.name.startswith(".")]
    rows = list(csv.DictReader(io.StringIO((folder / "predictions.csv").read_text())))
    assert len(rows) == n and all(r["class"] and not r["error"] for r in rows), rows


@pytest.mark.parametrize("offset", offsets(1))
def test_killed_at_every_step_on_a_real_server_then_resumed(server, tmp_path, offset):
    with Procs(tmp_path / "logs") as procs, FileServer() as files:
        chain = Chain(tmp_path, procs, files, "real server", server[1], api_url=server[0])
        try:
            for point, how in rotation(offset, "server"):
                chain.fault(point, how)
            chain.finish()
            chain.assert_resumed_and_intact()
            _batch_scoring_fault(chain, procs, server, SIGNALS[(len(rotation(offset, "server")) + offset) % len(SIGNALS)])
        finally:
            record(chain.outcomes, "real-server")
            print(procs.report(15))
