"""Zombie runs on a real server (issue 26): a served run whose processes are killed with SIGKILL
is marked Crashed by the shipped automation (automations/notify.yaml, cifar-run-zombie), and
the notification block is notified exactly once.

One `prefect server start` (temporary PREFECT_HOME), the automations installed with the shipped
installer and a webhook block on a loopback server, `cifar serve` of one tiny image-folder
pipeline that trains for many epochs, `prefect deployment run cifar/zombie`. Once the run has
sent two heartbeats (so they come every 30 s, as `cifar serve` sets, and not at Prefect's 180 s
default), the serve command's whole process group (the runner and the flow run's process) is
killed with SIGKILL: a machine dying, as far as the server can tell.

The automation is installed with `--heartbeat-window 45` (shipped: 90) to keep the test short;
the heartbeat period cannot go under Prefect's 30 s. Measured on a 2-core machine (three runs):
kill -> Crashed 44-46 s (the kill comes just after a heartbeat: the window, give or take
Prefect's 5 s proactive evaluation), the notification within the same 0.5 s poll; the test
takes about 105 s, the server's start included. With the shipped 90 s window a killed run is
marked Crashed 60-95 s after the kill (it died 0-30 s after its last heartbeat).

Run with: .venv/bin/pytest -p no:cacheprovider -n0 -m e2e tests/e2e/test_zombies_e2e.py
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from procs import client_env, exe, module_server, wait_until
from test_e2e import UUID_RE, prefect_client
from test_retraining_e2e import Hook, add_images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
WINDOW = 45  # seconds without a heartbeat before the automation marks the run Crashed (shipped: 90)
HEARTBEAT = "prefect.flow-run.heartbeat"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory)


def heartbeats(client, flow_run_id) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = client.read_events(EventFilter(event=EventNameFilter(name=[HEARTBEAT]),
                                          resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"])),
                              limit=50)
    return sorted(page.events, key=lambda e: e.occurred)


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (from /proc; zombies awaiting a reap left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process groups from /proc")
def test_a_killed_run_is_marked_crashed_and_notified_once(server, tmp_path, procs):
    started = time.monotonic()
    hook = Hook()
    try:
        project = tmp_path / "project"
        add_images(project / "images", 0, 3, 2, seed=0)
        (project / "pipelines.yaml").write_text("""\
pipelines:
  zombie:
    dataset: {format: image-folder, source: images}
    model: seed_cnn
    training: {epochs: 5000, batch_size: 8}
""")
        procs.run("block", [sys.executable, "-c",
                            "from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
                            f"B(name='e2e', url='{hook.url}', allow_private_urls=True, "
                            "json_data={'subject': '{{subject}}', 'body': '{{body}}'}).save('e2e-hook')"],
                  client_env(server), timeout=90)
        installed = procs.run("install-automations", [
            sys.executable, str(REPO / "automations" / "install.py"), "--block", "custom-webhook/e2e-hook",
            "--heartbeat-window", str(WINDOW)], client_env(server), timeout=90)
        assert "installed automation 'cifar-run-zombie'" in installed.stdout, installed.stdout

        serve = procs.start("cifar-serve", [exe("cifar"), "serve", "--config", str(project / "pipelines.yaml")],
                            client_env(server, PREFECT_RUNNER_POLL_FREQUENCY="1"), cwd=project)
        serve.wait_for_output("serving 2 deployment(s)", timeout=90)
        assert "HEARTBEAT_FREQUENCY" not in serve.output(), serve.output()  # no warning: 30 s
        wait_until("the deployment", lambda: procs.run(
            "inspect", [exe("prefect"), "deployment", "inspect", "cifar/zombie"], client_env(server),
            timeout=60, check=False).returncode == 0, timeout=60, alive=serve)
        res = procs.run("trigger", [exe("prefect"), "deployment", "run", "cifar/zombie"], client_env(server), timeout=60)
        fid = uuid.UUID(UUID_RE.search(res.stdout).group(1))

        with prefect_client(server) as client:
            # Two heartbeats, a period apart, while the run trains: heartbeats are on, every 30 s.
            wait_until("two heartbeats", lambda: len(heartbeats(client, fid)) >= 2, timeout=120, alive=serve)
            beats = heartbeats(client, fid)
            period = (beats[1].occurred - beats[0].occurred).total_seconds()
            assert 29 <= period <= 40, [e.occurred for e in beats]
            related = {(r["prefect.resource.role"], r.get("prefect.resource.name")) for r in beats[0].related}
            assert ("flow", "cifar") in related and "deployment" in {role for role, _ in related}, related
            assert client.read_flow_run(fid).state.is_running()

            # The machine dies: the runner and the flow run's process, with SIGKILL.
            members = group_members(serve.pid)
            assert len(members) >= 2, members  # cifar serve and the flow run's own process
            os.killpg(serve.pid, signal.SIGKILL)
            killed = time.monotonic()
            serve.popen.wait(10)
            wait_until("the process group to end", lambda: not group_members(serve.pid), timeout=10)
            assert client.read_flow_run(fid).state.is_running()  # nobody left to say otherwise

            wait_until("the run to be marked Crashed", lambda: client.read_flow_run(fid).state.is_crashed(),
                       timeout=WINDOW + 30, interval=0.5)
            crashed = time.monotonic() - killed
            run = client.read_flow_run(fid)
        state = run.state
        assert "stopped sending heartbeats" in state.message and "again" in state.message, state.message

        wait_until("the notification", lambda: hook.posts, timeout=30, interval=0.2)
        notified = time.monotonic() - killed
        time.sleep(10)  # any second notification (cifar-run-failed, a second firing) would come by now
        assert len(hook.posts) == 1, hook.posts
        post = hook.posts[0]
        assert post["subject"] == f"cifar: the run {run.name} of cifar was killed", post
        assert run.name in post["body"] and "stopped sending heartbeats" in post["body"] and "Run it again" in post["body"], post
        print(f"zombie e2e: kill -> Crashed {crashed:.1f} s, -> notification {notified:.1f} s "
              f"(window {WINDOW} s, heartbeat every {period:.0f} s); test {time.monotonic() - started:.0f} s")
        assert crashed <= WINDOW + 15, crashed
    finally:
        hook.close()
