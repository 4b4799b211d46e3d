"""Each run's settings and final metrics in TensorBoard's HParams dashboard (tasks/train/hparams.py).

The flattening is pure and tested here without TensorBoard. The real check writes two run folders
and asks a real ``tensorboard --logdir artifacts`` (``python -m tensorboard.main`` of this venv:
``tensorboard`` is one of the project's dependencies) over loopback what its HParams plugin shows.
It never skips: an install without the package fails it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from procs import Proc, free_port, wait_until
from runfolders import T0, make_dataset, make_run

REPO = Path(__file__).resolve().parents[2]

METADATA = {
    "pipeline": "fast", "run_id": "20261201-100000-abcdef", "created_at": "2026-12-01T10:00:00+00:00",
    "config": {"name": "fast", "model": "airbench",
               "dataset": {"format": "cifar10-binary", "limit_train": 5000, "limit_test": None,
                           "subset_seed": 0, "source": "https://example.invalid/x.tar.gz",
                           "validation": {"size": 5000, "seed": 1}},
               "training": {"ignored": "train.json's config wins"}},
    "model": {"name": "airbench"},
    "training": {"epochs": 17, "strategy": "one_device", "precision": "mixed_bfloat16", "xla": False,
                 "config": {"epochs": 17, "batch_size": 1024, "seed": 42, "shuffle": True, "augment": False,
                            "strategy": "auto", "mixed_precision": "auto", "xla": "auto",
                            "optimizer": {"name": "rmsprop", "learning_rate": 1e-4, "decay": 1e-6, "momentum": 0.0},
                            "recipe": {"widths": [64, 128, 128], "whiten": True, "whiten_bias_epochs": None,
                                       "flip": "alternate"}}},
}


def test_run_hparams_flattens_the_settings_to_dotted_keys_of_hparams_types():
    from tasks.train.hparams import final_metrics, final_step, run_hparams

    hp = run_hparams(METADATA)
    assert hp == {
        "pipeline": "fast", "model": "airbench",
        "dataset.format": "cifar10-binary", "dataset.limit_train": 5000, "dataset.limit_test": "none",
        "dataset.subset_seed": 0, "dataset.validation.seed": 1, "dataset.validation.size": 5000,
        "training.epochs": 17, "training.batch_size": 1024, "training.seed": 42, "training.shuffle": True,
        "training.augment": False,
        "training.strategy": "one_device", "training.precision": "mixed_bfloat16", "training.xla": False,
        "training.recipe.widths": "[64,128,128]", "training.recipe.whiten": True,
        "training.recipe.whiten_bias_epochs": "none", "training.recipe.flip": "alternate",
    }  # optimizer.* left out with a recipe; mixed_precision/auto replaced by what the training resolved
    assert all(type(v) in (bool, int, float, str) for v in hp.values())
    assert final_step(METADATA, hp) == 17
    assert final_metrics({"test_accuracy": 0.93, "test_loss": None, "validation_accuracy": 0.91,
                          "validation_loss": float("nan"), "top_k_accuracy": {"3": 0.99}}) == {
        "test_accuracy": 0.93, "validation_accuracy": 0.91}  # null (diverged) and NaN left out


def test_without_a_recipe_the_optimizer_is_kept_and_a_scalar_validation_setting_is_one_key():
    from tasks.train.hparams import run_hparams

    meta = json.loads(json.dumps(METADATA))
    meta["config"]["dataset"]["validation"] = 0.1
    meta["training"]["config"]["recipe"] = None
    del meta["training"]["config"]["mixed_precision"], meta["config"]["dataset"]["limit_test"]
    hp = run_hparams(meta)
    assert hp["dataset.validation"] == 0.1 and "dataset.limit_test" not in hp
    assert hp["training.optimizer.name"] == "rmsprop" and hp["training.optimizer.learning_rate"] == 1e-4
    assert not [k for k in hp if k.startswith("training.recipe")]


def test_a_damaged_run_or_a_missing_tensorboard_package_writes_nothing_warns_and_never_raises(
        tmp_path, caplog, monkeypatch):
    from tasks.train.hparams import EVENTS, TENSORBOARD, log_run_hparams

    run = make_run(tmp_path / "artifacts", make_dataset(tmp_path / "data", n_test=20), "p", T0)
    with monkeypatch.context() as m:  # a broken install: the dependency cannot be imported
        m.setitem(sys.modules, "tensorboard.compat.proto", None)
        with caplog.at_level(logging.INFO, logger="cifar"):
            assert log_run_hparams(run) is None
    assert [r.levelname for r in caplog.records if "HParams" in r.message] == ["WARNING"]
    assert "pip install 'tensorboard" in caplog.text and not (run / TENSORBOARD).exists()

    (run / "metrics.json").write_text('{"test_accuracy": 0.99}')  # edited after the save: damaged
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cifar"):
        assert log_run_hparams(run) is None
    assert "HParams not written" in caplog.text and "differs from" in caplog.text
    assert not (run / TENSORBOARD / EVENTS).exists()
    assert log_run_hparams(tmp_path / "no-such-run") is None  # missing metadata.json: a warning


# --------------------------------------------------------------------------- the real viewer
def _keras_curves(run_dir: Path) -> None:
    """``epoch_loss``/``epoch_accuracy`` per epoch from history.json into ``tensorboard/train`` and
    ``tensorboard/validation``, as Keras's TensorBoard callback writes them."""
    import tensorflow as tf

    epochs = json.loads((run_dir / "history.json").read_text())["epochs"]
    for split, prefix in (("train", ""), ("validation", "val_")):
        writer = tf.summary.create_file_writer(str(run_dir / "tensorboard" / split))
        with writer.as_default():
            for i, row in enumerate(epochs):
                tf.summary.scalar("epoch_loss", row[f"{prefix}loss"], step=i)
                tf.summary.scalar("epoch_accuracy", row[f"{prefix}accuracy"], step=i)
        writer.close()


