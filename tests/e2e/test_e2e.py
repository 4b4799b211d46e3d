"""End to end with real processes: a Prefect server, `cifar serve`, a process worker, the CLI.

Nothing is mocked. One `prefect server start` (temporary PREFECT_HOME, SQLite) serves the whole
module; the dataset is a tiny CIFAR-10 binary archive on a loopback HTTP server in this process;
every other piece is the command a user types, run as a subprocess:

    cifar serve --config T/pipelines.yaml                  (one deployment per pipeline)
    prefect deployment run cifar/e2e --watch               (cold run, then cached reruns)
    prefect deployment inspect cifar/e2e                   (the cron schedule)
    prefect work-pool create P --type process; prefect worker start --pool P
    cifar deploy --pool P --config T/pipelines.yaml; prefect deployment run cifar/e2e-pool --watch

Every process runs in its own process group and is stopped (SIGTERM, then SIGKILL) by the fixture
that started it, pass or fail; each one's output is a file in tmp_path whose tail is printed when
a test fails. Run with: .venv/bin/pytest -m e2e tests/e2e/test_e2e.py
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import timezone
from pathlib import Path

import pytest

from archives import FileServer, build_binary_archive
from procs import client_env, exe, module_server, tail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

CRON = "0 3 * * 1"  # Monday 03:00 UTC, as in pipelines.yaml: never due during a test
# Task runs (by name prefix) that a rerun with nothing changed must serve from the cache.
CACHED_STAGES = ("fetch", "decode", "validate", "train")
UUID_RE = re.compile(r"UUID:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(api_url, home): a real Prefect server for the module; stopped at the end, pass or fail."""
    # A run refused by the deployment concurrency limit is retried after this many seconds
    # (default 30): keeps the "second trigger waits" check short.
    yield from module_server(tmp_path_factory, PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny cifar10-binary archive (150 train / 60 test random images, official layout) on a
    loopback HTTP server that logs every request: (url, sha256, FileServer)."""
    built = build_binary_archive(tmp_path_factory.mktemp("archive"), n_train=150, n_test=60)
    with FileServer() as srv:
        yield srv.add(built.path.name, built.path), built.sha256, srv


@pytest.fixture(scope="module")
def project(tmp_path_factory, archive):
    """pipelines.yaml with two tiny pipelines sharing one data_dir/artifacts_dir."""
    url, sha256, _ = archive
    root = tmp_path_factory.mktemp("project")
    (root / "pipelines.yaml").write_text(f"""\
data_dir: data
artifacts_dir: artifacts
pipelines:
  e2e:
    description: end-to-end test pipeline (served)
    expect: a few seconds
    dataset: &tiny
      format: cifar10-binary
      source: {url}
      sha256: {sha256}
      limit_train: 100
      limit_test: 50
      retries: 1
    model: seed_cnn
    training: &one {{epochs: 1, batch_size: 32}}
    schedule: {{cron: "{CRON}", timezone: UTC}}
  e2e-pool:
    description: end-to-end test pipeline (work pool)
    dataset: *tiny
    model: seed_cnn
    training: *one
    schedule: {{cron: "{CRON}", timezone: UTC}}
""")
    return root


# --------------------------------------------------------------------------- helpers
def prefect_client(server):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=server[0])


def trigger(procs, server, deployment, name, timeout=300, watch=True):
    """`prefect deployment run <deployment> --watch`; returns (flow run id, CompletedProcess)."""
    argv = [exe("prefect"), "deployment", "run", deployment]
    if watch:
        argv += ["--watch", "--watch-timeout", str(timeout - 20)]
    res = procs.run(name, argv, client_env(server), timeout=timeout, check=False)
    m = UUID_RE.search(res.stdout)
    assert m, f"no flow run id in the output of {' '.join(argv)}:\n{res.stdout}"
    return uuid.UUID(m.group(1)), res


def task_states(client, flow_run_id) -> dict[str, str]:
    """{task run name: state name} for one flow run."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


def scheduled_runs(client, deployment_id, timeout: float = 90.0) -> list:
    """Expected start times (UTC) of the deployment's Scheduled runs, waiting for the scheduler."""
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName,
    )

    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))),
        )
        # a manual trigger is Scheduled too, for an instant: keep only those in the future
        times = [r.expected_start_time.astimezone(timezone.utc) for r in runs
                 if r.expected_start_time.timestamp() > time.time() + 60]
        if times or time.monotonic() > deadline:
            return times
        time.sleep(2)


EPOCH_LINE = re.compile(r"^epoch \d+/\d+ ")  # the train stage's per-epoch log line


