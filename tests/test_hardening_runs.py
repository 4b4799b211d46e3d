"""Issue 15, part B: bad settings, a training that diverges, damaged run files, class names that
matplotlib would parse, and what `cifar run` leaves behind. One test (or one parametrized test)
per class of fault, each on real parts: real Keras trainings and saves, real run folders, the
real `cifar` command in subprocesses, the embedded Prefect server it starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flows.config import load_settings, parse_set
from tasks.core import runs as layout
from tasks.core.datacache import write_dataset_cache
from tasks.core.errors import ConfigError
from tasks.core.files import read_json

REPO = Path(__file__).resolve().parent.parent
CIFAR = [sys.executable, "-m", "flows.cli"]
T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


def cifar(*args: str, cwd: Path = REPO, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": ""}
    return subprocess.run([*CIFAR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def strict_json(path: Path):
    """The file parsed as strict JSON: ``NaN``/``Infinity`` tokens fail the test."""
    def refuse(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


# =========================================================================== 1. settings
def test_out_of_range_settings_are_refused_at_config_time_with_key_paths(tmp_path):
    p = tmp_path / "pipelines.yaml"
    p.write_text(textwrap.dedent("""
        pipelines:
          a:
            training: {epochs: 0, batch_size: -1, seed: -1,
                       optimizer: {name: sgd, learning_rate: 0, decay: -0.5, momentum: -5}}
            dataset: {subset_seed: -3}
            report: {sample_images: 100000, confident_mistakes: -1}
          b:
            training: {seed: 4294967296, optimizer: {learning_rate: "nan", momentum: 1.0}}
    """))
    with pytest.raises(ConfigError) as info:
        load_settings(p)
    assert info.value.exit_code == 2 and str(p) in str(info.value)
    assert sorted(info.value.problems) == sorted([
        "pipelines.a.training.epochs: must be at least 1, got 0",
        "pipelines.a.training.batch_size: must be at least 1, got -1",
        "pipelines.a.training.seed: must be within [0, 4294967295], got -1",
        "pipelines.a.training.optimizer.learning_rate: must be > 0, got 0.0",
        "pipelines.a.training.optimizer.decay: must be >= 0, got -0.5",
        "pipelines.a.training.optimizer.momentum: must be within [0, 1), got -5.0",
        "pipelines.a.dataset.subset_seed: must be within [0, 4294967294], got -3",
        "pipelines.a.report.sample_images: must be within [0, 256], got 100000",
        "pipelines.a.report.confident_mistakes: must be within [0, 256], got -1",
        # the string "nan" is a number PyYAML read as text, refused by name; the momentum beside
        # it is still judged (a wrong learning rate does not hide the rest of the optimizer)
        "pipelines.b.training.optimizer.learning_rate: must be a finite number, got nan",
        "pipelines.b.training.optimizer.momentum: must be within [0, 1), got 1.0",
        "pipelines.b.training.seed: must be within [0, 4294967295], got 4294967296",
    ])
    ok = tmp_path / "ok.yaml"
    ok.write_text("pipelines: {a: {training: {optimizer: {name: sgd, momentum: 0.9}}}}\n")
    assert load_settings(ok).pipelines["a"].training.optimizer.momentum == 0.9
    for item, want in [("training.optimizer.momentum=-5", "momentum: must be within [0, 1), got -5.0"),
                       ("training.optimizer.learning_rate=nan", "learning_rate: must be a finite number, got nan"),
                       ("training.optimizer.learning_rate=-1e-3", "learning_rate: must be > 0, got -0.001")]:
        with pytest.raises(ConfigError) as info:
            load_settings(ok, parse_set([item]), pipeline="a")
        assert [f"pipelines.a.training.optimizer.{want}"] == info.value.problems, item
    r = cifar("check", "--config", str(ok), "--set", "training.optimizer.momentum=1.5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pipelines.a.training.optimizer.momentum: must be within [0, 1), got 1.5" in r.stderr


# --------------------------------------------------------------------------- store fixtures
CLASSES3 = ("cat", "dog", "frog")
Y_TEST = np.array([0] * 10 + [1] * 6 + [2] * 4, dtype=np.uint8)  # constant models: 0.5 / 0.3 / 0.2


def tiny_cache(root: Path, shape=(8, 8, 3)):
    rng = np.random.default_rng(0)
    return write_dataset_cache(
        root / "datasets" / f"fp-{shape[0]}", rng.integers(0, 256, (48, *shape), dtype=np.uint8),
        np.array([0, 1, 2] * 16, dtype=np.uint8), rng.integers(0, 256, (20, *shape), dtype=np.uint8),
        Y_TEST, CLASSES3, {"source": "test-fixture", "archive_sha256": "ab" * 32, "format": "test"})


def pipeline(name="tiny", min_delta=0.0):
    return {"name": name, "description": "", "expect": "", "dataset": {"format": "test"},
            "prepare": {"standardize": False}, "model": "seed_cnn", "training": {"epochs": 1},
            "promote": {"metric": "test_accuracy", "direction": "max", "min_delta": min_delta},
            "keep_last": None, "report": {}, "schedule": None}


def save(artifacts: Path, dataset, trained, name="tiny"):
    from tasks.prepare.config import ValidationRecord
    from tasks.store.saving import store_run

    validation = ValidationRecord(dataset.fingerprint, {"checks": [], "train_test_duplicates": 0})
    stages = {"train": {"seconds": 1.0, "cache_hit": False}}
    return store_run(pipeline(name), dataset, validation, trained, stages, None, str(artifacts))


def test_a_diverging_training_stops_writes_strict_json_and_is_never_promoted(tmp_path):
    """A learning rate of 1e12 sends the loss to NaN in the first batches: TerminateOnNaN ends
    the fit in epoch 1 of 3, history.json holds null (not NaN), and even as the pipeline's first
    run (otherwise promoted for that alone) it is kept, never promoted, saying why."""
    from tasks.prepare.config import PrepareConfig
    from tasks.train.config import OptimizerConfig, TrainingConfig
    from tasks.train.run import run_training

    ds = tiny_cache(tmp_path / "data", shape=(16, 16, 3))
    cfg = TrainingConfig(epochs=3, batch_size=16,
                         optimizer=OptimizerConfig(name="sgd", learning_rate=1e12, decay=0.0))
    trained = run_training(ds, None, "seed_cnn", cfg, PrepareConfig(), tmp_path / "data")
    history = strict_json(Path(trained.path) / "history.json")["epochs"]
    assert [row["epoch"] for row in history] == [1], "training went on after the loss turned NaN"
    assert history[0]["loss"] is None
    strict_json(Path(trained.path) / "train.json")

    run = save(tmp_path / "artifacts", ds, trained)
    assert run.promoted is False and "training diverged" in run.reason, run.reason
    assert "learning_rate" in run.reason
    for name in ("history.json", "metrics.json", "metadata.json"):
        strict_json(Path(run.path) / name)
    assert read_json(tmp_path / "artifacts" / "tiny" / "registry.json")["champion"] is None
    rows = layout.list_runs(tmp_path / "artifacts")
    assert [r["run_id"] for r in rows] == [run.run_id] and not rows[0]["champion"]


# =========================================================================== 2. damaged run files
def _set(key_path: str, value):
    """A damage: set ``key_path`` (dotted) of a JSON file's content to ``value``."""
    def damage(obj):
        *parents, last = key_path.split(".")
        node = obj
        for part in parents:
            node = node[part]
        node[last] = value
        return obj
    return damage


