"""Faults as the terminal shows them (issue 15): an out-of-range --set, damaged run files and an
unknown pipeline under `cifar runs` / `cifar report`, what `cifar run` prints last, what a
kill -9 of it leaves behind, and a Prefect API that does not answer: one paragraph, never a
traceback. The real `cifar` command in subprocesses, with the embedded Prefect server it starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from procs import descendants, prefect_home, process_alive
from runfolders import damage, set_key, two_pipelines

pytestmark = pytest.mark.subprocess  # every test here runs the cifar command: not in make test-fast

REPO = Path(__file__).resolve().parents[2]
CIFAR = [sys.executable, "-m", "flows.cli"]


def cifar(*args: str, cwd: Path = REPO, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": ""}
    return subprocess.run([*CIFAR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# =========================================================================== 1. settings
def test_cifar_check_refuses_an_out_of_range_set_with_exit_2(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("pipelines: {a: {training: {optimizer: {name: sgd, momentum: 0.9}}}}\n")
    r = cifar("check", "--config", str(ok), "--set", "training.optimizer.momentum=1.5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pipelines.a.training.optimizer.momentum: must be within [0, 1), got 1.5" in r.stderr


# =========================================================================== 2. damaged run files
@pytest.fixture
def damaged(tmp_path):
    """Two pipelines (tests/runfolders.py): alpha's registry cut short, beta's run's metadata
    without created_at."""
    env = two_pipelines(tmp_path)
    env.registry = damage(env, "alpha", "registry.json", b'{"champion": ')
    env.metadata = damage(env, "beta", "metadata.json", set_key("created_at", None))
    return env


def test_cifar_runs_lists_the_intact_runs_and_names_the_damaged_files(damaged):
    env = damaged
    r = cifar("runs", "--config", str(env.cfg))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert all(d.name in r.stdout for d in env.alpha) and env.beta[0].name not in r.stdout
    assert str(env.registry) in r.stderr and str(env.metadata) in r.stderr and "created_at" in r.stderr


def test_cifar_report_of_a_damaged_run_is_one_paragraph_not_a_traceback(damaged):
    env = damaged
    r = cifar("report", f"beta/{env.beta[0].name}", "--config", str(env.cfg))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert str(env.metadata) in r.stderr and "created_at: expected a string, got None" in r.stderr


def test_cifar_report_of_an_intact_run_beside_damaged_files_still_works(damaged):
    env = damaged
    r = cifar("report", f"alpha/{env.alpha[0].name}", "--config", str(env.cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(env.alpha[0] / "report.html")


def test_runs_of_a_pipeline_that_does_not_exist_is_exit_2_naming_those_that_do(tmp_path):
    env = two_pipelines(tmp_path)
    r = cifar("runs", "nope", "--config", str(env.cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no pipeline named 'nope'; pipelines in this file: alpha, beta" in r.stderr
    r = cifar("runs", "../artifacts/alpha", "--config", str(env.cfg))
    assert r.returncode == 2 and "no pipeline named '../artifacts/alpha'" in r.stderr
    # a pipeline taken out of the file keeps its runs listable, and is named when mistyped
    env.cfg.write_text("artifacts_dir: artifacts\npipelines: {alpha: {}}\n")
    r = cifar("runs", "beta", "--config", str(env.cfg))
    assert r.returncode == 0 and env.beta[0].name in r.stdout, r.stderr
    r = cifar("runs", "bta", "--config", str(env.cfg))
    assert r.returncode == 2 and "with runs under" in r.stderr and "beta" in r.stderr


# =========================================================================== 3. what the user sees
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny local cifar10-binary archive, a pipelines.yaml naming it, and a PREFECT_HOME."""
    from archives import build_binary_archive

    root = tmp_path_factory.mktemp("cli-project")
    built = build_binary_archive(root, n_train=60, n_test=20, seed=1)
    (root / "pipelines.yaml").write_text(textwrap.dedent(f"""
        pipelines:
          tiny:
            dataset: {{format: cifar10-binary, source: {built.path}}}
            training: {{epochs: 1, batch_size: 16}}
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=prefect_home(root / "prefect-home"), PYTHONUNBUFFERED="1")
    return root, env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(500)
def test_a_kill_9_of_cifar_run_leaves_nothing_running(project):
    root, env = project
    log = root / "killed-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*CIFAR, "run", "tiny", "--force"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            seen |= descendants(proc.pid)
            if "Beginning flow run" in log.read_text() and seen:
                break
            time.sleep(0.2)
        assert seen and proc.poll() is None, log.read_text()[-3000:]
        seen |= descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: the flow has begun, its server is up
        proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(process_alive(p) for p in seen):
            time.sleep(0.1)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
                for p in seen if process_alive(p)}
        assert not left, f"still running after cifar run was killed: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)


def test_an_unreachable_prefect_api_is_one_paragraph_before_any_flow_starts(project):
    """Found in the adversarial pass: PREFECT_API_URL naming a port nobody listens on ended in
    Prefect's RuntimeError traceback from inside the flow call."""
    import socket

    root, env = project
    with socket.socket() as s:  # a port that was free a moment ago: nothing answers there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([*CIFAR, "run", "tiny"], cwd=root, text=True, capture_output=True, timeout=180,
                       env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"PREFECT_API_URL=http://127.0.0.1:{port}/api does not answer" in r.stderr
    assert "prefect server start" in r.stderr
