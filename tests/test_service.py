"""Running as a team's service, unit by unit: the training limit's name and fit, the cluster's
processes on this machine, job variables and the `deploy:` block, the config path deployments
carry, the reports server (real HTTP on 127.0.0.1), the artifacts' tables and links, the
non-chief worker's wait for the chief, and TensorBoard event files from a real tiny training
(read back with TensorFlow alone: the viewer is not installed).

The real-server slices (two trainings one after the other, the whole flow on two workers, a
report fetched through `cifar reports`) are in tests/test_service_e2e.py.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from pathlib import Path

import pytest

from flows.cluster import SharedFolderError, require_shared_folders, run_of_model, wait_for_chief
from flows.config import load_settings, parse_set
from flows.jobs import DeployConfig, config_parameter, job_variables, parse_job_variables
from flows.reports_server import Background, ReportsServerError, make_server
from tasks.core.errors import ConfigError
from tasks.core.files import atomic_write_json
from tasks.report.links import flow_run_url
from tasks.report.publishing import (
    ReportsUrlError,
    checks_table,
    per_class_table,
    report_link,
    reports_url,
    runs_table,
)
from tasks.train.config import TrainingError
from tasks.train.devices import local_workers
from tasks.train.slots import check_fits, limit_name

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the training limit
def test_limit_is_per_machine_or_per_pinned_gpu_set():
    assert limit_name("gpu-box-1", "") == "cifar-train:gpu-box-1"
    assert limit_name("gpu-box-1", "-1") == "cifar-train:gpu-box-1"  # no GPU at all: the machine's
    assert limit_name("gpu-box-1", "1") == "cifar-train:gpu-box-1:gpu1"
    assert limit_name("gpu-box-1", "0,1") == "cifar-train:gpu-box-1:gpu0-1"
    assert limit_name("odd/host name", "") == "cifar-train:odd-host-name"  # "/" is banned in Prefect names


def test_cluster_processes_on_this_machine_are_counted():
    both_here = {"cluster": {"worker": ["127.0.0.1:2001", "localhost:2002"]}, "task": {"type": "worker", "index": 1}}
    one_here = {"cluster": {"chief": ["box-a:1"], "worker": ["box-b:1", "box-a:2"]}, "task": {"type": "chief"}}
    assert local_workers(both_here) == 2
    assert local_workers(one_here, ("box-a",)) == 2
    assert local_workers(one_here, ("box-c",)) == 1  # none listed here: this process still is
    assert local_workers(None) == 1


def test_a_cluster_larger_than_the_limit_is_refused_not_left_waiting():
    check_fits("cifar-train:h", 2, 2)
    with pytest.raises(TrainingError) as err:
        check_fits("cifar-train:h", 1, 2)
    text = str(err.value)
    assert "2 workers" in text and "slot cifar-train:h allows 1" in text and "train_slots: 2" in text
    with pytest.raises(TrainingError, match="has 0 slots"):
        check_fits("cifar-train:h", 0, 1)


# --------------------------------------------------------------------------- deployments
def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(body)
    return path


def test_deploy_block_and_train_slots_are_read_and_checked(tmp_path):
    path = write_config(tmp_path, """\
train_slots: 2
pipelines:
  a:
    deploy:
      env: {CUDA_VISIBLE_DEVICES: "0", TF_CONFIG: '{"cluster": {}}'}
      work_queue: gpu
      job_variables: {stream_output: false}
  b: {}
""")
    settings = load_settings(path)
    assert settings.train_slots == 2
    assert settings.pipelines["a"].deploy == DeployConfig(
        env={"CUDA_VISIBLE_DEVICES": "0", "TF_CONFIG": '{"cluster": {}}'}, work_queue="gpu",
        job_variables={"stream_output": False})
    assert settings.pipelines["b"].deploy == DeployConfig()
    assert load_settings(path, {"train_slots": 3}).train_slots == 3

    bad = write_config(tmp_path, """\
train_slots: 0
pipelines:
  a:
    deploy: {env: {X: 1}, job_variables: {env: {}}, queue: q}
