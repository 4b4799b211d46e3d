"""``cifar sweep --pool``: a real Prefect server, a process work pool, TWO workers, one sweep of
2 points x 2 seeds. Prefect fans the children out (deployment runs of ``cifar/<pipeline>-sweep``
on the pool); the sweep waits, reads each child's result from Prefect's result storage and its
numbers from the run folders, and aggregates. Nothing is mocked.

    .venv/bin/pytest -m e2e tests/e2e/test_sweep_pool_e2e.py
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from archives import build_binary_archive
from procs import client_env, exe, module_server

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory)


@pytest.fixture()
def project(tmp_path):
    built = build_binary_archive(tmp_path, n_train=120, n_test=40, seed=7)
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data_dir: data
        artifacts_dir: artifacts
        train_slots: 2
        pipelines:
          sw:
            dataset: {{format: cifar10-binary, source: {json.dumps(str(built.path))}, sha256: {built.sha256}}}
            training: {{epochs: 1, batch_size: 32, seed: 11}}
            promote: {{min_value: 0}}
    """))
    return tmp_path, cfg


def test_a_sweep_fans_out_over_two_workers_of_a_pool(server, project, procs):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    root, cfg = project
    pool = f"sweep-pool-{uuid.uuid4().hex[:6]}"
    env = client_env(server, PYTHONPATH=str(REPO))  # this checkout's code, in workers and command
    procs.run("work-pool-create", [exe("prefect"), "work-pool", "create", pool, "--type", "process"], env, timeout=90)
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    workers = [procs.start(f"worker-{n}", [exe("prefect"), "worker", "start", "--pool", pool, "--name", f"w{n}"],
                           worker_env, cwd=root) for n in (1, 2)]
    for w in workers:
        w.wait_for_output("Worker", timeout=120)

    res = procs.run("cifar-sweep", [str(Path(exe("prefect")).parent / "python"), "-m", "flows.cli", "sweep", "sw",
                                    "--config", str(cfg), "--grid", "training.batch_size=16,32", "--seeds", "2",
                                    "--pool", pool, "--json"], env, timeout=480, cwd=REPO, check=False)
    assert res.returncode == 0, res.stdout[-4000:]
    out = json.loads(res.stdout[res.stdout.index("{\n"):res.stdout.rindex("}") + 1])
    assert [c["state"] for c in out["children"]] == ["Completed"] * 4, out["children"]
    assert sum(r["n"] for r in out["points"]) == 4
    run_ids = {r for p in out["points"] for r in p["runs"]}
    assert len(run_ids) == 4 and all((root / "artifacts/sw/runs" / r / "metrics.json").is_file() for r in run_ids)
    for p in out["points"]:
        accs = [json.loads((root / "artifacts/sw/runs" / r / "metrics.json").read_text())["test_accuracy"]
                for r in p["runs"]]
        assert p["test_accuracy"]["mean"] == pytest.approx(sum(accs) / len(accs))
    registry = root / "artifacts/sw/registry.json"
    assert not registry.exists() or json.loads(registry.read_text()).get("champion") is None

    with SyncPrefectClient(api=server[0]) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"sweep:{out['sweep']}"])))
        assert len(children) == 4 and all(fr.state.is_completed() for fr in children), children
        assert {fr.work_pool_name for fr in children} == {pool}
        dep = client.read_deployment_by_name("cifar/sw-sweep")
        assert dep.global_concurrency_limit is None, dep.global_concurrency_limit  # not serialised
        assert {fr.deployment_id for fr in children} == {dep.id}
        parents = {client.read_task_run(fr.parent_task_run_id).flow_run_id for fr in children}
        assert parents == {uuid.UUID(out["flow_run_id"])}, parents  # parented to the sweep's run
        assert client.read_flow_run(uuid.UUID(out["flow_run_id"])).flow_id != children[0].flow_id

    # which worker ran which child: a process worker streams its flow runs' logs
    took = {w.name: [fr.id for fr in children if f"Flow run '{fr.name}' - Finished in state Completed()" in w.output()]
            for w in workers}
    assert sum(len(v) for v in took.values()) == 4, took
    spans = sorted((fr.start_time, fr.end_time) for fr in children)
    overlapped = any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert all(took.values()) or overlapped, (took, spans)
    print(f"runs per worker: { {k: len(v) for k, v in took.items()} }; overlapped: {overlapped}")


def test_a_signal_cancels_the_children_a_pooled_sweep_submitted(server, project, procs):
    """No worker on the pool: the children stay Scheduled, the sweep waits; SIGTERM to its process
    group ends it within seconds, one line naming the runs it cancelled, and they are cancelled."""
    import os
    import signal
    import time

    from prefect.client.orchestration import SyncPrefectClient

    root, cfg = project
    pool = f"sweep-idle-{uuid.uuid4().hex[:6]}"
    env = client_env(server, PYTHONPATH=str(REPO))
    procs.run("work-pool-create", [exe("prefect"), "work-pool", "create", pool, "--type", "process"], env, timeout=90)
    sweep = procs.start("cifar-sweep", [sys.executable, "-m", "flows.cli", "sweep", "sw", "--config", str(cfg),
                                        "--seeds", "3", "--pool", pool], env, cwd=REPO)
    sweep.wait_for_output("submitted 3 run(s)", timeout=180)
    t0 = time.monotonic()
    os.killpg(sweep.pid, signal.SIGTERM)
    rc = sweep.popen.wait(30)
    text = sweep.output()
    assert rc == 143 and time.monotonic() - t0 < 20, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if ln.startswith("interrupted by SIGTERM")]
    assert len(lines) == 1 and "cancelled 3 run(s) of the sweep" in lines[0], text[-3000:]
    ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", lines[0].split("cancelled")[1])
    assert len(ids) == 3, lines[0]
    with SyncPrefectClient(api=server[0]) as client:
        states = [client.read_flow_run(uuid.UUID(i)).state.name for i in ids]
    assert set(states) <= {"Cancelling", "Cancelled"}, states
