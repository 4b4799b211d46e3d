"""Running as a team's service, unit by unit (flows/jobs.py, flows/deploy.py,
flows/reports_server.py, flows/cluster.py): job variables and the `deploy:` block, the config
path deployments carry, the reports server (real HTTP on 127.0.0.1), and the non-chief worker's
wait for the chief. The training limit is tested in tests/train/test_slots.py, the artifacts'
tables and links in tests/report/test_publishing.py, TensorBoard files in
tests/train/test_tensorboard.py.

The real-server slices (two trainings one after the other, the whole flow on two workers, a
report fetched through `cifar reports`) are in tests/e2e/test_service_e2e.py.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import pytest

from runfolders import stub_run

from flows.cluster import SharedFolderError, require_shared_folders, run_of_model, wait_for_chief
from flows.config import load_settings, parse_set
from flows.jobs import DeployConfig, config_parameter, job_variables, parse_job_variables
from flows.reports_server import Background, ReportsServerError, make_server
from tasks.core.errors import ConfigError
from tasks.core.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- deployments
def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(body)
    return path


def test_the_deploy_block_and_train_slots_are_read(tmp_path):
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


def test_the_deploy_block_and_train_slots_are_checked(tmp_path):
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


def _reports_folder(tmp_path: Path) -> Path:
    """An artifacts folder with an index, a report, and a link to a file outside it."""
    root = tmp_path / "artifacts"
    (root / "p" / "runs" / "r1").mkdir(parents=True)
    (root / "index.html").write_text("<h1>index</h1>")
    (root / "p" / "runs" / "r1" / "report.html").write_text("<h1>report r1</h1>")
    (tmp_path / "secret.txt").write_text("not yours")
    (root / "p" / "leak").symlink_to(tmp_path / "secret.txt")
    return root


def test_reports_server_serves_the_files(tmp_path):
    root = _reports_folder(tmp_path)
    with Background(root) as url:
        assert url.startswith("http://127.0.0.1:")
        assert fetch(url, path="/index.html") == (200, b"<h1>index</h1>")
        assert fetch(url, path="/p/runs/r1/report.html") == (200, b"<h1>report r1</h1>")
        assert fetch(url, "HEAD", "/index.html")[0] == 200


def test_reports_server_never_serves_outside_its_folder(tmp_path):
    root = _reports_folder(tmp_path)
    with Background(root) as url:
        for escape in ("/../secret.txt", "/p/../../secret.txt", "/%2e%2e/secret.txt", "/p/leak"):
            status, body = fetch(url, path=escape)
            assert status == 404 and b"not yours" not in body, (escape, status, body)


def test_reports_server_is_read_only(tmp_path):
    root = _reports_folder(tmp_path)
    before = sorted(p.name for p in root.rglob("*"))
    with Background(root) as url:
        for method in ("POST", "PUT", "DELETE"):
            assert fetch(url, method, "/index.html")[0] == 405, method
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written
    assert (root / "index.html").read_text() == "<h1>index</h1>"


def test_reports_server_refuses_a_missing_folder(tmp_path):
    with pytest.raises(ReportsServerError, match="is not a folder"):
        make_server(tmp_path / "nope", 0)


def test_reports_server_refuses_a_busy_port(tmp_path):
    with Background(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ReportsServerError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            make_server(tmp_path, port)


# --------------------------------------------------------------------------- non-chief workers
def test_a_worker_waits_for_the_chiefs_commits_and_points_at_its_run(tmp_path):
    data, arts = tmp_path / "data", tmp_path / "artifacts"
    model = data / "models" / "key1"
    model.mkdir(parents=True)
    stub_run(arts, "p", "old-run", 0.1, train_key="key1", sha="old")  # an earlier model of that key
    started = time.time()

    def chief():  # commits the model, then publishes its run
        time.sleep(0.5)
        atomic_write_json(model / "train.json", {"model_sha256": "new"})
        time.sleep(0.5)
        stub_run(arts, "p", "new-run", 0.3, train_key="key1", sha="new")

    t = threading.Thread(target=chief)
    t.start()
    got = wait_for_chief("worker-1", str(model), "key1", "p", str(data), str(arts), since=started,
                         model_wait=20, run_wait=20, interval=0.1)
    t.join()
    assert got == {"run_id": "new-run", "path": str(arts / "p" / "runs" / "new-run"),
                   "report": str(arts / "p" / "runs" / "new-run" / "report.html")}


def test_the_run_of_a_model_is_found_by_its_key_and_checksum_in_any_pipeline(tmp_path):
    arts = tmp_path / "artifacts"
    stub_run(arts, "p", "old-run", 0.1, train_key="key1", sha="old")
    stub_run(arts, "p", "new-run", 0.3, train_key="key1", sha="new")
    assert run_of_model(arts, "key1", "old") == arts / "p" / "runs" / "old-run"
    stub_run(arts, "q", "other-pipeline", 0.3, train_key="key2", sha="x")  # the chief's, deployed as q
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


# --------------------------------------------------------------------------- pinned deployments
def test_a_deployment_is_pinned_to_its_own_pipeline():
    from flows.deploy import deployment_kwargs, pin_problem, predict_deployment_kwargs

    settings = load_settings(Path(__file__).resolve().parents[2] / "pipelines.yaml", {}, None)
    p = settings.pipeline("smoke-jpeg")
    for kwargs in (deployment_kwargs(p, settings.config_path), predict_deployment_kwargs(p, settings.config_path)):
        assert kwargs["parameters"]["pipeline"] == "smoke-jpeg"  # the pin, stored with the deployment
    assert pin_problem("smoke-jpeg", "smoke-jpeg", "cifar/smoke-jpeg") is None
    assert pin_problem("train-jpeg", None, "cifar/x") is None  # registered with no pipeline: nothing pinned
    problem = pin_problem("train-jpeg", "smoke-jpeg", "cifar/smoke-jpeg")
    assert problem.startswith("deployment cifar/smoke-jpeg runs pipeline 'smoke-jpeg' only, but this run "
                              "asked for pipeline='train-jpeg'; nothing was run.")
    assert "`prefect deployment run cifar/train-jpeg`" in problem
    assert "pipeline=None" in pin_problem(None, "smoke-jpeg", "cifar-predict/smoke-jpeg")  # no default pipeline
