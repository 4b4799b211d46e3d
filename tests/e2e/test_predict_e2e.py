"""Batch scoring end to end with real processes: a Prefect server, `cifar run` to train a model
through it, `cifar serve` serving `cifar/<pipeline>` and `cifar-predict/<pipeline>`, and

    prefect deployment run cifar-predict/<pipeline> --param input=FOLDER --param output=OUT --watch

twice: the first run scores the folder (one CSV row per image), the second is served from the
scoring cache. Nothing is mocked; every process is stopped by the fixture that started it.
Run with: .venv/bin/pytest -m e2e tests/e2e/test_predict_e2e.py
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid

import numpy as np
import pytest

from archives import build_binary_archive
from procs import Procs, client_env, exe, prefect_server, tail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PIPELINE = "e2e-predict"
UUID_RE = re.compile(r"UUID:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefect-server")
    (root / "home").mkdir()
    with Procs(root / "logs") as procs, prefect_server(procs, root / "home", timeout=180) as url:
        yield url, root / "home"


def images(folder, n: int = 11):
    """``n`` random 32x32 PNGs and one 120x90 JPEG (resized by the scoring): n + 1 images."""
    from PIL import Image

    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "photo.jpg", quality=90)
    return n + 1


def task_states(server, flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with SyncPrefectClient(api=server[0]) as client:
        assert client.read_flow_run(flow_run_id).state.is_completed()
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def trigger(procs, server, name, **params) -> uuid.UUID:
    argv = [exe("prefect"), "deployment", "run", f"cifar-predict/{PIPELINE}", "--watch", "--watch-timeout", "240"]
    for key, value in params.items():
        argv += ["--param", f"{key}={value}"]
    res = procs.run(name, argv, client_env(server), timeout=280, check=False)
    assert res.returncode == 0 and "Completed" in res.stdout, res.stdout
    return uuid.UUID(UUID_RE.search(res.stdout).group(1))


def test_served_batch_scoring_writes_one_row_per_image_and_caches(server, procs, tmp_path):
    built = build_binary_archive(tmp_path / "archive", n_train=120, n_test=40)
    config = tmp_path / "pipelines.yaml"
    config.write_text(f"""\
data_dir: data
artifacts_dir: artifacts
pipelines:
  {PIPELINE}:
    description: end-to-end test of batch scoring
    dataset: {{format: cifar10-binary, source: {built.path}, sha256: {built.sha256}}}
    training: {{epochs: 1, batch_size: 32}}
    promote: {{min_value: 0}}  # one epoch on a tiny archive may not beat chance
""")
    trained = procs.run("cifar-run", [exe("cifar"), "run", PIPELINE, "--config", str(config)],
                        client_env(server), timeout=300, cwd=tmp_path)
    assert "promoted to champion" in trained.stdout, trained.stdout

    serve = procs.start("cifar-serve", [exe("cifar"), "serve", "--config", str(config), "--pipeline", PIPELINE],
                        client_env(server, PREFECT_RUNNER_POLL_FREQUENCY="1"), cwd=tmp_path)
    serve.wait_for_output("serving 2 deployment(s)", timeout=120)
    assert f"cifar/{PIPELINE}, cifar-predict/{PIPELINE}" in serve.output()

    n = images(tmp_path / "photos")
    first = trigger(procs, server, "predict-1", input=tmp_path / "photos", output=tmp_path / "out1")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out1" / "predictions.csv").read_text())))
    assert len(rows) == n, rows  # one row per input image
    assert sorted(r["file"] for r in rows) == sorted(  # named within the input folder
        [f"img{i:02d}.png" for i in range(n - 1)] + ["photo.jpg"])
    classes = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}
    assert all(r["class"] in classes and 0 < float(r["probability"]) <= 1 and not r["error"] for r in rows)
    assert all(len(r["top_k"].split(";")) == 3 for r in rows)
    page = (tmp_path / "out1" / "predictions.html").read_text()
    assert page.count("<figure>") == n and "data:image/png;base64," in page
    assert task_states(server, first)["score-images"] == "Completed"

    second = trigger(procs, server, "predict-2", input=tmp_path / "photos", output=tmp_path / "out2")
    assert task_states(server, second)["score-images"] == "Cached"  # the same model, the same images
    assert (tmp_path / "out2" / "predictions.csv").read_bytes() == (tmp_path / "out1" / "predictions.csv").read_bytes()

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with SyncPrefectClient(api=server[0]) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"predictions-{PIPELINE}", f"predictions-page-{PIPELINE}"])))
    kinds = {a.key: a for a in sorted(arts, key=lambda a: a.created)}  # each key's latest version
    table = kinds[f"predictions-{PIPELINE}"]
    data = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert table.type == "table" and sum(row["images"] for row in data) == n, data
    assert (tmp_path / "out2" / "predictions.html").as_uri() in str(kinds[f"predictions-page-{PIPELINE}"].data)
    assert serve.alive(), tail(serve.log)
