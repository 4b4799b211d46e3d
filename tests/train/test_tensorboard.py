"""TensorBoard event files from a real tiny training (tasks/train/board.py), read back with
TensorFlow alone: the viewer is not installed. One training, shared by the tests below."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainfolders import make_cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs of seed_cnn on a tiny cache: the committed record and its data folder."""
    from tasks.prepare.config import PrepareConfig
    from tasks.train.config import TrainingConfig
    from tasks.train.run import run_training

    data = tmp_path_factory.mktemp("tensorboard")
    rec = run_training(make_cache(data), None, "seed_cnn", TrainingConfig(epochs=2, batch_size=16),
                       PrepareConfig(), data)
    return rec, data


def test_training_writes_tensorboard_logs_readable_without_the_viewer(trained):
    from tasks.train.board import read_events

    rec, data = trained
    with pytest.raises(ImportError):  # the viewer is an optional extra; none of this needs it
        __import__("tensorboard")
    logs = Path(rec.path) / "tensorboard"
    assert not (data / "models" / f"{rec.key}.work").exists()  # moved out at the commit
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
    assert os.environ.get("TF_CONFIG") is None


def test_the_logs_are_copied_into_the_run_folder_once(trained, tmp_path):
    from tasks.train.board import copy_logs

    rec, _ = trained
    logs = Path(rec.path) / "tensorboard"
    run = tmp_path / "artifacts" / "p" / "runs" / "r1"
    run.mkdir(parents=True)
    assert copy_logs(rec.path, run) == run / "tensorboard"
    assert sorted(p.relative_to(run / "tensorboard") for p in (run / "tensorboard").rglob("*.v2")) == sorted(
        p.relative_to(logs) for p in logs.rglob("*.v2"))
    assert copy_logs(rec.path, run) == run / "tensorboard"  # again: kept as it is
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    assert copy_logs(tmp_path / "no-model", run) is None