DAMAGES = {  # id: (pipeline, file, new bytes or a function of the parsed content)
    "registry-truncated": ("alpha", "registry.json", b'{"champion": {"run_id": "2026'),
    "registry-a-list": ("alpha", "registry.json", b"[1, 2]"),
    "registry-champion-a-number": ("alpha", "registry.json", b'{"champion": 5}'),
    "registry-run-id-a-number": ("alpha", "registry.json", b'{"champion": {"run_id": 7, "value": "x"}}'),
    "registry-not-utf8": ("alpha", "registry.json", b"\xff\xfe\x00garbage"),
    "registry-nested-100k-deep": ("alpha", "registry.json", b"[" * 100_000),
    "registry-empty": ("alpha", "registry.json", b""),
    "registry-a-folder": ("alpha", "registry.json", "folder"),
    "metadata-created-at-null": ("beta", "metadata.json", _set("created_at", None)),
    "metadata-created-at-not-a-time": ("beta", "metadata.json", _set("created_at", "yesterday")),
    "metadata-training-a-string": ("beta", "metadata.json", _set("training", "oops")),
    "metadata-seconds-a-string": ("beta", "metadata.json", _set("training.seconds", "40")),
    "metadata-promotion-a-list": ("beta", "metadata.json", _set("promotion", [])),
    "metadata-counts-a-list": ("beta", "metadata.json", _set("dataset.counts", [1])),
    "metadata-a-list": ("beta", "metadata.json", b"[]"),
    "metadata-70-mb": ("beta", "metadata.json", b" " * (70 << 20) + b"{}"),
    "metrics-a-fifo": ("beta", "metrics.json", "fifo"),  # a read would block forever
    "metrics-accuracy-text": ("beta", "metrics.json", _set("test_accuracy", "high")),
    "metrics-confusion-2x2": ("beta", "metrics.json", _set("confusion_matrix", [[1, 0], [0, 1]])),
    "history-epochs-a-string": ("beta", "history.json", _set("epochs", "x")),
    "history-row-a-number": ("beta", "history.json", _set("epochs", [1, 2])),
    "predictions-not-a-zip": ("beta", "predictions.npz", b"PK\x03\x04garbage"),
    "predictions-label-out-of-range": ("beta", "predictions.npz", "label-99"),
}