""")
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    problems = err.value.problems
    assert any(p.startswith("train_slots: ") and "greater than or equal to 1" in p for p in problems), problems
    assert any(p.startswith("pipelines.a.deploy.queue: unknown key") and "work_queue" in p for p in problems), problems
    assert "pipelines.a.deploy.env.X: expected a string, got 1" in problems, problems  # YAML: quote it
    assert "pipelines.a.deploy.job_variables.env: set it as deploy.env, not under job_variables" in problems


def test_job_variables_merge_block_then_command_line():
    block = DeployConfig(env={"CUDA_VISIBLE_DEVICES": "0", "A": "1"}, image="img:1",
                         job_variables={"stream_output": False})
    cli = parse_job_variables(['env.TF_CONFIG={"cluster": {"worker": ["h:1"]}}', "env.A=2", "stream_output=true"])
    assert cli == {"env": {"TF_CONFIG": '{"cluster": {"worker": ["h:1"]}}', "A": "2"}, "stream_output": True}
    assert job_variables(block, cli) == {
        "stream_output": True, "image": "img:1",
        "env": {"CUDA_VISIBLE_DEVICES": "0", "A": "2", "TF_CONFIG": '{"cluster": {"worker": ["h:1"]}}'}}
    assert job_variables(DeployConfig()) == {}
    with pytest.raises(ConfigError) as err:
        parse_job_variables(["novalue", "env.=x"])
    assert len(err.value.problems) == 2 and "--job-variable 'novalue'" in err.value.problems[0]


def test_deployments_carry_the_config_relative_to_the_code(tmp_path):
    assert config_parameter(ROOT / "pipelines.yaml", ROOT) == ("pipelines.yaml", None)
    assert config_parameter(ROOT / "bench" / "x.yaml", ROOT) == ("bench/x.yaml", None)
    outside, warning = config_parameter(tmp_path / "pipelines.yaml", ROOT)
    assert outside == str((tmp_path / "pipelines.yaml").resolve())
    assert str(tmp_path) in warning and "absolute path" in warning


def test_deployment_kwargs_take_the_relative_config():
    from flows.deploy import deployment_kwargs

    settings = load_settings(ROOT / "pipelines.yaml")
    kwargs = deployment_kwargs(settings.pipelines["smoke"], Path(config_parameter(settings.config_path, ROOT)[0]))
    assert kwargs["parameters"] == {"pipeline": "smoke", "config": "pipelines.yaml"}


def test_serve_and_deploy_carry_set_overrides_into_both_flows_parameters():
    """`cifar serve --set training.epochs=1` used to validate the override and then drop it: the
    deployments started from the file alone. Both flows' real parameter validation takes them."""
    from flows.cifar import cifar
    from flows.deploy import deployment_kwargs, predict_deployment_kwargs
    from flows.predict import cifar_predict

    sets = parse_set(["training.epochs=1", "artifacts_dir=/shared/artifacts"])
    settings = load_settings(ROOT / "pipelines.yaml", sets)
    assert settings.pipelines["smoke"].training.epochs == 1
    train = deployment_kwargs(settings.pipelines["smoke"], Path("pipelines.yaml"), sets)["parameters"]
    predict = predict_deployment_kwargs(settings.pipelines["smoke"], Path("pipelines.yaml"), sets)["parameters"]
    assert train == predict == {"pipeline": "smoke", "config": "pipelines.yaml",
                                "overrides": {"training.epochs": 1, "artifacts_dir": "/shared/artifacts"}}
    assert cifar.validate_parameters(train)["overrides"] == sets
    assert cifar_predict.validate_parameters({**predict, "input": "x"})["overrides"] == sets
    # what the flow run then loads: the same settings the serving command validated
    run_settings = load_settings(ROOT / train["config"], train["overrides"], "smoke")
    assert run_settings.pipelines["smoke"].training.epochs == 1
    assert str(run_settings.artifacts_dir) == "/shared/artifacts"
    assert "overrides" not in deployment_kwargs(settings.pipelines["smoke"], Path("pipelines.yaml"))["parameters"]


# --------------------------------------------------------------------------- reports server
def fetch(url: str, method: str = "GET", path: str = "/") -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=b"x" if method in ("POST", "PUT") else None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_reports_server_serves_files_read_only_and_never_outside(tmp_path):
    root = tmp_path / "artifacts"
    (root / "p" / "runs" / "r1").mkdir(parents=True)
    (root / "index.html").write_text("<h1>index</h1>")
    (root / "p" / "runs" / "r1" / "report.html").write_text("<h1>report r1</h1>")
    (tmp_path / "secret.txt").write_text("not yours")
    (root / "p" / "leak").symlink_to(tmp_path / "secret.txt")
    before = sorted(p.name for p in root.rglob("*"))
    with Background(root) as url:
        assert url.startswith("http://127.0.0.1:")
        assert fetch(url, path="/index.html") == (200, b"<h1>index</h1>")
        assert fetch(url, path="/p/runs/r1/report.html") == (200, b"<h1>report r1</h1>")
        assert fetch(url, "HEAD", "/index.html")[0] == 200
        for escape in ("/../secret.txt", "/p/../../secret.txt", "/%2e%2e/secret.txt", "/p/leak"):
            status, body = fetch(url, path=escape)
            assert status == 404 and b"not yours" not in body, (escape, status, body)
        for method in ("POST", "PUT", "DELETE"):
            assert fetch(url, method, "/index.html")[0] == 405, method
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written
    assert (root / "index.html").read_text() == "<h1>index</h1>"


