"""A team's service, end to end with real processes: one `prefect server start` for the module
(temporary PREFECT_HOME, SQLite), a tiny CIFAR-10 archive on a loopback HTTP server, and the
commands a user types, each in its own process group:

    cifar serve --pipeline svc-a --pipeline svc-b; prefect deployment run cifar/svc-a; ... svc-b
        two deployments triggered together train one after the other (the machine's training
        slot cifar-train:<host>, one at a time) and both complete, the slot free after;
    cifar reports --port P
        the report of a run, fetched at the address its link artifact gives; its table and link
        artifacts found through the API; the report links back to its flow run in the UI;
    cifar run mw (twice, TF_CONFIG on 127.0.0.1)
        one multi-worker training through the whole flow: one run folder, one registry entry,
        both flow runs Completed;
    prefect deployment run cifar/svc-a --param pipeline=svc-b
        refused before anything runs: a deployment runs the pipeline it is pinned to.

Run with: .venv/bin/pytest -m e2e tests/e2e/test_service_e2e.py
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import uuid

import pytest
from archives import FileServer, build_binary_archive
from procs import client_env, exe, free_port, module_server, tail, wait_until
from test_e2e import EPOCH_LINE, UUID_RE, prefect_client, task_states

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPORTS_PORT = free_port()  # where `cifar reports` will listen: the served runs link there


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(api_url, home): a real Prefect server for the module."""
    yield from module_server(tmp_path_factory)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """pipelines.yaml (two served pipelines that train different models) and mw.yaml (one
    multi-worker pipeline, two slots per machine), on one tiny archive served on loopback."""
    built = build_binary_archive(tmp_path_factory.mktemp("archive"), n_train=150, n_test=60)
    root = tmp_path_factory.mktemp("project")
    with FileServer() as srv:
        url = srv.add(built.path.name, built.path)
        dataset = (f"{{format: cifar10-binary, source: '{url}', sha256: {built.sha256}, "
                   "limit_train: 100, limit_test: 50, retries: 1}")
        (root / "pipelines.yaml").write_text(f"""\
pipelines:
  svc-a:
    dataset: {dataset}
    training: {{epochs: 2, batch_size: 32, seed: 1}}
    promote: {{min_value: 0}}  # two epochs on 100 images may not beat chance
  svc-b:
    dataset: {dataset}
    training: {{epochs: 2, batch_size: 32, seed: 2}}
    promote: {{min_value: 0}}
""")
        (root / "mw.yaml").write_text(f"""\
artifacts_dir: artifacts-mw
train_slots: 2
pipelines:
  mw:
    dataset: {dataset}
    training: {{epochs: 1, batch_size: 32, strategy: multi_worker}}
    promote: {{min_value: 0}}
""")
        yield root


def slot_name() -> str:
    """This machine's training slot set (the served runs' CIFAR_SLOT_DIR is this session's)."""
    from tasks.train.slots import limit_name

    return limit_name(visible_devices="")


