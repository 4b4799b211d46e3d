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
Run with: .venv/bin/pytest -m e2e tests/test_retraining_e2e.py
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

import pytest

from archives import FileServer, build_binary_archive, encode_image
from procs import client_env, exe, module_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

REPO = Path(__file__).resolve().parent.parent
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


def test_retraining_follows_the_data_and_says_so(server, tmp_path, procs):
    from prefect.client.orchestration import SyncPrefectClient

    started = time.monotonic()
    hook = Hook()
    one = build_binary_archive(tmp_path / "one", n_train=40, n_test=20, seed=1)
    two = build_binary_archive(tmp_path / "two", n_train=40, n_test=20, seed=2)
    files = FileServer().__enter__()
    try:
        url = files.add("c.tar.gz", one.path)
        sums = files.add("c.tar.gz.sha256", f"{one.sha256}  c.tar.gz\n".encode())
        project = tmp_path / "project"
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
    report: {{sample_images: 4, confident_mistakes: 2}}
    schedule: {{cron: "{CRON}", timezone: UTC, retrain: always}}
  published:
    description: a mirror's archive and its published checksum
    dataset: {{format: cifar10-binary, source: "{url}", sha256_url: "{sums}", retries: 1}}
    model: seed_cnn
    training: {{epochs: 1, batch_size: 16}}
    report: {{sample_images: 4, confident_mistakes: 2}}