def _post(port: int, route: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/{route}",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.subprocess
def test_tensorboard_lists_each_run_as_one_hparams_session_with_its_settings_and_metrics(tmp_path):
    from tasks.train.hparams import EVENTS, log_run_hparams

    art = tmp_path / "artifacts"
    data = make_dataset(tmp_path / "data", n_test=20)
    runs = [make_run(art, data, "hp", T0, skill=2.0, epochs=2, seed=0),
            make_run(art, data, "hp", T0 + timedelta(hours=1), skill=3.0, epochs=3, seed=1)]
    for run, seed in zip(runs, (0, 1)):  # the seed as the store records it (make_run records none)
        meta = json.loads((run / "metadata.json").read_text())
        meta["training"]["config"]["seed"] = seed
        (run / "metadata.json").write_text(json.dumps(meta))
    meta_before = [(r / "metadata.json").read_bytes() for r in runs]

    for run in runs:
        _keras_curves(run)
        assert log_run_hparams(run) == run / "tensorboard" / EVENTS
    assert log_run_hparams(runs[0]) is None  # once per run

    # written beside the run's verified files, never among them: the runs still verify
    from tasks.core import verify
    from tasks.core.files import read_json

    verify.forget()
    for run, before in zip(runs, meta_before):
        assert (run / "metadata.json").read_bytes() == before
        assert verify.run_damage(run, read_json(run / "metadata.json")) == {}
        assert not [p for p in run.rglob(".*")], "a temp file was left behind"

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    board = Proc("tensorboard", [sys.executable, "-m", "tensorboard.main", "--logdir", str(art), "--host",
                                 "127.0.0.1", "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
                 tmp_path / "tensorboard.log", env)
    try:
        def listed() -> bool:
            try:
                exp = _post(port, "experiment", {"experimentName": ""})
            except OSError:
                return False
            return len(exp.get("hparamInfos", [])) > 0 and len(exp.get("metricInfos", [])) >= 5

        wait_until("tensorboard's HParams plugin lists the runs", listed, timeout=120, alive=board)
        exp = _post(port, "experiment", {"experimentName": ""})
        names = {h["name"] for h in exp["hparamInfos"]}
        assert {"pipeline", "model", "dataset.format", "training.epochs", "training.batch_size",
                "training.seed", "training.precision", "training.strategy"} <= names
        metrics = {(m["name"].get("group", ""), m["name"]["tag"]) for m in exp["metricInfos"]}
        assert {("", "test_accuracy"), ("", "test_loss"), ("train", "epoch_loss"),
                ("validation", "epoch_accuracy")} <= metrics

        cols = [{"hparam": "training.epochs", "includeInResult": True},
                {"hparam": "training.seed", "includeInResult": True},
                {"hparam": "pipeline", "includeInResult": True},
                {"metric": {"group": "", "tag": "test_accuracy"}, "includeInResult": True},
                {"metric": {"group": "", "tag": "test_loss"}, "includeInResult": True},
                {"metric": {"group": "validation", "tag": "epoch_loss"}, "includeInResult": True}]
        body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                          "STATUS_RUNNING"],
                "colParams": cols, "startIndex": 0, "sliceSize": 100, "includeMetrics": True}
        groups = _post(port, "session_groups", body)["sessionGroups"]
        by_name = {g["name"]: g for g in groups}
        assert sorted(by_name) == sorted(r.name for r in runs), groups
        for run, epochs in zip(runs, (2, 3)):
            group = by_name[run.name]
            assert [s["name"] for s in group["sessions"]] == [f"hp/runs/{run.name}/tensorboard"]
            assert group["hparams"] == {"training.epochs": epochs, "training.seed": epochs - 2, "pipeline": "hp"}
            values = {(m["name"].get("group", ""), m["name"]["tag"]): m for m in group["metricValues"]}
            recorded = read_json(run / "metrics.json")
            assert values[("", "test_accuracy")]["value"] == pytest.approx(recorded["test_accuracy"], abs=1e-6)
            assert values[("", "test_loss")]["value"] == pytest.approx(recorded["test_loss"], abs=1e-5)
            assert values[("", "test_accuracy")].get("trainingStep", 0) == epochs
            assert values[("validation", "epoch_loss")].get("trainingStep", 0) == epochs - 1  # Keras: 0-based

        # filtering by configuration, as the dashboard's filter does: training.epochs in [3, 3]
        cols[0]["filterInterval"] = {"minValue": 3, "maxValue": 3}
        filtered = _post(port, "session_groups", body)["sessionGroups"]
        assert [g["name"] for g in filtered] == [runs[1].name]
    finally:
        board.stop()
