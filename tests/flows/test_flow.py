"""The whole `cifar` flow (flows/cifar.py) on real Prefect and real Keras: tiny archive on
loopback -> validate -> train one epoch -> save -> report. Then the same again, which must repeat
nothing, and once more with --force. The same through `cifar run` in a fresh process, and the
fast recipe's pipeline end to end. Each chain of runs is done once, in a module-scoped fixture;
each test reads the step it is about."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from archives import FileServer, build_binary_archive
from procs import prefect_home

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.engine


def pipelines_yaml(tmp_path: Path, url: str, sha256: str, **extra_dataset) -> Path:
    ds = {"format": "cifar10-binary", "source": url, "sha256": sha256, **extra_dataset}
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data_dir: data
        artifacts_dir: artifacts
        pipelines:
          tiny:
            description: "<script>alert(1)</script> tiny pipeline"
            dataset: {json.dumps(ds)}
            training: {{epochs: 1, batch_size: 16, seed: 1}}
            promote: {{min_delta: 0.0, min_value: 0}}  # 1 epoch on 90 images may not beat chance
    """))
    return cfg


@pytest.fixture()
def served(tmp_path):
    with FileServer() as server:
        built = build_binary_archive(tmp_path, n_train=100, n_test=40, seed=3)
        url = server.add("cifar-10-binary.tar.gz", built.path)
        yield server, built, url


@pytest.fixture(scope="module")
def three_runs(prefect_engine, tmp_path_factory):
    """The flow run three times in one project: first, again (nothing changed), with force=True."""
    from flows.cifar import cifar

    root = tmp_path_factory.mktemp("flow")
    with FileServer() as server:
        built = build_binary_archive(root, n_train=100, n_test=40, seed=3)
        url = server.add("cifar-10-binary.tar.gz", built.path)
        cfg = pipelines_yaml(root, url, built.sha256)
        r = SimpleNamespace(root=root, built=built)
        r.first = cifar(pipeline="tiny", config=str(cfg))
        r.requests_after_first = len(server.hits())

        state = cifar(pipeline="tiny", config=str(cfg), return_state=True)
        r.second, r.second_flow_run_id = state.result(), state.state_details.flow_run_id
        r.requests_after_second = len(server.hits())
        r.runs_after_second = sorted(p.name for p in (root / "artifacts/tiny/runs").iterdir())
        r.registry_after_second = json.loads((root / "artifacts/tiny/registry.json").read_text())

        r.third = cifar(pipeline="tiny", config=str(cfg), force=True)
    return r


