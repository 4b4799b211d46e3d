"""TensorBoard event files from a real tiny training (tasks/train/board.py), read back with
TensorFlow alone: in a process where the ``tensorboard`` package (a dependency, so installed) cannot
be imported, the files are still plain TF event records with the scalars the viewer reads. One
training, shared by the tests below."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainfolders import make_cache


REPO = Path(__file__).resolve().parents[2]

# board.read_events in a fresh interpreter where any import of the tensorboard package fails (as
# without it installed; TensorFlow then loads without it): the events as JSON, and proof that no
# tensorboard module was loaded.
READ_WITHOUT_TENSORBOARD = """
import importlib.abc, json, sys

class NoTensorBoard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, NoTensorBoard())
from tasks.train.board import read_events
events = read_events(sys.argv[1])
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tensorboard")
print("EVENTS " + json.dumps({"events": events, "tensorboard_modules": loaded}))
"""


def read_events_without_tensorboard(log_dir: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    r = subprocess.run([sys.executable, "-c", READ_WITHOUT_TENSORBOARD, str(log_dir)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("EVENTS ", 1)[1])
    assert out["tensorboard_modules"] == [], out["tensorboard_modules"]
    return out["events"]


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


@pytest.mark.subprocess
def test_training_writes_tensorboard_logs_readable_by_tensorflow_alone(trained):
    rec, data = trained
    logs = Path(rec.path) / "tensorboard"
    assert not (data / "models" / f"{rec.key}.work").exists()  # moved out at the commit
    events = read_events_without_tensorboard(logs)  # TF event records: the viewer's package not needed
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