""")
        # The automations, through the shipped installer, with a real webhook notification block.
        procs.run("block", [sys.executable, "-c",
                            "from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
                            f"B(name='e2e', url='{hook.url}', allow_private_urls=True, "
                            "json_data={'subject': '{{subject}}', 'body': '{{body}}'}).save('e2e-hook')"],
                  client_env(server), timeout=90)
        installed = procs.run("install-automations", [sys.executable, str(REPO / "automations" / "install.py"),
                                                      "--block", "custom-webhook/e2e-hook"],
                              client_env(server), timeout=90)
        assert "installed automation 'cifar-run-failed'" in installed.stdout, installed.stdout
        assert "installed automation 'cifar-model-promoted'" in installed.stdout, installed.stdout

        serve = procs.start("cifar-serve", [exe("cifar"), "serve", "--config", str(project / "pipelines.yaml")],
                            client_env(server, PREFECT_RUNNER_POLL_FREQUENCY="1"), cwd=project)
        serve.wait_for_output("serving 4 deployment(s)", timeout=90)

        def run(name, *params, ok=True):
            fid, res = trigger(procs, server, f"cifar/{name.split('-')[0]}", name, *params)
            assert (res.returncode == 0) == ok, res.stdout
            return fid

        def published_runs(out: dict) -> None:
            """The published-checksum pipeline, beside the grow runs (its own deployment):
            the first run downloads; unchanged -> only the .sha256 is fetched; changed -> both."""
            try:
                p1 = run("published-1")
                assert len(files.hits("c.tar.gz")) == 1 and len(files.hits("c.tar.gz.sha256")) == 1
                p2 = run("published-2")
                assert len(files.hits("c.tar.gz")) == 1 and len(files.hits("c.tar.gz.sha256")) == 2
                files.add("c.tar.gz", two.path)
                files.add("c.tar.gz.sha256", f"{two.sha256}  c.tar.gz\n".encode())
                p3 = run("published-3")
                assert len(files.hits("c.tar.gz")) == 2
                out["failed"] = run("published-4", 'overrides={"training.epochs": 0}', ok=False)  # fails
                mp1, mp3 = metadata_for(project, "published", p1), metadata_for(project, "published", p3)
                assert (mp1["dataset"]["archive_sha256"], mp3["dataset"]["archive_sha256"]) == (one.sha256, two.sha256)
                out["ids"] = (p1, p2, p3)
            except BaseException as exc:  # re-raised in the test's thread
                out["error"] = exc

        pub: dict = {}
        published = threading.Thread(target=published_runs, args=(pub,), daemon=True)
        published.start()
        with SyncPrefectClient(api=server[0]) as client:
            # 1) the first run trains and is the champion
            r1 = run("grow-1")
            m1 = metadata_for(project, "grow", r1)
            assert m1["promotion"]["promoted"] and m1["trigger"]["scheduled"] is False
            assert m1["trigger"]["seed"] == 42 and m1["config"]["training"]["seed"] == 42

            # 2) images added: a new dataset, a retrain, the champion re-scored on the new test split
            add_images(project / "images", 100, 2, 1, seed=5)
            r2 = run("grow-2")
            m2 = metadata_for(project, "grow", r2)
            promo = m2["promotion"]
            assert m2["dataset"]["fingerprint"] != m1["dataset"]["fingerprint"]
            assert m2["dataset"]["counts"]["test"] == {c: 3 for c in CLASSES}
            assert promo["champion_before"] == m1["run_id"]
            rescored = promo["champion_rescored"]
            recorded = json.loads(Path(m1["_dir"], "metrics.json").read_text())["test_accuracy"]
            assert rescored["recorded"] == recorded and rescored["images"] == 9
            assert promo["champion_value"] == rescored["value"]
            assert "on the new test split (9 images;" in promo["reason"], promo["reason"]
            html = Path(m2["_dir"], "report.html").read_text()
            assert 'id="changes"' in html and 'id="champion-rescored"' in html
            assert re.search(r"<td>cat</td>\s*<td class=\"n\">3</td><td class=\"n\">5</td><td class=\"n\">\+2</td>", html)

            # 3) nothing changed: nothing trained, and it says so (log, artifact, return value)
            r3 = run("grow-3")
            champion = json.loads((project / "artifacts/grow/registry.json").read_text())["champion"]["run_id"]
            said = f"nothing changed since run {m2['run_id']}; champion {champion} (since "
            msgs = logs_of(client, r3, said)
            assert any(said in m for m in msgs), msgs
            assert not [m for m in msgs if EPOCH_LINE.match(m)], msgs
            assert client.read_flow_run(r3).state.is_completed()
            artifact = client.read_artifacts(limit=50)
            outcome = [a for a in artifact if a.key == "outcome-grow" and a.flow_run_id == r3]
            assert outcome and said in outcome[0].data, [(a.key, a.flow_run_id) for a in artifact]

            # 4) as the schedule starts it (schedule.retrain: always): a challenger with a fresh seed
            r4 = run("grow-4", "scheduled=true")
            m4 = metadata_for(project, "grow", r4)
            assert m4["trigger"]["scheduled"] is True and m4["trigger"]["seed_source"].startswith("fresh")
            assert m4["config"]["training"]["seed"] == m4["trigger"]["seed"] != 42
            assert m4["promotion"]["champion_before"] == champion
            # re-scored only when the champion is run 1 (run 2 was not promoted): other test images
            assert ("new test split" in m4["promotion"]["reason"]) == (champion == m1["run_id"]), m4["promotion"]
            assert f"<code>{m4['trigger']['seed']}</code>" in Path(m4["_dir"], "report.html").read_text()

            published.join(timeout=400)
            assert not published.is_alive(), "the published-checksum runs did not finish"
            if "error" in pub:
                raise pub["error"]
            p1, p2, p3 = pub["ids"]
            r5 = pub["failed"]

            # The scheduler's own runs carry scheduled=True.
            dep = client.read_deployment_by_name("cifar/grow")
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
            deadline = time.monotonic() + 60
            while not (auto := [f for f in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
                    if f.state and f.state.name == "Scheduled"
                    and f.expected_start_time.timestamp() > time.time() + 60]) and time.monotonic() < deadline:
                time.sleep(2)
            assert auto and all(f.parameters.get("scheduled") is True for f in auto), auto

            # Every run's events, read back from the server.
            names = {str(r1): {"cifar.run.completed", "cifar.model.promoted"},
                     str(r3): {"cifar.run.completed", "cifar.run.nothing-changed"},
                     str(r5): {"cifar.run.failed"},
                     str(p1): {"cifar.run.completed", "cifar.model.promoted"},
                     str(p2): {"cifar.run.completed", "cifar.run.nothing-changed"}}
            trained = (str(r2), str(r4), str(p3))
            events = cifar_events(client, lambda ev: all(want <= {e.event for e in ev.get(f, [])}
                                                         for f, want in names.items())
                                  and all("cifar.run.completed" in {e.event for e in ev.get(f, [])} for f in trained))
            for fid, want in names.items():
                assert {e.event for e in events.get(fid, [])} == want, (fid, events.get(fid))
            for fid in trained:
                got = {e.event for e in events.get(fid, [])}
                assert "cifar.run.completed" in got and "cifar.run.nothing-changed" not in got, (fid, got)
            done1 = next(e for e in events[str(r1)] if e.event == "cifar.run.completed")
            assert done1.resource["cifar.pipeline"] == "grow" and done1.resource["cifar.run-id"] == m1["run_id"]
            assert done1.resource["cifar.metric"] == "test_accuracy"
            assert float(done1.resource["cifar.metric-value"]) == pytest.approx(recorded, abs=1e-5)
            failed = events[str(r5)][0]
            assert failed.resource["cifar.pipeline"] == "published" and "training.epochs" in failed.payload["message"]

            # The automations notified the webhook of the promotions and of the failure.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    any("a run of published failed" in p.get("subject", "") for p in hook.posts)
                    and any("grow has a new champion" in p.get("subject", "") for p in hook.posts)):
                time.sleep(1)
            subjects = [p.get("subject", "") for p in hook.posts]
            assert any("a run of published failed" in s for s in subjects), subjects
            assert any("grow has a new champion" in s for s in subjects), subjects
            promoted = next(p for p in hook.posts if "grow has a new champion" in p.get("subject", ""))
            assert m1["run_id"] in promoted["body"] and "test_accuracy" in promoted["body"]
        assert serve.alive(), serve.output()
    finally:
        files.__exit__(None, None, None)
        hook.close()
    print(f"retraining e2e: {time.monotonic() - started:.0f} s")