def wait_final(client, run_id, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        fr = client.read_flow_run(run_id)
        if fr.state and fr.state.is_final():
            return fr
        if time.monotonic() > deadline:
            raise AssertionError(f"flow run {fr.name} still {fr.state.name if fr.state else None} after {timeout} s")
        time.sleep(1)


def timed_logs(client, run_id) -> list[tuple[float, str]]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
    return sorted((log.timestamp.timestamp(), log.message) for log in logs)


def first(logs, start: str) -> float:
    hits = [t for t, m in logs if start in m]
    assert hits, f"no log line with {start!r}: {[m for _, m in logs]}"
    return hits[0]


def link_of(data: str) -> str:
    """A link artifact's address (the API gives it as markdown: ``[text](address)``)."""
    m = re.fullmatch(r"\[.*\]\((.+)\)", data)
    return m.group(1) if m else data


# --------------------------------------------------------------------------- tests
def test_two_deployments_triggered_together_train_one_after_the_other(server, project, procs):
    name = slot_name()
    env = client_env(server, PREFECT_RUNNER_POLL_FREQUENCY="1",
                     CIFAR_REPORTS_URL=f"http://127.0.0.1:{REPORTS_PORT}")
    serve = procs.start("cifar-serve", [exe("cifar"), "serve", "--config", str(project / "pipelines.yaml"),
                                        "--pipeline", "svc-a", "--pipeline", "svc-b"], env, cwd=project)
    serve.wait_for_output("serving 4 deployment(s)", timeout=120)
    wait_until("the deployments", lambda: procs.run(
        "inspect", [exe("prefect"), "deployment", "inspect", "cifar/svc-b"], client_env(server),
        timeout=60, check=False).returncode == 0, timeout=60, alive=serve)

    ids = {}
    for pipeline in ("svc-a", "svc-b"):  # triggered back to back, no --watch
        res = procs.run(f"trigger-{pipeline}", [exe("prefect"), "deployment", "run", f"cifar/{pipeline}"],
                        client_env(server), timeout=60)
        ids[pipeline] = uuid.UUID(UUID_RE.search(res.stdout).group(1))

    with prefect_client(server) as client:
        runs = {p: wait_final(client, i, 360) for p, i in ids.items()}
        for p, fr in runs.items():
            assert fr.state.is_completed(), (p, fr.state, serve.output()[-3000:])
            train = [v for k, v in task_states(client, fr.id).items() if k.startswith("train")]
            assert train == ["Completed"], (p, train)  # trained, not a cache hit
        logs = {p: timed_logs(client, fr.id) for p, fr in runs.items()}
    from tasks.train.slots import holders

    # Neither run holds the slot once it ended (another test's process of this pytest worker may).
    ours = [h for h in holders(name) if h.get("flow_run_id") in {str(i) for i in ids.values()}]
    assert ours == [], ours

    # Each run's training, from getting the slot to its last epoch line: never overlapping.
    spans = {}
    for p, lines in logs.items():
        epochs = [t for t, m in lines if EPOCH_LINE.match(m)]
        assert len(epochs) == 2, (p, [m for _, m in lines])
        waited = [t for t, m in lines if "waiting for a slot of " + name in m]
        spans[p] = (first(lines, "got a slot of " + name), epochs[-1], waited[0] if waited else None)
    (a, sa), (b, sb) = sorted(spans.items(), key=lambda kv: kv[1][0])
    assert sb[2] is not None, f"{b} never said it was waiting for the slot {a} held"
    print(f"training spans: {a} {sa[0]:.1f}..{sa[1]:.1f}, {b} {sb[0]:.1f}..{sb[1]:.1f} (asked {sb[2]:.1f})")
    assert sa[1] <= sb[0], f"the trainings interleaved: {a} until {sa[1]}, {b} from {sb[0]}"
    assert sb[2] < sa[1], f"{b} asked for the slot only after {a} had trained: nothing was held back"
    for p, fr in runs.items():
        run_dir = next(d for d in (project / "artifacts" / p / "runs").iterdir()
                       if json.loads((d / "metadata.json").read_text())["flow_run_id"] == str(fr.id))
        assert sorted((run_dir / "tensorboard").glob("*/events.out.tfevents.*")), run_dir

    # A run whose artifacts folder this worker cannot see fails saying so (it creates none).
    unseen = project / "not-mounted" / "artifacts"
    res = procs.run("trigger-unseen", [exe("prefect"), "deployment", "run", "cifar/svc-a", "--param",
                                       json.dumps({"artifacts_dir": str(unseen)}).join(["overrides=", ""])],
                    client_env(server), timeout=60)
    with prefect_client(server) as client:
        fr = wait_final(client, uuid.UUID(UUID_RE.search(res.stdout).group(1)), 120)
    assert fr.state.is_failed(), fr.state
    assert f"cannot see artifacts_dir {unseen}: the folder does not exist here" in fr.state.message, fr.state.message
    assert not unseen.parent.exists()
    assert serve.alive(), serve.output()


def test_a_deployment_refuses_to_run_another_pipeline(server, project, procs):
    """Issue 28: `prefect deployment run cifar/svc-a --param pipeline=svc-b` trained svc-b through
    svc-a's deployment and could promote it. The deployment is pinned to its own pipeline (its
    stored parameter): the run fails before any task runs, naming both and what to do."""
    serve = procs.start("cifar-serve-pin", [exe("cifar"), "serve", "--config", str(project / "pipelines.yaml"),
                                            "--pipeline", "svc-a"],
                        client_env(server, PREFECT_RUNNER_POLL_FREQUENCY="1"), cwd=project)
    serve.wait_for_output("serving 2 deployment(s)", timeout=120)
    before = sorted((project / "artifacts").glob("*/runs/*"))
    ids = {}
    for flow, extra in (("cifar", []), ("cifar-predict", ["--param", f"input={project}"])):
        res = procs.run(f"trigger-{flow}", [exe("prefect"), "deployment", "run", f"{flow}/svc-a",
                                            "--param", "pipeline=svc-b", *extra], client_env(server), timeout=60)
        ids[flow] = uuid.UUID(UUID_RE.search(res.stdout).group(1))
    with prefect_client(server) as client:
        for flow, run_id in ids.items():
            fr = wait_final(client, run_id, 120)
            assert fr.state.is_failed(), (flow, fr.state, serve.output()[-3000:])
            assert (f"deployment {flow}/svc-a runs pipeline 'svc-a' only, but this run asked for "
                    "pipeline='svc-b'; nothing was run") in fr.state.message, fr.state.message
            assert f"`prefect deployment run {flow}/svc-b`" in fr.state.message
            assert task_states(client, fr.id) == {}, (flow, task_states(client, fr.id))  # before any task
    assert sorted((project / "artifacts").glob("*/runs/*")) == before
    assert serve.alive(), serve.output()


def test_reports_are_served_and_linked_from_the_artifacts(server, project, procs):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_dirs = sorted((project / "artifacts" / "svc-a" / "runs").glob("*/report.html"))
    assert run_dirs, "the served runs left no report (the test before this one failed?)"
    run_dir = run_dirs[-1].parent
    meta = json.loads((run_dir / "metadata.json").read_text())
    reports = procs.start("cifar-reports", [exe("cifar"), "reports", "--config", str(project / "pipelines.yaml"),
                                            "--port", str(REPORTS_PORT)], client_env(server), cwd=project)
    reports.wait_for_output("serving ", timeout=60)

    with prefect_client(server) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(meta["flow_run_id"])])))
    by_key = {a.key: a for a in arts if a.key}
    assert {"per-class-svc-a", "validation-svc-a", "runs-svc-a", "report-link-svc-a", "index-link"} <= set(by_key), by_key
    assert {by_key[k].type for k in ("per-class-svc-a", "validation-svc-a", "runs-svc-a")} == {"table"}
    per_class = json.loads(by_key["per-class-svc-a"].data)
    classes = json.loads((run_dir / "classes.json").read_text())
    assert [r["class"] for r in per_class] == [*classes, "macro avg", "weighted avg"]  # a row per class, then averages
    rows = json.loads(by_key["runs-svc-a"].data)
    assert [r["run"] for r in rows if r["this run"]] == [meta["run_id"]]
    assert [r["champion"] for r in rows] == ["★ champion"]  # the pipeline's one run is its champion
    checks = json.loads(by_key["validation-svc-a"].data)
    assert checks and all(c["passed"] for c in checks), checks

    link = link_of(by_key["report-link-svc-a"].data)
    assert link == f"http://127.0.0.1:{REPORTS_PORT}/svc-a/runs/{meta['run_id']}/report.html", link
    with urllib.request.urlopen(link, timeout=10) as resp:
        body = resp.read()
    assert body == (run_dir / "report.html").read_bytes()
    ui = server[0].removesuffix("/api")
    assert f'href="{ui}/runs/flow-run/{meta["flow_run_id"]}"'.encode() in body  # back to its flow run
    with urllib.request.urlopen(link_of(by_key["index-link"].data), timeout=10) as resp:
        assert meta["run_id"].encode() in resp.read()