def test_the_first_run_writes_a_complete_run_folder(three_runs):
    first, root = three_runs.first, three_runs.root
    run_dir = Path(first["run_dir"])
    assert run_dir.parent == root / "artifacts/tiny/runs"
    for name in ("model.keras", "metrics.json", "metadata.json", "history.json", "report.html"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert first["test_accuracy"] == metrics["test_accuracy"]
    assert first["promoted"] is True and "first run" in first["promotion_reason"]
    assert Path(first["report"]) == run_dir / "report.html"
    assert (root / "artifacts/index.html").is_file()
    assert not any(s["cache_hit"] for s in first["stages"].values())
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["dataset"]["archive_sha256"] == three_runs.built.sha256
    assert meta["training"]["epochs"] == 1 and len(meta["training"]["config"]) > 0
    html = (run_dir / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert three_runs.requests_after_first >= 1


def test_a_run_validates_on_held_out_training_images_and_reports_both_splits(three_runs):
    """The default validation split: 10 of the 100 training images (one per class), never trained
    on (train.json), scored and named in metrics.json and the report; the 40 test images beside."""
    run_dir = Path(three_runs.first["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["validation"]["protocol"] == "held-out" and metrics["validation_size"] == 10
    assert metrics["test_size"] == 40 and 0 <= metrics["validation_accuracy"] <= 1
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["training"]["validation"]["train_images"] == 90
    assert meta["promotion"]["metric"] == "validation_accuracy"
    html = (run_dir / "report.html").read_text()
    assert "10 held-out training images (10% per class, seed 0)" in html


def test_a_rerun_repeats_nothing(three_runs):
    first, second = three_runs.first, three_runs.second
    assert three_runs.requests_after_second == three_runs.requests_after_first, "a rerun made HTTP requests"
    assert {k: v["cache_hit"] for k, v in second["stages"].items()} == {
        k: True for k in first["stages"]
    }
    assert second["run_id"] == first["run_id"]
    assert len(three_runs.runs_after_second) == 1


def test_a_rerun_says_nothing_changed_and_replays_no_promotion(three_runs):
    # it says what happened, and replays no promotion: in its summary, its log and its artifact
    first, second = three_runs.first, three_runs.second
    since = outcome_since(three_runs.registry_after_second["champion"]["promoted_at"])
    said = f"nothing changed since run {first['run_id']}; champion {first['run_id']} (since {since})"
    assert second["outcome"] == "nothing changed" and second["message"] == said
    assert second["promoted"] is False and second["promotion_reason"] is None
    logs, artifact = logs_and_outcome(three_runs.second_flow_run_id, "done: ")
    done = [m for m in logs if m.startswith("done: ")]
    assert done == [f"done: test accuracy {second['test_accuracy'] * 100:.2f}%, {said}; report {second['report']}"], logs
    assert not [m for m in logs if "promot" in m.lower()], logs
    assert said in artifact and "promot" not in artifact.lower(), artifact


def test_force_retrains_into_a_new_run_judged_against_the_champion(three_runs):
    first, third = three_runs.first, three_runs.third
    assert third["run_id"] != first["run_id"]
    assert third["stages"]["train"]["cache_hit"] is False
    assert third["stages"]["download"]["cache_hit"] is True
    assert "champion" in third["promotion_reason"]


def outcome_since(promoted_at: str) -> str:
    from flows.outcomes import since_text

    return since_text(promoted_at)


def logs_and_outcome(flow_run_id, until: str, timeout: float = 30.0) -> tuple[list[str], str]:
    """A flow run's log messages (once one starts with ``until``) and its outcome artifact's text."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = [log.message for log in client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]
            if any(m.startswith(until) for m in logs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return logs, next((a.data for a in arts if (a.key or "").startswith("outcome-")), "")


def test_a_doctored_dataset_stops_the_flow_before_training(prefect_engine, tmp_path):
    from flows.cifar import cifar
    from tasks.prepare.errors import DataValidationError

    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    y_train = (np.arange(60) % 10).astype(np.uint8)
    x_test = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y_test = (np.arange(20) % 9).astype(np.uint8)  # class 9 ('truck') never in test
    with FileServer() as server:
        built = build_binary_archive(tmp_path, arrays=(x_train, y_train, x_test, y_test))
        cfg = pipelines_yaml(tmp_path, server.add("c.tar.gz", built.path), built.sha256)
        with pytest.raises(DataValidationError) as info:
            cifar(pipeline="tiny", config=str(cfg))
    assert "truck" in str(info.value)
    assert not (tmp_path / "data/models").exists() or not any((tmp_path / "data/models").iterdir())
    assert not (tmp_path / "artifacts/tiny").exists()


def _cli(*args, cwd: Path, env_extra: dict | None = None, from_project: bool = False) -> subprocess.CompletedProcess:
    """``cifar ARGS`` in a fresh process with the project ``cwd``'s own PREFECT_HOME.
    ``from_project``: run in ``cwd`` itself (its pipelines.yaml found there) with stdout and stderr
    in one stream, as a terminal shows them."""
    env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": prefect_home(cwd / "prefect-home"),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env_extra or {})}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if from_project else {"capture_output": True}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd if from_project else REPO, env=env,
                          text=True, timeout=300, **streams)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """`cifar run` as `make run` calls it (its own embedded Prefect API, in a fresh process),
    twice in one project: first from the project's folder with its pipelines.yaml found there
    and both streams in one, as a terminal shows them; then again with --config."""
    root = tmp_path_factory.mktemp("cli")
    with FileServer() as server:
        built = build_binary_archive(root, n_train=100, n_test=40, seed=3)
        url = server.add("cifar-10-binary.tar.gz", built.path)
        cfg = pipelines_yaml(root, url, built.sha256)
        first = _cli("run", "tiny", cwd=root, from_project=True)
        again = _cli("run", "tiny", "--config", str(cfg), cwd=root)
    return SimpleNamespace(root=root, first=first, again=again)


def test_cli_run_prints_the_report_last(cli_runs):
    r = cli_runs.first  # stdout and stderr in one stream: nothing comes after the report's path
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Traceback" not in r.stdout
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith("report.html") and Path(last).is_file(), r.stdout[-3000:]
    assert "epoch 1/1 loss" in r.stdout  # the per-epoch line reaches the terminal
    assert "tiny: test accuracy " in r.stdout and "(promoted to champion: first run of this pipeline)" in r.stdout


def test_cli_rerun_says_only_that_nothing_changed(cli_runs):
    # run again: nothing changed, and it says only that (no replayed "promoted to champion")
    r, again, root = cli_runs.first, cli_runs.again, cli_runs.root
    assert r.returncode == 0, r.stdout[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    run_id = Path(last).parent.name
    registry = json.loads((root / "artifacts/tiny/registry.json").read_text())
    said = (f"tiny: nothing changed since run {run_id}; champion {run_id} "
            f"(since {outcome_since(registry['champion']['promoted_at'])})")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    accuracy = json.loads((Path(last).parent / "metrics.json").read_text())["test_accuracy"]
    lines = again.stdout.strip().splitlines()
    assert lines[-4:-2] == [said, f"tiny: test accuracy {accuracy * 100:.2f}% (run {run_id})"], lines[-6:]
    assert lines[-1] == last
    assert "promot" not in (again.stdout + again.stderr).lower(), again.stdout[-3000:] + again.stderr[-3000:]


def test_cli_run_fails_cleanly_on_a_bad_checksum(tmp_path, served):
    _, _, url = served
    wrong = "0" * 64
    (tmp_path / "bad").mkdir()
    bad = pipelines_yaml(tmp_path / "bad", url, wrong)
    r = _cli("run", "tiny", "--config", str(bad), cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    assert wrong in r.stderr and url in r.stderr


# --------------------------------------------------------------------------- the fast recipe's pipeline
@pytest.mark.engine
def test_a_tiny_airbench_pipeline_end_to_end(prefect_engine, tmp_path):
    from archives import build_binary_archive

    from flows.cifar import cifar

    built = build_binary_archive(tmp_path, n_train=80, n_test=30, seed=4)
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data_dir: data
        artifacts_dir: artifacts
        pipelines:
          tiny-fast:
            dataset: {{format: cifar10-binary, source: {json.dumps(str(built.path))}, sha256: {built.sha256}}}
            prepare: {{standardize: true}}
            model: airbench
            training: {{epochs: 1, batch_size: 32, seed: 1, budget: 50,
                        recipe: {{widths: [8, 16, 16], whiten_images: 50, validate: last}}}}
    """))
    first = cifar(pipeline="tiny-fast", config=str(cfg))
    run = Path(first["run_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["tta"]["accuracy"]) == {"off", "mirror", "multi"}
    assert first["test_accuracy"] == metrics["tta"]["accuracy"]["multi"]
    meta = json.loads((run / "metadata.json").read_text())
    facts = meta["training"]["recipe"]
    assert facts["steps_per_epoch"] == 2 and facts["total_steps"] == 2  # 80 // 32, one epoch
    assert meta["model"]["layers"][-1]["class"] == "Softmax"  # committed with probabilities out
    probs = np.load(run / "predictions.npz")["probs"]
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    html = (run / "report.html").read_text()
    assert 'id="recipe"' in html and "Learning rate per optimizer step" in html and "6 views" in html
    assert 'id="time"' in (tmp_path / "artifacts" / "index.html").read_text()
    # training.budget (tasks/train/budget.py): this machine timed for real, the choice recorded and shown
    chosen = meta["training"]["budget"]
    assert chosen["epochs"] == meta["training"]["epochs"] == 1 and chosen["most_epochs"] == 1
    cal = json.loads(Path(chosen["calibration"]).read_text())
    assert cal["recipe"]["train_step"] > 0 and cal["notebook"]["train_step"] > 0 and cal["host"]["cores"] >= 1
    assert 'id="budget"' in html and "1 of at most 1" in html
    again = cifar(pipeline="tiny-fast", config=str(cfg))
    assert again["run_id"] == first["run_id"] and all(s["cache_hit"] for s in again["stages"].values())
