"""``cifar sweep --pool``: a real Prefect server, a process work pool, TWO workers, one sweep of
2 points x 2 seeds. Prefect fans the children out (deployment runs of ``cifar/<pipeline>-sweep``
on the pool); the sweep waits, reads each child's result from Prefect's result storage and its
numbers from the run folders, and aggregates. Nothing is mocked.

    .venv/bin/pytest -m e2e tests/e2e/test_sweep_pool_e2e.py
"""

from __future__ import annotations

import json
import re
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

    ids = [str(fr.id) for fr in children]
    took = {w.name: [i for i in ids if re.search(re.escape(i), w.output())] for w in workers}
    spans = sorted((fr.start_time, fr.end_time) for fr in children)
    overlapped = any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert all(took.values()) or overlapped, (took, spans)
    print(f"runs per worker: { {k: len(v) for k, v in took.items()} }; overlapped: {overlapped}")