def test_multi_worker_training_through_the_whole_flow(server, project, procs):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in (0, 1):
        env = client_env(server, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(procs.start(f"worker-{index}", [exe("cifar"), "run", "mw", "--config",
                                                        str(project / "mw.yaml")], env, cwd=project))
    for w in workers:
        try:
            w.popen.wait(400)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{w.name} still running:\n{tail(w.log)}") from None
        assert w.popen.returncode == 0, f"{w.name} exited {w.popen.returncode}:\n{tail(w.log, 60)}"

    pipeline_dir = project / "artifacts-mw" / "mw"
    run_dirs = [d for d in (pipeline_dir / "runs").iterdir() if not d.name.startswith(".")]
    assert len(run_dirs) == 1, run_dirs
    registry = json.loads((pipeline_dir / "registry.json").read_text())
    assert registry["champion"]["run_id"] == run_dirs[0].name
    assert len(list((pipeline_dir / "store-keys").glob("*.json"))) == 1
    assert (run_dirs[0] / "report.html").is_file()
    assert f"trained with the chief, whose run is {run_dirs[0]}" in workers[1].output(), tail(workers[1].log)

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with prefect_client(server) as client:
        frs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["pipeline:mw"])))
    assert len(frs) == 2 and all(fr.state.is_completed() for fr in frs), [(fr.name, fr.state) for fr in frs]
    meta = json.loads((run_dirs[0] / "metadata.json").read_text())
    assert meta["flow_run_id"] in {str(fr.id) for fr in frs}
    assert meta["training"]["strategy"] == "multi_worker" and meta["training"]["replicas"] == 2, meta["training"]


