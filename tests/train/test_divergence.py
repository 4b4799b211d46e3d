"""A training that diverges (issue 15): a learning rate of 1e12 sends the loss to NaN in the
first batches. TerminateOnNaN ends the fit in epoch 1 of 3, the files hold null (never a NaN
token), and the run is kept but never promoted, even as the pipeline's first run (otherwise
promoted for that alone), saying why (tasks/train/fit.py, tasks/store/promotion.py).
One real training, shared by the tests below."""

from __future__ import annotations

from pathlib import Path

import pytest

from runfolders import strict_json
from trainfolders import store_trained, three_class_cache

from tasks.core import runs as layout
from tasks.core.files import read_json


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    from tasks.prepare.config import PrepareConfig
    from tasks.train.config import OptimizerConfig, TrainingConfig
    from tasks.train.run import run_training

    root = tmp_path_factory.mktemp("diverged")
    ds = three_class_cache(root / "data", shape=(16, 16, 3))
    cfg = TrainingConfig(epochs=3, batch_size=16,
                         optimizer=OptimizerConfig(name="sgd", learning_rate=1e12, decay=0.0))
    trained = run_training(ds, None, "seed_cnn", cfg, PrepareConfig(), root / "data")
    return root, ds, trained


def test_a_diverging_training_stops_in_the_epoch_its_loss_turns_nan(diverged):
    _, _, trained = diverged
    history = strict_json(Path(trained.path) / "history.json")["epochs"]
    assert [row["epoch"] for row in history] == [1], "training went on after the loss turned NaN"


def test_a_diverged_training_writes_strict_json(diverged):
    _, _, trained = diverged
    history = strict_json(Path(trained.path) / "history.json")["epochs"]
    assert history[0]["loss"] is None
    strict_json(Path(trained.path) / "train.json")


def test_a_diverged_run_is_kept_but_never_promoted(diverged):
    root, ds, trained = diverged
    run = store_trained(root / "artifacts", ds, trained)
    assert run.promoted is False and "training diverged" in run.reason, run.reason
    assert "learning_rate" in run.reason
    for name in ("history.json", "metrics.json", "metadata.json"):
        strict_json(Path(run.path) / name)
    assert read_json(root / "artifacts" / "tiny" / "registry.json")["champion"] is None
    rows = layout.list_runs(root / "artifacts")
    assert [r["run_id"] for r in rows] == [run.run_id] and not rows[0]["champion"]