def run_logs(client, flow_run_id, timeout: float = 30.0) -> list[str]:
    """The flow run's log messages, once its last one ("done: ...") reached the server."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        msgs = [log.message for log in client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]
        if any(m.startswith("done: ") for m in msgs) or time.monotonic() > deadline:
            return msgs
        time.sleep(1)


def stage_states(states: dict[str, str]) -> dict[str, list[str]]:
    return {s: [v for k, v in states.items() if s in k.lower()] for s in CACHED_STAGES}


def run_seconds(fr) -> float:
    return (fr.end_time - fr.start_time).total_seconds()


def run_folders(project, pipeline) -> list[Path]:
    return sorted((project / "artifacts" / pipeline / "runs").glob("*/metadata.json"))


def metadata_for(project, pipeline, flow_run_id) -> dict:
    for meta in run_folders(project, pipeline):
        data = json.loads(meta.read_text())
        if data.get("flow_run_id") == str(flow_run_id):
            return data | {"_dir": str(meta.parent)}
    raise AssertionError(f"no run folder under {project}/artifacts/{pipeline}/runs for flow run "
                         f"{flow_run_id}: {[str(m.parent) for m in run_folders(project, pipeline)]}")


# --------------------------------------------------------------------------- tests
def test_served_deployment_runs_caches_and_is_scheduled(server, archive, project, procs):
    _, _, files = archive
    requests = files.requests
    config = project / "pipelines.yaml"
    env = client_env(server, PREFECT_RUNNER_POLL_FREQUENCY="1")

    serve = procs.start("cifar-serve", [exe("cifar"), "serve", "--config", str(config),
                                        "--pipeline", "e2e"], env, cwd=project)
    serve.wait_for_output("serving 2 deployment(s)", timeout=90)  # cifar/e2e and cifar-predict/e2e

    # The deployment exists with its cron schedule and bound parameters.
    deadline = time.monotonic() + 60
    while True:
        inspect = procs.run("deployment-inspect", [exe("prefect"), "deployment", "inspect", "cifar/e2e"],
                            client_env(server), timeout=60, check=False)
        if inspect.returncode == 0 or time.monotonic() > deadline or not serve.alive():
            break
        time.sleep(1)
    assert inspect.returncode == 0, inspect.stdout
    assert f"'cron': '{CRON}'" in inspect.stdout, inspect.stdout
    assert "'timezone': 'UTC'" in inspect.stdout, inspect.stdout
    assert "'pipeline': 'e2e'" in inspect.stdout and str(config) in inspect.stdout, inspect.stdout

    # 1) Cold run: downloads, trains, saves, reports.
    first_id, first = trigger(procs, server, "cifar/e2e", "run-1")
    assert first.returncode == 0 and "Completed" in first.stdout, first.stdout
    n_requests = len(requests)
    assert n_requests >= 1, "the cold run never downloaded the archive"

    with prefect_client(server) as client:
        fr1 = client.read_flow_run(first_id)
        assert fr1.state.is_completed(), fr1.state
        assert fr1.name.startswith("e2e · "), fr1.name
        assert {"pipeline:e2e", "model:seed_cnn"} <= set(fr1.tags), fr1.tags
        cold = stage_states(task_states(client, first_id))
        assert all(cold.values()), f"a stage's task run is missing: {cold}"
        assert "Cached" not in cold["train"], f"the cold run did not train: {cold}"
        epochs = [m for m in run_logs(client, first_id) if EPOCH_LINE.match(m)]
        assert len(epochs) == 1, f"the cold run should log exactly 1 epoch: {epochs}"

        # The server's scheduler has queued the cron runs; one active run per deployment.
        dep = client.read_deployment_by_name("cifar/e2e")
        assert dep.global_concurrency_limit and dep.global_concurrency_limit.limit == 1, dep
        upcoming = scheduled_runs(client, dep.id)
        assert upcoming, "the scheduler created no scheduled run for cifar/e2e"
        assert all((t.weekday(), t.hour, t.minute) == (0, 3, 0) for t in upcoming), upcoming

    meta1 = metadata_for(project, "e2e", first_id)
    assert Path(meta1["_dir"], "report.html").is_file()
    assert (project / "artifacts" / "index.html").is_file()
    assert meta1["stages"]["train"]["cache_hit"] is False, meta1["stages"]

    # 2) Two near-simultaneous triggers: both served from the cache, one at a time.
    second = procs.start("run-2", [exe("prefect"), "deployment", "run", "cifar/e2e", "--watch",
                                   "--watch-timeout", "200"], client_env(server))
    third_id, third = trigger(procs, server, "cifar/e2e", "run-3", timeout=240)
    procs_wait(second, 240)
    assert second.popen.returncode == 0, second.output()
    assert third.returncode == 0, third.stdout
    second_id = uuid.UUID(UUID_RE.search(second.output()).group(1))
    assert len(requests) == n_requests, f"cached reruns downloaded again: {requests[n_requests:]}"

    with prefect_client(server) as client:
        reruns = [client.read_flow_run(i) for i in (second_id, third_id)]
        for fr in reruns:
            assert fr.state.is_completed(), fr.state
            states = stage_states(task_states(client, fr.id))
            assert all(states.values()) and all(
                v == ["Cached"] * len(v) for v in states.values()
            ), f"flow run {fr.name}: every stage should be a cache hit: {states}"
            logs = run_logs(client, fr.id)
            assert any(m.startswith("done: ") for m in logs), logs
            assert not [m for m in logs if EPOCH_LINE.match(m)], f"a cached rerun trained: {logs}"
            assert run_seconds(fr) < run_seconds(fr1), (
                f"a cached rerun took {run_seconds(fr):.1f} s, the cold run {run_seconds(fr1):.1f} s")
        # Deployment concurrency limit 1: the runs never overlapped and one of them waited.
        a, b = sorted(reruns, key=lambda fr: fr.start_time)
        assert b.start_time >= a.end_time, (a.start_time, a.end_time, b.start_time, b.end_time)
        # When both runs existed before the first one started, the runner's poll that started
        # the first also found the second, so the limit must have held that one back. (A cached
        # run takes ~0.3 s: when the second trigger lands after the first started, the first
        # may finish before the runner polls again, and nothing needs to wait.)
        waited = [fr.name for fr in reruns
                  if any(s.name == "AwaitingConcurrencySlot" for s in client.read_flow_run_states(fr.id))]
        if b.created < a.start_time:
            assert waited, "both runs were queued together, yet neither waited for the slot"
        else:
            print(f"second trigger landed after the first run started ({b.created} >= "
                  f"{a.start_time}): no overlap to hold back; runs waited: {waited}")

        print("task runs of the reruns:", [task_states(client, fr.id) for fr in reruns])

    # Nothing changed, so nothing new to save: the reruns point at the cold run's folder (the
    # store stage is content-keyed too) or at folders of their own; either way with a report.
    for fr in reruns:
        try:
            meta = metadata_for(project, "e2e", fr.id)
        except AssertionError:
            meta = meta1
        assert Path(meta["_dir"], "report.html").is_file()
    print(f"cold run {run_seconds(fr1):.1f} s; cached reruns "
          + ", ".join(f"{run_seconds(fr):.1f} s" for fr in reruns))
    assert serve.alive(), serve.output()


def test_work_pool_deployment_runs_on_a_worker(server, project, procs):
    config = project / "pipelines.yaml"
    pool = f"e2e-pool-{uuid.uuid4().hex[:6]}"
    procs.run("work-pool-create", [exe("prefect"), "work-pool", "create", pool, "--type", "process"],
              client_env(server), timeout=90)
    worker = procs.start("worker", [exe("prefect"), "worker", "start", "--pool", pool],
                         client_env(server, PREFECT_WORKER_QUERY_SECONDS="1",
                                    PREFECT_WORKER_PREFETCH_SECONDS="5"), cwd=project)
    deployed = procs.run("cifar-deploy", [exe("cifar"), "deploy", "--pool", pool, "--config",
                                          str(config), "--pipeline", "e2e-pool"],
                         client_env(server), timeout=120, cwd=project)
    assert f"registered cifar/e2e-pool to work pool '{pool}'" in deployed.stdout, deployed.stdout

    run_id, res = trigger(procs, server, "cifar/e2e-pool", "run-pool")
    assert res.returncode == 0 and "Completed" in res.stdout, res.stdout
    with prefect_client(server) as client:
        fr = client.read_flow_run(run_id)
        assert fr.state.is_completed(), fr.state
        assert fr.work_pool_name == pool, fr.work_pool_name
    meta = metadata_for(project, "e2e-pool", run_id)
    assert Path(meta["_dir"], "report.html").is_file()
    assert worker.alive(), worker.output()


def procs_wait(proc, timeout):
    try:
        proc.popen.wait(timeout)
    except Exception:
        raise AssertionError(f"{proc.name} still running after {timeout} s:\n{tail(proc.log)}") from None