def test_deploy_carries_job_variables_and_the_config_path(server, project, procs):
    (project / "pipelines-pool.yaml").write_text((project / "pipelines.yaml").read_text().replace(
        "    training: {epochs: 2, batch_size: 32, seed: 1}\n",
        "    training: {epochs: 2, batch_size: 32, seed: 1}\n"
        "    deploy: {env: {CUDA_VISIBLE_DEVICES: '1', A: block}, work_queue: gpu-a}\n", 1))
    pool = f"svc-{uuid.uuid4().hex[:6]}"
    procs.run("work-pool-create", [exe("prefect"), "work-pool", "create", pool, "--type", "process"],
              client_env(server), timeout=90)
    config = project / "pipelines-pool.yaml"
    res = procs.run("cifar-deploy", [exe("cifar"), "deploy", "--pool", pool, "--config", str(config),
                                     "--pipeline", "svc-a", "--job-variable", "env.A=cli",
                                     "--job-variable", 'env.TF_CONFIG={"cluster": {}}',
                                     "--job-variable", "stream_output=false"], client_env(server), timeout=120)
    assert f"warning: {config} is outside the code the workers pull" in res.stdout, res.stdout
    with prefect_client(server) as client:
        dep = client.read_deployment_by_name("cifar/svc-a")
    assert dep.work_pool_name == pool and dep.work_queue_name == "gpu-a", dep
    assert dep.job_variables == {"stream_output": False, "env": {
        "CUDA_VISIBLE_DEVICES": "1", "A": "cli", "TF_CONFIG": '{"cluster": {}}',
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}, dep.job_variables  # for the zombie automation
    assert dep.parameters == {"pipeline": "svc-a", "config": str(config)}, dep.parameters