@pytest.fixture
def two_pipelines(tmp_path, monkeypatch):
    """`alpha` with two runs (the second its champion) and `beta` with one, in the store's format
    (test_report's builder), a dataset cache for their test images, and a pipelines.yaml."""
    from test_report import make_dataset, make_run

    art, data = tmp_path / "artifacts", tmp_path / "data"
    ds = make_dataset(data, n_test=30)
    alpha = [make_run(art, ds, "alpha", T0, skill=1.0, seed=1),
             make_run(art, ds, "alpha", T0 + timedelta(hours=1), skill=3.0, seed=2)]
    beta = [make_run(art, ds, "beta", T0 + timedelta(hours=2), skill=2.0, seed=3)]
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text("artifacts_dir: artifacts\npipelines: {alpha: {}, beta: {}}\n")
    return SimpleNamespace(art=art, alpha=alpha, beta=beta, cfg=cfg)


def _damage(env, pipeline: str, name: str, how) -> Path:
    path = (env.art / pipeline / name if name == "registry.json" else env.beta[0] / name)
    if how in ("folder", "fifo"):
        path.unlink()
        path.mkdir() if how == "folder" else os.mkfifo(path)
    elif how == "label-99":  # a prediction of class 99 of 10
        np.savez(path, y_true=np.array([0, 1]), y_pred=np.array([0, 99]), probs=np.zeros((2, 10)))
    else:
        path.write_bytes(how if isinstance(how, bytes) else json.dumps(how(read_json(path))).encode())
    return path


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_run_file_is_skipped_by_name_and_the_rest_still_renders(two_pipelines, case):
    from tasks.core.runs import RunFolderError
    from tasks.report.rendering import regenerate, render_index

    env = two_pipelines
    pipeline_name, name, how = DAMAGES[case]
    path = _damage(env, pipeline_name, name, how)

    rows = layout.list_runs(env.art)
    ids = {r["run_id"] for r in rows}
    assert {d.name for d in env.alpha} <= ids  # the other pipeline is never affected
    if name == "registry.json":
        assert ids == {d.name for d in env.alpha + env.beta}
        assert not any(r["champion"] for r in rows if r["pipeline"] == "alpha")
    elif name in ("metadata.json", "metrics.json"):
        assert env.beta[0].name not in ids  # that run is left out ...
    index = render_index(env.art).read_text()  # ... and the index of the others still renders
    for d in env.alpha:
        assert d.name in index
    if name not in ("history.json", "predictions.npz"):  # the index reads neither
        assert str(path) in index and 'id="skipped"' in index

    report, _ = regenerate(env.alpha[1], env.art)  # an intact run's report is unaffected
    assert report.is_file()
    if name == "metrics.json" and how == "fifo":
        return  # the run is incomplete to `cifar report` (no regular metrics.json): covered above
    assert report.is_file()
    if name != "registry.json":
        with pytest.raises(RunFolderError) as info:
            regenerate(env.beta[0], env.art)
        assert str(path) in str(info.value)


