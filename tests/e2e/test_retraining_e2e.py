"""Scheduled retraining through real processes (issue 16): a `prefect server start`, `cifar serve`,
`prefect deployment run ... --watch`, a loopback HTTP server for a published checksum, and a
loopback webhook that the server's automations notify.

    grow       an image folder of tiny PNGs: run 1 trains; images added -> run 2 retrains and the
               champion is re-scored on the new test split; run 3 nothing changed -> trains nothing
               and says so; run 4 as the schedule starts it (retrain: always) -> a fresh seed
    published  (beside grow, in a thread) a cifar10-binary archive followed by its .sha256:
               unchanged -> no archive download; changed -> download and retrain; then a run with
               a bad override fails -> cifar.run.failed

Every event is read back from the server's API, and the automations installed from
automations/notify.yaml must have notified the webhook of the promotion and of the failure.
The runs are done once, in the module-scoped ``story`` fixture, which records what each step
returned and what the server and the webhook saw; each test checks one behaviour from it.
Run with: .venv/bin/pytest -m e2e tests/e2e/test_retraining_e2e.py
"""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from archives import FileServer, build_binary_archive, encode_image
from procs import Procs, client_env, exe, module_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

REPO = Path(__file__).resolve().parents[2]
CRON = "0 3 * * 1"  # never due during the test
CLASSES = ("cat", "dog", "frog")
UUID_RE = re.compile(r"UUID:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
EPOCH_LINE = re.compile(r"^epoch \d+/\d+ ")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5")


class Hook:
    """A loopback webhook that records every POSTed JSON body."""

    def __init__(self):
        self.posts: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.posts.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def add_images(root: Path, start: int, per_train: int, per_test: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_train), ("test", per_test)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(start, start + n):
                img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                (root / split / cls / f"{i:04d}.png").write_bytes(encode_image(img))


def trigger(procs, server, deployment, name, *params: str, timeout=240):
    argv = [exe("prefect"), "deployment", "run", deployment, "--watch", "--watch-timeout", str(timeout - 20)]
    for p in params:
        argv += ["--param", p]
    res = procs.run(name, argv, client_env(server), timeout=timeout, check=False)
    m = UUID_RE.search(res.stdout)
    assert m, f"no flow run id in the output of {' '.join(argv)}:\n{res.stdout}"
    return uuid.UUID(m.group(1)), res


def logs_of(client, flow_run_id, until: str, timeout: float = 30.0) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        msgs = [log.message for log in client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]
        if any(until in m for m in msgs) or time.monotonic() > deadline:
            return msgs
        time.sleep(1)


def metadata_for(project: Path, pipeline: str, flow_run_id) -> dict:
    for meta in sorted((project / "artifacts" / pipeline / "runs").glob("*/metadata.json")):
        data = json.loads(meta.read_text())
        if data.get("flow_run_id") == str(flow_run_id):
            return data | {"_dir": str(meta.parent)}
    raise AssertionError(f"no run folder of {pipeline} for flow run {flow_run_id}")


def cifar_events(client, ready, timeout: float = 60.0) -> dict[str, list]:
    """Every cifar.* event on the server by flow run id, once ``ready(events)`` holds."""
    from prefect.events.filters import EventFilter, EventNameFilter

    deadline = time.monotonic() + timeout
    while True:
        page = client.read_events(EventFilter(event=EventNameFilter(prefix=["cifar."])), limit=50)
        found = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            found += page.events
        events = by_flow_run(found)
        if ready(events) or time.monotonic() > deadline:
            return events
        time.sleep(1)


def by_flow_run(events) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in events:
        for r in e.related:
            if r.get("prefect.resource.role") == "flow-run":
                out.setdefault(r["prefect.resource.id"].removeprefix("prefect.flow-run."), []).append(e)
    return out


@pytest.fixture(scope="module")
def story(server, tmp_path_factory):
    """Both pipelines' runs against one server, as the module docstring tells, and everything the
    tests check afterwards: flow run ids and results, request counts at each step, the champion
    after run 3, run 3's logs and artifacts, the scheduler's own runs, the cifar.* events and the
    webhook's posts. Assertions that a step needs before the next can start stay here (a run
    must have a flow run id); every other check is a test below."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    started = time.monotonic()
    tmp_path = tmp_path_factory.mktemp("retraining")
    procs = Procs(tmp_path / "logs")
    hook = Hook()
    one = build_binary_archive(tmp_path / "one", n_train=40, n_test=20, seed=1)
    two = build_binary_archive(tmp_path / "two", n_train=40, n_test=20, seed=2)
    files = FileServer().__enter__()
    st = SimpleNamespace(project=tmp_path / "project", one=one, two=two, hook=hook, results={})
    try:
        url = files.add("c.tar.gz", one.path)
        sums = files.add("c.tar.gz.sha256", f"{one.sha256}  c.tar.gz\n".encode())
        project = st.project
        add_images(project / "images", 0, 3, 2, seed=0)
        (project / "pipelines.yaml").write_text(f"""\
data_dir: data
artifacts_dir: artifacts
pipelines:
  grow:
    description: a growing image folder
    dataset: {{format: image-folder, source: images}}
    model: seed_cnn
    training: {{epochs: 1, batch_size: 8}}
    promote: {{min_value: 0}}  # one epoch on a few images may not beat chance
    report: {{sample_images: 4, confident_mistakes: 2}}
    schedule: {{cron: "{CRON}", timezone: UTC, retrain: always}}
  published:
    description: a mirror's archive and its published checksum
    dataset: {{format: cifar10-binary, source: "{url}", sha256_url: "{sums}", retries: 1}}
    model: seed_cnn
    training: {{epochs: 1, batch_size: 16}}
    promote: {{min_value: 0}}
    report: {{sample_images: 4, confident_mistakes: 2}}
""")
        # The automations, through the shipped installer, with a real webhook notification block.
        procs.run("block", [sys.executable, "-c",
                            "from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
                            f"B(name='e2e', url='{hook.url}', allow_private_urls=True, "
                            "json_data={'subject': '{{subject}}', 'body': '{{body}}'}).save('e2e-hook')"],
                  client_env(server), timeout=90)
        st.installed = procs.run("install-automations", [sys.executable, str(REPO / "automations" / "install.py"),
                                                         "--block", "custom-webhook/e2e-hook"],
                                 client_env(server), timeout=90)

        serve = procs.start("cifar-serve", [exe("cifar"), "serve", "--config", str(project / "pipelines.yaml")],
                            client_env(server, PREFECT_RUNNER_POLL_FREQUENCY="1"), cwd=project)
        serve.wait_for_output("serving 4 deployment(s)", timeout=90)

        def run(name, *params):
            fid, res = trigger(procs, server, f"cifar/{name.split('-')[0]}", name, *params)
            st.results[name] = res
            return fid

        def published_runs(out: dict) -> None:
            """The published-checksum pipeline, beside the grow runs (its own deployment):
            the first run downloads; unchanged -> only the .sha256 is fetched; changed -> both."""
            try:
                out["p1"] = run("published-1")
                out["hits-1"] = (len(files.hits("c.tar.gz")), len(files.hits("c.tar.gz.sha256")))
                out["p2"] = run("published-2")
                out["hits-2"] = (len(files.hits("c.tar.gz")), len(files.hits("c.tar.gz.sha256")))
                files.add("c.tar.gz", two.path)
                files.add("c.tar.gz.sha256", f"{two.sha256}  c.tar.gz\n".encode())
                out["p3"] = run("published-3")
                out["hits-3"] = len(files.hits("c.tar.gz"))
                out["failed"] = run("published-4", 'overrides={"training.epochs": 0}')  # fails
            except BaseException as exc:  # re-raised in the fixture's thread
                out["error"] = exc

        pub: dict = {}
        published = threading.Thread(target=published_runs, args=(pub,), daemon=True)
        published.start()
        with SyncPrefectClient(api=server[0]) as client:
            # 1) the first run trains and is the champion
            st.r1 = run("grow-1")
            # 2) images added: a new dataset, a retrain, the champion re-scored on the new test split
            add_images(project / "images", 100, 2, 1, seed=5)
            st.r2 = run("grow-2")
            # 3) nothing changed: nothing trained, and it says so (log, artifact, return value)
            st.r3 = run("grow-3")
            st.champion_after_r3 = json.loads((project / "artifacts/grow/registry.json").read_text())["champion"]["run_id"]
            m2 = metadata_for(project, "grow", st.r2)
            st.said = f"nothing changed since run {m2['run_id']}; champion {st.champion_after_r3} (since "
            st.r3_logs = logs_of(client, st.r3, st.said)
            st.r3_state = client.read_flow_run(st.r3).state
            st.artifacts = client.read_artifacts(limit=50)
            # 4) as the schedule starts it (schedule.retrain: always): a challenger with a fresh seed
            st.r4 = run("grow-4", "scheduled=true")

            published.join(timeout=400)
            assert not published.is_alive(), "the published-checksum runs did not finish"
            if "error" in pub:
                raise pub["error"]
            st.pub = pub
            st.p1, st.p2, st.p3, st.r5 = pub["p1"], pub["p2"], pub["p3"], pub["failed"]

            # The scheduler's own runs.
            dep = client.read_deployment_by_name("cifar/grow")
            deadline = time.monotonic() + 60
            while not (auto := [f for f in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
                    if f.state and f.state.name == "Scheduled"
                    and f.expected_start_time.timestamp() > time.time() + 60]) and time.monotonic() < deadline:
                time.sleep(2)
            st.scheduled = auto

            # Every run's events, read back from the server.
            st.event_names = {str(st.r1): {"cifar.run.completed", "cifar.model.promoted"},
                              str(st.r3): {"cifar.run.completed", "cifar.run.nothing-changed"},
                              str(st.r5): {"cifar.run.failed"},
                              str(st.p1): {"cifar.run.completed", "cifar.model.promoted"},
                              str(st.p2): {"cifar.run.completed", "cifar.run.nothing-changed"}}
            st.trained = (str(st.r2), str(st.r4), str(st.p3))
            st.events = cifar_events(client, lambda ev: all(want <= {e.event for e in ev.get(f, [])}
                                                            for f, want in st.event_names.items())
                                     and all("cifar.run.completed" in {e.event for e in ev.get(f, [])}
                                             for f in st.trained))

            # The automations notify the webhook of the promotions and of the failure.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    any("a run of published failed" in p.get("subject", "") for p in hook.posts)
                    and any("grow has a new champion" in p.get("subject", "") for p in hook.posts)):
                time.sleep(1)
        st.serve_alive, st.serve_output = serve.alive(), serve.output()
        yield st
    finally:
        files.__exit__(None, None, None)
        hook.close()
        procs.stop_all()
        print(procs.report())
        print(f"retraining e2e: {time.monotonic() - started:.0f} s")


def _ok(story, name: str) -> None:
    res = story.results[name]
    assert res.returncode == 0, res.stdout


def test_the_shipped_installer_installs_the_automations(story):
    installed = story.installed
    assert "installed automation 'cifar-run-failed'" in installed.stdout, installed.stdout
    assert "installed automation 'cifar-model-promoted'" in installed.stdout, installed.stdout


def test_the_first_run_trains_and_is_the_champion(story):
    _ok(story, "grow-1")
    m1 = metadata_for(story.project, "grow", story.r1)
    assert m1["promotion"]["promoted"] and m1["trigger"]["scheduled"] is False
    assert m1["trigger"]["seed"] == 42 and m1["config"]["training"]["seed"] == 42


def test_added_images_retrain_and_the_champion_is_rescored_on_the_new_test_split(story):
    _ok(story, "grow-2")
    m1, m2 = metadata_for(story.project, "grow", story.r1), metadata_for(story.project, "grow", story.r2)
    promo = m2["promotion"]
    assert m2["dataset"]["fingerprint"] != m1["dataset"]["fingerprint"]
    assert m2["dataset"]["counts"]["test"] == {c: 3 for c in CLASSES}
    assert promo["champion_before"] == m1["run_id"]
    rescored = promo["champion_rescored"]
    recorded = json.loads(Path(m1["_dir"], "metrics.json").read_text())["test_accuracy"]
    assert rescored["recorded"] == recorded and rescored["images"] == 9
    assert promo["champion_value"] == rescored["value"]
    assert "on the new test split (9 images;" in promo["reason"], promo["reason"]


def test_the_retrained_runs_report_shows_what_changed(story):
    m2 = metadata_for(story.project, "grow", story.r2)
    html = Path(m2["_dir"], "report.html").read_text()
    assert 'id="changes"' in html and 'id="champion-rescored"' in html
    assert re.search(r"<td>cat</td>\s*<td class=\"n\">3</td><td class=\"n\">5</td><td class=\"n\">\+2</td>", html)


def test_a_run_with_nothing_changed_trains_nothing_and_says_so(story):
    _ok(story, "grow-3")
    msgs = story.r3_logs
    assert any(story.said in m for m in msgs), msgs
    assert not [m for m in msgs if EPOCH_LINE.match(m)], msgs
    assert story.r3_state.is_completed()
    outcome = [a for a in story.artifacts if a.key == "outcome-grow" and a.flow_run_id == story.r3]
    assert outcome and story.said in outcome[0].data, [(a.key, a.flow_run_id) for a in story.artifacts]


def test_a_scheduled_run_of_an_always_pipeline_trains_with_a_fresh_seed(story):
    _ok(story, "grow-4")
    m1, m4 = metadata_for(story.project, "grow", story.r1), metadata_for(story.project, "grow", story.r4)
    champion = story.champion_after_r3
    assert m4["trigger"]["scheduled"] is True and m4["trigger"]["seed_source"].startswith("fresh")
    assert m4["config"]["training"]["seed"] == m4["trigger"]["seed"] != 42
    assert m4["promotion"]["champion_before"] == champion
    # re-scored only when the champion is run 1 (run 2 was not promoted): other test images
    assert ("new test split" in m4["promotion"]["reason"]) == (champion == m1["run_id"]), m4["promotion"]
    assert f"<code>{m4['trigger']['seed']}</code>" in Path(m4["_dir"], "report.html").read_text()


def test_the_first_run_of_a_published_archive_downloads_it(story):
    _ok(story, "published-1")
    assert story.pub["hits-1"] == (1, 1)


def test_an_unchanged_published_checksum_fetches_only_the_checksum(story):
    _ok(story, "published-2")
    assert story.pub["hits-2"] == (1, 2)


def test_a_changed_published_checksum_downloads_and_retrains(story):
    _ok(story, "published-3")
    assert story.pub["hits-3"] == 2
    mp1, mp3 = metadata_for(story.project, "published", story.p1), metadata_for(story.project, "published", story.p3)
    assert (mp1["dataset"]["archive_sha256"], mp3["dataset"]["archive_sha256"]) == (story.one.sha256, story.two.sha256)


def test_a_run_with_a_bad_override_fails(story):
    res = story.results["published-4"]
    assert res.returncode != 0, res.stdout


def test_the_schedulers_own_runs_carry_scheduled_true(story):
    auto = story.scheduled
    assert auto and all(f.parameters.get("scheduled") is True for f in auto), auto


def test_every_run_emits_the_events_of_what_it_did(story):
    events = story.events
    for fid, want in story.event_names.items():
        assert {e.event for e in events.get(fid, [])} == want, (fid, events.get(fid))
    for fid in story.trained:
        got = {e.event for e in events.get(fid, [])}
        assert "cifar.run.completed" in got and "cifar.run.nothing-changed" not in got, (fid, got)


def test_a_completed_event_names_the_pipeline_the_run_and_the_metric(story):
    m1 = metadata_for(story.project, "grow", story.r1)
    # the promotion metric: the default, accuracy on the held-out validation images
    recorded = json.loads(Path(m1["_dir"], "metrics.json").read_text())["validation_accuracy"]
    done1 = next(e for e in story.events[str(story.r1)] if e.event == "cifar.run.completed")
    assert done1.resource["cifar.pipeline"] == "grow" and done1.resource["cifar.run-id"] == m1["run_id"]
    assert done1.resource["cifar.metric"] == "validation_accuracy"
    assert float(done1.resource["cifar.metric-value"]) == pytest.approx(recorded, abs=1e-5)


def test_a_failed_event_names_the_pipeline_and_the_cause(story):
    failed = story.events[str(story.r5)][0]
    assert failed.resource["cifar.pipeline"] == "published" and "training.epochs" in failed.payload["message"]


def test_the_automations_notify_the_webhook_of_the_promotion_and_the_failure(story):
    m1 = metadata_for(story.project, "grow", story.r1)
    subjects = [p.get("subject", "") for p in story.hook.posts]
    assert any("a run of published failed" in s for s in subjects), subjects
    assert any("grow has a new champion" in s for s in subjects), subjects
    promoted = next(p for p in story.hook.posts if "grow has a new champion" in p.get("subject", ""))
    assert m1["run_id"] in promoted["body"] and "validation_accuracy" in promoted["body"]


def test_cifar_serve_outlives_every_run(story):
    assert story.serve_alive, story.serve_output
