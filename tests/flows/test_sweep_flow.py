"""The ``cifar-sweep`` flow on real Prefect and real Keras, children as subflows (the temporary
API's way): 2 points x 2 seeds of a tiny pipeline, then the same sweep again, which trains
nothing new. And ``cifar sweep`` in a subprocess, stopped by SIGINT mid-way, then rerun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from archives import build_binary_archive
from procs import descendants, prefect_home, process_alive

REPO = Path(__file__).resolve().parents[2]


def tiny_project(root: Path, n_train: int = 120, n_test: int = 40) -> Path:
    built = build_binary_archive(root, n_train=n_train, n_test=n_test, seed=5)
    cfg = root / "pipelines.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data_dir: data
        artifacts_dir: artifacts
        pipelines:
          tiny:
            dataset: {{format: cifar10-binary, source: {json.dumps(str(built.path))}, sha256: {built.sha256}}}
            training: {{epochs: 1, batch_size: 32, seed: 3}}
            promote: {{min_value: 0}}
    """))
    return cfg


def run_folders(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "artifacts/tiny/runs").iterdir() if not p.name.startswith("."))


def models(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "data/models").iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def sweeps(prefect_engine, tmp_path_factory):
    from flows.sweep import cifar_sweep

    root = tmp_path_factory.mktemp("sweep")
    cfg = tiny_project(root)
    kw = dict(pipeline="tiny", grid=["training.batch_size=16,32"], seeds=2, config=str(cfg))
    s = SimpleNamespace(root=root)
    s.first = cifar_sweep(**kw)
    s.runs_after_first, s.models_after_first = run_folders(root), models(root)
    s.again = cifar_sweep(**kw)
    s.runs_after_again, s.models_after_again = run_folders(root), models(root)
    return s