def test_damaged_files_reach_the_terminal_as_one_paragraph_not_a_traceback(two_pipelines):
    env = two_pipelines
    registry = _damage(env, "alpha", "registry.json", b'{"champion": ')
    metadata = _damage(env, "beta", "metadata.json", _set("created_at", None))
    r = cifar("runs", "--config", str(env.cfg))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert all(d.name in r.stdout for d in env.alpha) and env.beta[0].name not in r.stdout
    assert str(registry) in r.stderr and str(metadata) in r.stderr and "created_at" in r.stderr
    r = cifar("report", f"beta/{env.beta[0].name}", "--config", str(env.cfg))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert str(metadata) in r.stderr and "created_at: expected a string, got None" in r.stderr
    r = cifar("report", f"alpha/{env.alpha[0].name}", "--config", str(env.cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(env.alpha[0] / "report.html")


def test_runs_of_a_pipeline_that_does_not_exist_is_exit_2_naming_those_that_do(two_pipelines):
    env = two_pipelines
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


@pytest.fixture(scope="module")
def constant_models(tmp_path_factory):
    """A dataset cache and constant classifiers (test_store's): accuracy 0.5, 0.3, 0.2, 0.2."""
    from test_store import write_trained

    root = tmp_path_factory.mktemp("const")
    ds = tiny_cache(root)
    models = {f"c{c}": write_trained(root, f"k-c{c}", ds, constant=c) for c in range(3)}
    models["c2b"] = write_trained(root, "k-c2b", ds, constant=2)
    return ds, models


def test_a_damaged_registry_is_rebuilt_and_a_broken_champion_never_compared_with(tmp_path, constant_models):
    ds, models = constant_models
    art = tmp_path / "artifacts"
    first = save(art, ds, models["c1"])  # 0.3: champion
    registry = art / "tiny" / "registry.json"
    registry.write_text('{"champion": {"run_')  # truncated

    second = save(art, ds, models["c2"])  # 0.2: judged against the rebuilt champion, not promoted
    assert not second.promoted and "registry.json was unreadable" in second.reason, second.reason
    assert strict_json(registry)["champion"]["run_id"] == first.run_id  # rebuilt from metadata

    (Path(first.path) / "model.keras").unlink()  # the champion's model is gone
    assert "model.keras is missing" in layout.broken_champions(art)[first.path]
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text("artifacts_dir: artifacts\npipelines: {tiny: {}}\n")
    r = cifar("runs", "tiny", "--config", str(cfg))
    assert r.returncode == 0 and "* BROKEN" in r.stdout and "Traceback" not in r.stderr
    assert f"the champion of tiny, run {first.run_id}, is broken" in r.stderr

    # 0.2 again: compared with the best intact run (second, 0.2: a tie), never with the 0.3 of a
    # model that is gone; the registry now names the champion it was judged against
    third = save(art, ds, models["c2b"])
    assert not third.promoted, third.reason
    assert f"champion {first.run_id} is broken" in third.reason and "model.keras is missing" in third.reason
    assert f"compared with the best intact run {second.run_id}" in third.reason
    assert strict_json(registry)["champion"]["run_id"] == second.run_id

    for run in (second, third):
        (Path(run.path) / "model.keras").unlink()
    fourth = save(art, ds, models["c0"])  # no intact run left: it takes over, saying why
    assert fourth.promoted and "no intact run is left" in fourth.reason, fourth.reason
    assert strict_json(registry)["champion"]["run_id"] == fourth.run_id


# =========================================================================== 3. text in pictures
AWKWARD = [r"$\foo$", "price $5", r"a_b^c {x}", "100%", "猫", r"\\", "$", "tab\there", "x" * 80,
           "<b>bold</b>", "€ and ü", "#1", "'quote'"]  # ten classes and three more for the grids


def test_every_plot_draws_text_as_written_even_under_a_latex_matplotlibrc():
    import matplotlib
    from PIL import Image

    from tasks.report import plots

    drawers = [name for name in dir(plots) if name.startswith("plot_")]
    assert drawers and all(hasattr(getattr(plots, n), "__wrapped__") for n in drawers), drawers
    names = AWKWARD[:10]
    cm = (np.arange(100).reshape(10, 10) % 7).tolist()
    x = np.zeros((10, 32, 32, 3), np.uint8)
    with matplotlib.rc_context({"text.usetex": True, "text.parse_math": True}):  # a user's matplotlibrc
        for png in (plots.plot_confusion(cm, names),
                    plots.plot_image_grid(x, np.arange(10), (np.arange(10) + 1) % 10, np.full(10, 0.5),
                                          names, r"title $\bar$")):
            assert Image.open(io.BytesIO(png)).format == "PNG"

    @plots._drawn
    def settings():
        return matplotlib.rcParams["text.parse_math"], matplotlib.rcParams["text.usetex"]
    assert settings() == (False, False)


def test_awkward_class_names_print_as_written_and_missing_glyphs_are_named(tmp_path, monkeypatch):
    import test_report
    from markupsafe import escape

    from tasks.report.plots import missing_glyphs
    from tasks.report.rendering import regenerate

    monkeypatch.setattr(test_report, "CLASSES", tuple(AWKWARD[:10]))  # the fixture builder's classes
    art = tmp_path / "artifacts"
    ds = test_report.make_dataset(tmp_path / "data", n_test=30)
    run = test_report.make_run(art, ds, "猫の", T0, skill=2.0)  # \w takes CJK: a valid pipeline name
    report, index = regenerate(run, art)
    html, index_html = report.read_text(), index.read_text()
    for name in AWKWARD[:10]:
        assert str(escape(name)) in html, name
    if missing_glyphs(["猫"]):  # no CJK font on this machine: the pages say so, naming the characters
        assert 'id="glyph-note"' in html and "猫" in html.split('id="glyph-note"')[1].split("</p>")[0]
        assert "fonts-noto-cjk" in html and 'id="glyph-note"' in index_html
    else:
        assert 'id="glyph-note"' not in html


def test_many_classes_and_large_images_keep_the_pictures_small():
    from PIL import Image

    from tasks.report.plots import plot_confusion, plot_image_grid

    n = 200
    t0 = time.perf_counter()
    png = plot_confusion(np.eye(n, dtype=int).tolist(), [f"class {i}" for i in range(n)])
    w, h = Image.open(io.BytesIO(png)).size
    assert max(w, h) <= 2100 and time.perf_counter() - t0 < 30, (w, h)
    big = np.zeros((8, 1024, 1024, 3), np.uint8)
    png = plot_image_grid(big, np.zeros(8, int), np.zeros(8, int), np.ones(8), ["a"], "big")
    assert Image.open(io.BytesIO(png)).size[0] <= 8 * 160


# =========================================================================== 4. what the user sees
def _descendants(pid: int) -> set[int]:
    """Every living descendant of ``pid`` (Linux /proc)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += [k for k in kids if k not in out]
            out.update(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


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
    env.update(PREFECT_HOME=str(root / "prefect-home"), PYTHONUNBUFFERED="1")
    return root, env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(500)
def test_cifar_run_prints_the_report_path_last_and_a_kill_9_leaves_nothing_running(project):
    root, env = project
    r = subprocess.run([*CIFAR, "run", "tiny"], cwd=root, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=400)
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Traceback" not in r.stdout
    assert lines[-1].endswith("report.html") and Path(lines[-1]).is_file(), lines[-4:]

    log = root / "killed-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*CIFAR, "run", "tiny", "--force"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            seen |= _descendants(proc.pid)
            if "Beginning flow run" in log.read_text() and seen:
                break
            time.sleep(0.2)
        assert seen and proc.poll() is None, log.read_text()[-3000:]
        seen |= _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: the flow has begun, its server is up
        proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in seen):
            time.sleep(0.1)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
                for p in seen if _alive(p)}
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