def test_reports_server_refuses_a_missing_folder_and_a_busy_port(tmp_path):
    with pytest.raises(ReportsServerError, match="is not a folder"):
        make_server(tmp_path / "nope", 0)
    with Background(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ReportsServerError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            make_server(tmp_path, port)


# --------------------------------------------------------------------------- artifacts' content
def make_run(artifacts: Path, pipeline: str, run_id: str, acc: float, *, train_key="k", sha="s",
             created="2026-12-01T10:00:00") -> Path:
    run = artifacts / pipeline / "runs" / run_id
    run.mkdir(parents=True)
    atomic_write_json(run / "metrics.json", {"test_accuracy": acc, "per_class": [
        {"class": "cat", "precision": 0.123456, "recall": 0.5, "accuracy": 0.5, "support": 4}]})
    atomic_write_json(run / "metadata.json", {
        "pipeline": pipeline, "run_id": run_id, "created_at": created,
        "cache_keys": {"train": train_key}, "files": {"model.keras": sha},
        "validation": {"checks": [{"name": "labels in range", "passed": True, "detail": "0..9"},
                                  {"name": "no NaN", "passed": False, "detail": "3 rows"}]}})
    return run


def test_tables_mark_the_champion_and_this_run(tmp_path):
    arts = tmp_path / "artifacts"
    make_run(arts, "p", "20261201-100000-aaaaaa", 0.5, created="2026-12-01T10:00:00")
    run = make_run(arts, "p", "20261201-110000-bbbbbb", 0.25, created="2026-12-01T11:00:00")
    atomic_write_json(arts / "p" / "registry.json", {"champion": {"run_id": "20261201-100000-aaaaaa"}})
    meta = json.loads((run / "metadata.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())

    assert per_class_table(metrics) == [
        {"class": "cat", "precision": 0.1235, "recall": 0.5, "accuracy": 0.5, "support": 4}]
    assert checks_table(meta) == [{"check": "labels in range", "passed": True, "detail": "0..9"},
                                  {"check": "no NaN", "passed": False, "detail": "3 rows"}]
    rows = runs_table(arts, "p", "20261201-110000-bbbbbb", "http://127.0.0.1:9")
    assert [(r["run"], r["test_accuracy"], r["champion"], r["this run"]) for r in rows] == [
        ("20261201-110000-bbbbbb", 0.25, "", "◀"), ("20261201-100000-aaaaaa", 0.5, "★ champion", "")]
    assert rows[0]["report"] == "http://127.0.0.1:9/p/runs/20261201-110000-bbbbbb/report.html"


def test_links_point_at_the_reports_server_when_set(tmp_path):
    report = tmp_path / "artifacts" / "p" / "runs" / "r1" / "report.html"
    meta = {"pipeline": "p", "run_id": "r1"}
    assert reports_url({}) is None
    assert report_link(report, tmp_path / "artifacts", meta, None) == report.as_uri()
    base = reports_url({"CIFAR_REPORTS_URL": "http://127.0.0.1:8765/"})
    assert base == "http://127.0.0.1:8765"
    assert report_link(report, tmp_path / "artifacts", meta, base) == "http://127.0.0.1:8765/p/runs/r1/report.html"
    with pytest.raises(ReportsUrlError, match="CIFAR_REPORTS_URL='file:///x'.*cifar reports"):
        reports_url({"CIFAR_REPORTS_URL": "file:///x"})
    assert flow_run_url("abc", "http://127.0.0.1:4200/") == "http://127.0.0.1:4200/runs/flow-run/abc"
    assert flow_run_url(None, "http://127.0.0.1:4200") is None
    assert flow_run_url("abc", "") is None


# --------------------------------------------------------------------------- non-chief workers
def test_a_worker_waits_for_the_chiefs_commits_and_points_at_its_run(tmp_path):
    data, arts = tmp_path / "data", tmp_path / "artifacts"
    model = data / "models" / "key1"
    model.mkdir(parents=True)
    make_run(arts, "p", "old-run", 0.1, train_key="key1", sha="old")  # an earlier model of that key
    started = time.time()

    def chief():  # commits the model, then publishes its run
        time.sleep(0.5)
        atomic_write_json(model / "train.json", {"model_sha256": "new"})
        time.sleep(0.5)
        make_run(arts, "p", "new-run", 0.3, train_key="key1", sha="new")

    t = threading.Thread(target=chief)
    t.start()
    got = wait_for_chief("worker-1", str(model), "key1", "p", str(data), str(arts), since=started,
                         model_wait=20, run_wait=20, interval=0.1)
    t.join()
    assert got == {"run_id": "new-run", "path": str(arts / "p" / "runs" / "new-run"),
                   "report": str(arts / "p" / "runs" / "new-run" / "report.html")}
    assert run_of_model(arts, "key1", "old") == arts / "p" / "runs" / "old-run"
    make_run(arts, "q", "other-pipeline", 0.3, train_key="key2", sha="x")  # the chief's, deployed as q
    assert run_of_model(arts, "key2", "x") == arts / "q" / "runs" / "other-pipeline"


def test_a_deployments_run_never_creates_the_shared_folders(tmp_path):
    (tmp_path / "data").mkdir()
    require_shared_folders(tmp_path / "data", tmp_path / "nope", None)  # `cifar run`: its own folders
    with pytest.raises(SharedFolderError) as err:
        require_shared_folders(tmp_path / "data", tmp_path / "nope", "a-deployment-id")
    assert f"cannot see artifacts_dir {tmp_path / 'nope'}: the folder does not exist here" in str(err.value)
    assert "mount the shared folder" in str(err.value) and not (tmp_path / "nope").exists()
    (tmp_path / "nope").mkdir()
    require_shared_folders(tmp_path / "data", tmp_path / "nope", "a-deployment-id")


def test_a_worker_that_cannot_see_the_shared_folders_says_which(tmp_path):
    data, arts = tmp_path / "data", tmp_path / "artifacts"
    model = data / "models" / "key1"
    with pytest.raises(SharedFolderError) as err:
        wait_for_chief("worker-1", str(model), "key1", "p", str(data), str(arts),
                       model_wait=0.3, run_wait=0.3, interval=0.1)
    assert f"cannot see the chief's data folder ({data})" in str(err.value)
    model.mkdir(parents=True)
    atomic_write_json(model / "train.json", {"model_sha256": "new"})
    with pytest.raises(SharedFolderError) as err:
        wait_for_chief("worker-1", str(model), "key1", "p", str(data), str(arts),
                       model_wait=0.3, run_wait=0.3, interval=0.1)
    assert f"cannot see the chief's artifacts folder ({arts})" in str(err.value)


# --------------------------------------------------------------------------- TensorBoard
def test_training_writes_tensorboard_logs_readable_without_the_viewer(tmp_path):
    from test_train import make_cache

    from tasks.prepare.config import PrepareConfig
    from tasks.train.board import copy_logs, read_events
    from tasks.train.config import TrainingConfig
    from tasks.train.run import run_training

    with pytest.raises(ImportError):  # the viewer is an optional extra; none of this needs it
        __import__("tensorboard")
    rec = run_training(make_cache(tmp_path), None, "seed_cnn", TrainingConfig(epochs=2, batch_size=16),
                       PrepareConfig(), tmp_path)
    logs = Path(rec.path) / "tensorboard"
    assert not (tmp_path / "models" / f"{rec.key}.work").exists()  # moved out at the commit
    events = read_events(logs)
    history = json.loads((Path(rec.path) / "history.json").read_text())["epochs"]
    for split, prefix in (("train", ""), ("validation", "val_")):
        got = events[split]
        assert [s for s, _ in got["epoch_loss"]] == [0, 1]
        assert [round(v, 5) for _, v in got["epoch_loss"]] == [round(h[f"{prefix}loss"], 5) for h in history]
        assert [round(v, 5) for _, v in got["epoch_accuracy"]] == [round(h[f"{prefix}accuracy"], 5) for h in history]
    lr = [v for _, v in events["train"]["epoch_learning_rate"]]
    assert len(lr) == 2 and 0 < lr[1] < lr[0] <= 1e-4  # InverseTimeDecay from 1e-4
    assert events["graphs"]["keras_model"] == 1

    run = tmp_path / "artifacts" / "p" / "runs" / "r1"
    run.mkdir(parents=True)
    assert copy_logs(rec.path, run) == run / "tensorboard"
    assert sorted(p.relative_to(run / "tensorboard") for p in (run / "tensorboard").rglob("*.v2")) == sorted(
        p.relative_to(logs) for p in logs.rglob("*.v2"))
    assert copy_logs(rec.path, run) == run / "tensorboard"  # again: kept as it is
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    assert copy_logs(tmp_path / "no-model", run) is None
    assert os.environ.get("TF_CONFIG") is None
