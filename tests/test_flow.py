"""The whole `cifar` flow on real Prefect and real Keras: tiny archive on loopback -> validate ->
train one epoch -> save -> report. Then the same again, which must repeat nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from archives import FileServer, build_binary_archive

REPO = Path(__file__).resolve().parent.parent
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
            promote: {{min_delta: 0.0}}
    """))
    return cfg


@pytest.fixture()
def served(tmp_path):
    with FileServer() as server:
        built = build_binary_archive(tmp_path, n_train=100, n_test=40, seed=3)
        url = server.add("cifar-10-binary.tar.gz", built.path)
        yield server, built, url


def test_whole_flow_then_a_rerun_that_repeats_nothing(prefect_engine, tmp_path, served):
    from flows.cifar import cifar

    server, built, url = served
    cfg = pipelines_yaml(tmp_path, url, built.sha256)

    first = cifar(pipeline="tiny", config=str(cfg))
    run_dir = Path(first["run_dir"])
    assert run_dir.parent == tmp_path / "artifacts/tiny/runs"
    for name in ("model.keras", "metrics.json", "metadata.json", "history.json", "report.html"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert first["test_accuracy"] == metrics["test_accuracy"]
    assert first["promoted"] is True and "first run" in first["promotion_reason"]
    assert Path(first["report"]) == run_dir / "report.html"
    assert (tmp_path / "artifacts/index.html").is_file()
    assert not any(s["cache_hit"] for s in first["stages"].values())
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["dataset"]["archive_sha256"] == built.sha256
    assert meta["training"]["epochs"] == 1 and len(meta["training"]["config"]) > 0
    html = (run_dir / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    requests = len(server.hits())
    assert requests >= 1

    second = cifar(pipeline="tiny", config=str(cfg))
    assert len(server.hits()) == requests, "a rerun made HTTP requests"
    assert {k: v["cache_hit"] for k, v in second["stages"].items()} == {
        k: True for k in first["stages"]
    }
    assert second["run_id"] == first["run_id"]
    assert len(list((tmp_path / "artifacts/tiny/runs").iterdir())) == 1

    # --force retrains: a new model, a new run, judged against the champion
    third = cifar(pipeline="tiny", config=str(cfg), force=True)
    assert third["run_id"] != first["run_id"]
    assert third["stages"]["train"]["cache_hit"] is False
    assert third["stages"]["download"]["cache_hit"] is True
    assert "champion" in third["promotion_reason"]


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


def _cli(*args, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": str(cwd / "prefect-home"),
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_run_prints_the_report_last_and_fails_cleanly_on_a_bad_checksum(tmp_path, served):
    """`cifar run` as `make run` calls it: its own embedded Prefect API, in a fresh process."""
    server, built, url = served
    cfg = pipelines_yaml(tmp_path, url, built.sha256)
    r = _cli("run", "tiny", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith("report.html") and Path(last).is_file()
    assert "epoch 1/1 loss" in r.stdout + r.stderr  # the per-epoch line reaches the terminal

    wrong = "0" * 64
    bad = pipelines_yaml(tmp_path / "bad" if (tmp_path / "bad").mkdir() is None else tmp_path, url, wrong)
    r = _cli("run", "tiny", "--config", str(bad), cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    assert wrong in r.stderr and url in r.stderr