def test_a_sweep_runs_one_ordinary_run_per_point_and_seed(sweeps):
    first = sweeps.first
    assert [c["state"] for c in first["children"]] == ["Completed"] * 4 and not first["failed"]
    assert [(c["point"], c["seed"]) for c in first["children"]] == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert len(sweeps.runs_after_first) == 4 and len(sweeps.models_after_first) == 4
    for row, batch in zip(first["points"], (16, 32)):
        assert row["point"] == f"training.batch_size={batch}" and row["n"] == 2 and len(row["runs"]) == 2
        accs, vals = [], []
        for run_id in row["runs"]:
            run = sweeps.root / "artifacts/tiny/runs" / run_id
            meta = json.loads((run / "metadata.json").read_text())
            assert meta["training"]["config"]["batch_size"] == batch
            metrics = json.loads((run / "metrics.json").read_text())
            accs.append(metrics["test_accuracy"])
            vals.append(metrics["validation_accuracy"])
            assert metrics["validation"]["protocol"] == "held-out" and metrics["validation_size"] == 12
        assert row["test_accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
        assert row["test_accuracy"]["sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
        assert row["validation_accuracy"]["mean"] == pytest.approx(sum(vals) / 2)
        assert row["validation_protocols"] == ["held-out"]
        assert row["train_seconds"] and row["train_seconds"] > 0


def test_no_child_is_promoted_by_the_sweep(sweeps):
    registry = sweeps.root / "artifacts/tiny/registry.json"
    champion = json.loads(registry.read_text()).get("champion") if registry.exists() else None
    assert champion is None, champion
    for run_id in sweeps.runs_after_first:
        meta = json.loads((sweeps.root / "artifacts/tiny/runs" / run_id / "metadata.json").read_text())
        assert "promote.auto is false" in json.dumps(meta), run_id


def test_a_rerun_of_the_sweep_trains_nothing_new(sweeps):
    assert sweeps.runs_after_again == sweeps.runs_after_first
    assert sweeps.models_after_again == sweeps.models_after_first
    assert [r["runs"] for r in sweeps.again["points"]] == [r["runs"] for r in sweeps.first["points"]]


def test_the_sweep_publishes_a_page_and_a_table_artifact(sweeps):
    from prefect.client.orchestration import get_client

    page = Path(sweeps.again["page"])
    assert page.parent == sweeps.root / "artifacts/sweeps" and page.is_file()
    html = page.read_text()
    assert "training.batch_size=16" in html and "data:image/png;base64," in html
    with get_client(sync_client=True) as client:
        art = client.read_latest_artifacts()
    table = [a for a in art if a.key == "sweep-tiny"]
    assert table and "training.batch_size=32" in json.dumps(table[0].data), [a.key for a in art]


def test_promote_best_promotes_the_best_child_by_validation_and_trains_nothing(sweeps):
    from flows.sweep import cifar_sweep

    out = cifar_sweep(pipeline="tiny", grid=["training.batch_size=16,32"], seeds=2,
                      config=str(sweeps.root / "pipelines.yaml"), promote="best")
    assert run_folders(sweeps.root) == sweeps.runs_after_first
    values = {r: json.loads((sweeps.root / "artifacts/tiny/runs" / r / "metrics.json").read_text())["validation_accuracy"]
              for r in sweeps.runs_after_first}
    registry = json.loads((sweeps.root / "artifacts/tiny/registry.json").read_text())
    champion = registry["champion"]["run_id"]
    assert out["promoted"]["run_id"] == champion and values[champion] == max(values.values())
    assert "`cifar sweep --promote best`" in registry["champion"]["reason"]


def test_a_failed_child_is_reported_and_the_others_still_run(sweeps):
    from flows.sweep import cifar_sweep

    cfg = sweeps.root / "pipelines.yaml"
    right = re.search(r"sha256: ([0-9a-f]{64})", cfg.read_text()).group(1)
    out = cifar_sweep(pipeline="tiny", grid=[f"dataset.sha256={'a' * 64},{right}"], config=str(cfg))
    bad, good = out["points"]
    assert [c["state"] for c in out["children"]] == ["Failed", "Completed"]
    assert bad["n"] == 0 and bad["test_accuracy"]["mean"] is None and bad["runs"] == []
    assert bad["failed"][0]["state"] == "Failed" and "a" * 64 in bad["failed"][0]["message"]
    assert good["n"] == 1 and good["runs"][0] in sweeps.runs_after_first  # cached: seed 3, batch 32
    assert [c["seed"] for c in out["failed"]] == [3]


# --------------------------------------------------------------------------- Ctrl-C
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGINT])
def test_ctrl_c_ends_a_sweep_in_one_line_and_a_rerun_trains_only_the_rest(tmp_path, signum):
    from procs import interruptible

    cfg = tiny_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=prefect_home(tmp_path / "prefect-home"), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "flows.cli", "sweep", "tiny", "--config", str(cfg), "--seeds", "3"]
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=interruptible)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:  # mid-way: the first child is saved
            seen |= descendants(proc.pid)
            if "child 2/3 of the sweep" in log.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        seen |= descendants(proc.pid)
        t0 = time.monotonic()
        os.killpg(proc.pid, signum)
        rc = proc.wait(30)
        took = time.monotonic() - t0
        text = log.read_text()
        assert rc == 128 + signum, text[-3000:]
        assert took < 20, f"took {took:.1f} s to stop"
        assert "Traceback" not in text, text[-3000:]
        lines = [ln for ln in text.splitlines() if ln.startswith("interrupted by")]
        assert len(lines) == 1 and "child 2/3 of the sweep" in lines[0] and "Run the same command again" in lines[0], text[-2000:]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(process_alive(p) for p in seen):
            time.sleep(0.1)
        assert not [p for p in seen if process_alive(p)], "a process of the sweep outlived it"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    trained = models(tmp_path)
    assert len(trained) == 1, trained  # the first child finished before the signal
    again = subprocess.run(argv + ["--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    out = json.loads(again.stdout)
    assert out["points"][0]["n"] == 3 and len(models(tmp_path)) == 3
    assert set(trained) <= set(models(tmp_path))
    assert again.stderr.count("epoch 1/1 ") == 2, again.stderr[-3000:]  # only the two missing ones trained


@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(300)
def test_a_kill_9_mid_training_leaves_no_process_and_no_training_slot(tmp_path):
    """kill -9 to the sweep's process group while a child trains (the machine's training slot
    held): everything it started is gone (its temporary API dies with it) and the slot is free.
    What a rerun does after an interruption is the Ctrl-C test's; after a kill -9 of a run,
    tests/e2e/test_fault_matrix.py's."""
    from tasks.train.slots import holders

    cfg = tiny_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=prefect_home(tmp_path / "prefect-home"), PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "sweep", "tiny", "--config", str(cfg),
                                 "--seeds", "2"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and "training seed_cnn" not in log.read_text():
            seen |= descendants(proc.pid)
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        seen |= descendants(proc.pid)
        assert holders(), "the training child should hold the slot: " + log.read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(process_alive(p) for p in seen):
            time.sleep(0.1)
        assert not [p for p in seen if process_alive(p)], "a process of the sweep outlived its kill -9"
        assert holders() == [], "the training slot outlived the sweep's kill -9"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
