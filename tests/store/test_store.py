"""Stage 4, saving and registering runs: real Keras models, real files, a real Prefect engine.

The fixture writes the train stage's output folder itself (tests/trainfolders.py: model.keras,
history.json, train.json in the contract's format) and a tiny dataset cache. Besides one really trained model, "constant"
models (zero kernels, one large output bias) always predict the same class, so their test accuracy
is that class's share of the 20 test images: 0.50, 0.30 or 0.20. That gives the promotion tests
scores known in advance without mocking anything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from trainfolders import tiny_model, write_trained

from tasks.core.datacache import write_dataset_cache
from tasks.core.hashing import hash_file, hash_tree
from tasks.core.runs import list_runs
from flows.config import PipelineConfig
from tasks.core.records import TrainRecord, ValidationRecord
from tasks.download.config import DatasetConfig
from tasks.prepare.config import PrepareConfig
from tasks.store.config import PromoteConfig
from tasks.train.config import TrainingConfig
from tasks.store.evaluation import per_class_metrics
from tasks.store.promotion import decide_promotion
from tasks.store.retention import prune_runs
from tasks.store.run_folder import history_csv, model_layers, new_run_id
from tasks.store.saving import ModelIntegrityError, store_run
from tasks.store.table import format_runs_table

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("cat", "dog", "frog")
# 20 test images: 10 cats, 6 dogs, 4 frogs -> constant predictors score 0.5 / 0.3 / 0.2
Y_TEST = np.array([0] * 10 + [1] * 6 + [2] * 4, dtype=np.uint8)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    y_train = np.array([0, 1, 2] * 10, dtype=np.uint8)
    x_test = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    root = tmp_path_factory.mktemp("data") / "datasets" / "fp-tiny"
    return write_dataset_cache(
        root, x_train, y_train, x_test, Y_TEST, CLASSES,
        {"source": "test-fixture", "archive_sha256": "ab" * 32, "format": "test"},
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("train")
    out = {"fit": write_trained(root, "k-fit", dataset)}
    for c in range(3):
        out[f"const{c}"] = write_trained(root, f"k-const{c}", dataset, constant=c)
    out["const2b"] = write_trained(root, "k-const2b", dataset, constant=2)
    return out


def pipeline_config(name="tiny", keep_last=None, min_delta=0.002, min_value=0.0, validation="test",
                    metric="test_accuracy") -> PipelineConfig:
    """min_value 0: the constant classifiers here score at or under chance (the default floor).
    The promotion mechanics are tested on the test split; held-out validation further down."""
    return PipelineConfig(name=name, description="test", prepare=PrepareConfig(standardize=True), model="tiny",
                          dataset=DatasetConfig(validation=validation), training=TrainingConfig(epochs=1),
                          promote=PromoteConfig(metric=metric, min_delta=min_delta, min_value=min_value),
                          keep_last=keep_last)


STAGES = {"download": {"seconds": 0.1, "cache_hit": True}, "prepare": {"seconds": 0.2, "cache_hit": False},
          "train": {"seconds": 3.0, "cache_hit": False}}


def save(artifacts, dataset, trained, **pipe):
    validation = ValidationRecord(dataset.fingerprint, {"checks": [], "train_test_duplicates": 0})
    return store_run(pipeline_config(**pipe), dataset, validation, trained, STAGES, "flow-run-1", str(artifacts))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, dataset, models):
    artifacts = tmp_path_factory.mktemp("artifacts")
    return artifacts, save(artifacts, dataset, models["fit"])


# --------------------------------------------------------------------------- pure functions
CFG = PromoteConfig(metric="test_accuracy", direction="max", min_delta=0.002)
CHAMP = {"run_id": "20260101-000000-aaaaaa", "metric": "test_accuracy", "value": 0.701}


def test_first_run_is_promoted():
    d = decide_promotion(0.5, None, None, CFG)
    assert d["promoted"] and d["reason"] == "first run of this pipeline" and d["champion_before"] is None


def test_promotion_needs_min_delta_over_the_champion():
    better = decide_promotion(0.712, CHAMP, {"run_id": "p", "value": 0.69}, CFG)
    assert better["promoted"]
    assert better["reason"].startswith("test_accuracy 71.20% beats champion 70.10% by 1.10 pp >= min_delta 0.002 (0.20 pp)")
    assert (better["champion_before"], better["champion_value"], better["previous_run"]) == (CHAMP["run_id"], 0.701, "p")
    # exactly min_delta better (0.703 - 0.701 is 0.00199999... in floats) counts
    assert decide_promotion(0.703, CHAMP, None, CFG)["promoted"]
    worse = decide_promotion(0.7025, CHAMP, None, CFG)
    assert not worse["promoted"]
    assert "does not beat champion 70.10% by min_delta 0.002 (0.20 pp)" in worse["reason"]
    assert worse["reason"].endswith(f"kept as a run, champion stays {CHAMP['run_id']}")


def test_promotion_on_a_loss_wants_it_lower():
    loss = PromoteConfig(metric="test_loss", direction="min", min_delta=0.0)
    champ = {"run_id": "c", "metric": "test_loss", "value": 0.9}
    assert decide_promotion(0.85, champ, None, loss)["promoted"]
    assert not decide_promotion(0.95, champ, None, loss)["promoted"]


def test_a_tie_is_not_enough():
    loss = PromoteConfig(metric="test_loss", direction="min", min_delta=0.0)
    champ = {"run_id": "c", "metric": "test_loss", "value": 0.9}
    tie = decide_promotion(0.9, champ, None, loss)
    assert not tie["promoted"] and "a tie is not enough" in tie["reason"]


def test_a_nan_metric_is_never_promoted():
    nan = decide_promotion(float("nan"), None, None, CFG)
    assert not nan["promoted"] and "NaN" in nan["reason"]


def test_the_promotion_reason_gives_both_numbers_of_a_rescored_champion():
    from tasks.store.config import PromoteConfig
    from tasks.store.promotion import decide_promotion

    champ = {"run_id": "R1", "metric": "test_accuracy", "value": 0.4,
             "rescored": {"recorded": 0.5, "value": 0.4, "images": 60, "metric": "test_accuracy"}}
    won = decide_promotion(0.45, champ, None, PromoteConfig(metric="test_accuracy"))
    assert won["promoted"] and won["reason"].startswith(
        "test_accuracy 45.00% beats champion 40.00% on the new test split (60 images; 50.00% on its own) by 5.00 pp")
    assert won["champion_rescored"]["recorded"] == 0.5
    lost = decide_promotion(0.35, champ, None, PromoteConfig(metric="test_accuracy"))
    assert not lost["promoted"] and "champion 40.00% on the new test split (60 images; 50.00% on its own)" in lost["reason"]
    plain = decide_promotion(0.45, {"run_id": "R1", "metric": "test_accuracy", "value": 0.4}, None, PromoteConfig(metric="test_accuracy"))
    assert "new test split" not in plain["reason"] and "champion_rescored" not in plain


def test_per_class_metrics_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 0]
    m = per_class_metrics(y_true, y_pred, 3, list(CLASSES))
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    cat, dog, frog = m["per_class"]
    assert cat == pytest.approx({"class": "cat", "precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert dog["precision"] == 0.5 and dog["recall"] == 0.5
    assert frog == {"class": "frog", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_avg"]["support"] == 6 and m["weighted_avg"]["recall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        per_class_metrics([0, 3], [0, 0], 3)


def test_a_run_id_is_its_utc_time_and_six_hex_digits():
    rid = new_run_id(datetime(2026, 11, 25, 20, 30, 0, tzinfo=timezone.utc))
    assert re.fullmatch(r"20261125-203000-[0-9a-f]{6}", rid)


def test_history_csv_puts_epoch_loss_accuracy_first():
    csv_text = history_csv({"epochs": [{"accuracy": 0.3, "epoch": 1, "loss": 2.0, "lr": 0.1, "seconds": 3.5},
                                       {"accuracy": 0.4, "epoch": 2, "loss": 1.5, "lr": 0.1, "seconds": 3.0}]})
    assert csv_text == "epoch,loss,accuracy,seconds,lr\n1,2.0,0.3,3.5,0.1\n2,1.5,0.4,3.0,0.1\n"


def test_the_layer_table_adds_up_to_kerass_count():
    model = tiny_model()
    rows = model_layers(model)
    assert [r["class"] for r in rows] == ["InputLayer", "Conv2D", "Flatten", "Dense"]
    assert rows[1]["output_shape"] == [None, 6, 6, 4] and rows[1]["params"] == 3 * 3 * 3 * 4 + 4
    assert rows[1]["kernel_size"] == [3, 3] and "kernel_size" not in rows[3]
    assert sum(r["params"] for r in rows) == model.count_params()


# --------------------------------------------------------------------------- the run folder
def test_the_run_folder_holds_every_file(saved):
    artifacts, run = saved
    rdir = Path(run.path)
    assert rdir == artifacts / "tiny" / "runs" / run.run_id
    assert sorted(p.name for p in rdir.iterdir()) == sorted(
        ["model.keras", "savedmodel", "model.tflite", "classes.json", "history.json", "history.csv", "metrics.json",
         "predictions.npz", "metadata.json"])
    assert (rdir / "history.csv").read_text().splitlines()[0].split(",")[0] == "epoch"


def test_the_metadata_describes_the_run(saved, dataset, models):
    _, run = saved
    meta = json.loads((Path(run.path) / "metadata.json").read_text())
    train_json = json.loads(Path(models["fit"].path, "train.json").read_text())
    assert meta["training"] == train_json
    assert meta["pipeline"] == "tiny" and meta["run_id"] == run.run_id and meta["flow_run_id"] == "flow-run-1"
    assert datetime.fromisoformat(meta["created_at"]).utcoffset().total_seconds() == 0
    assert meta["config"]["promote"]["min_delta"] == 0.002
    assert meta["dataset"]["fingerprint"] == dataset.fingerprint and meta["dataset"]["classes"] == list(CLASSES)
    assert meta["dataset"]["counts"]["test"] == {"cat": 10, "dog": 6, "frog": 4}
    assert meta["dataset"]["archive_sha256"] == "ab" * 32 and meta["dataset"]["source"] == "test-fixture"
    assert set(meta["versions"]) == {"python", "tensorflow", "keras", "prefect", "numpy"}
    assert meta["devices"] == ["/physical_device:CPU:0"]
    assert meta["stages"]["train"] == {"seconds": 3.0, "cache_hit": False} and "save" in meta["stages"]
    assert meta["cache_keys"]["train"] == "k-fit" and len(meta["cache_keys"]["store"]) == 16
    assert meta["model"]["params"] == sum(l["params"] for l in meta["model"]["layers"]) == train_json["params"]
    assert meta["promotion"]["promoted"] and meta["promotion"]["reason"] == "first run of this pipeline"


def test_every_files_sha256_is_recorded_and_the_model_is_the_trained_one(saved, models):
    _, run = saved
    rdir = Path(run.path)
    meta = json.loads((rdir / "metadata.json").read_text())
    train_json = json.loads(Path(models["fit"].path, "train.json").read_text())
    # every file's sha256 is recorded, and the model is the train stage's file, byte for byte
    for name, digest in meta["files"].items():
        actual = hash_tree(rdir / name).sha256 if name == "savedmodel" else hash_file(rdir / name).sha256
        assert actual == digest, name
    assert meta["files"]["model.keras"] == train_json["model_sha256"]


def test_the_metrics_agree_with_the_saved_predictions(saved):
    # metrics agree with the saved predictions over the 20 cached test images, in order
    _, run = saved
    rdir = Path(run.path)
    metrics = json.loads((rdir / "metrics.json").read_text())
    pred = np.load(rdir / "predictions.npz")
    assert pred["probs"].shape == (20, 3) and pred["probs"].dtype == np.float32
    assert np.array_equal(pred["y_true"], Y_TEST)
    assert np.array_equal(pred["y_pred"], pred["probs"].argmax(axis=1))
    assert metrics["test_accuracy"] == run.test_accuracy == float((pred["y_pred"] == Y_TEST).mean())
    assert np.isclose(metrics["test_loss"], -np.log(pred["probs"][np.arange(20), Y_TEST]).mean(), rtol=1e-5)
    assert [r["support"] for r in metrics["per_class"]] == [10, 6, 4]
    assert np.array(metrics["confusion_matrix"]).sum() == 20


def test_the_first_run_is_registered_as_champion(saved):
    artifacts, run = saved
    registry = json.loads((artifacts / "tiny" / "registry.json").read_text())
    assert registry["champion"]["run_id"] == run.run_id and registry["champion"]["metric"] == "test_accuracy"


def test_rerun_with_nothing_changed_returns_the_same_run(saved, dataset, models):
    artifacts, run = saved
    again = save(artifacts, dataset, models["fit"])
    assert again == run
    assert [p.name for p in (artifacts / "tiny" / "runs").iterdir()] == [run.run_id]


@pytest.fixture(scope="module")
def sequence(tmp_path_factory, dataset, models):
    """Four saves of pipeline tiny: 0.30 (first), 0.20 (worse), 0.50 (better), then 0.20 again
    with keep_last=1; the registry and the run listing as each step left them."""
    root = tmp_path_factory.mktemp("sequence")
    seq = SimpleNamespace(root=root)
    seq.first = save(root, dataset, models["const1"])  # 0.30
    seq.worse = save(root, dataset, models["const2"])  # 0.20
    seq.worse_meta = json.loads((Path(seq.worse.path) / "metadata.json").read_text())  # pruned below
    seq.registry_after_worse = json.loads((root / "tiny" / "registry.json").read_text())
    seq.better = save(root, dataset, models["const0"])  # 0.50
    seq.registry_after_better = json.loads((root / "tiny" / "registry.json").read_text())
    # keep_last=1: the newest run and the champion stay, everything else goes
    seq.last = save(root, dataset, models["const2b"], keep_last=1)
    seq.rows = list_runs(root)
    seq.store_keys = {json.loads(p.read_text())["run_id"] for p in (root / "tiny" / "store-keys").glob("*.json")}
    return seq


def test_the_first_run_is_promoted_as_the_first(sequence):
    first = sequence.first
    assert first.test_accuracy == 0.3 and first.promoted and first.reason == "first run of this pipeline"


def test_a_worse_run_is_kept_and_the_champion_stays(sequence):
    first, worse = sequence.first, sequence.worse
    assert worse.test_accuracy == 0.2 and not worse.promoted
    assert worse.reason.startswith("test_accuracy 20.00% does not beat champion 30.00% by min_delta 0.002 (0.20 pp)")
    assert worse.reason.endswith(f"champion stays {first.run_id}")
    meta = sequence.worse_meta
    assert meta["promotion"]["reason"] == worse.reason and meta["promotion"]["champion_before"] == first.run_id
    assert sequence.registry_after_worse["champion"]["run_id"] == first.run_id


def test_a_better_run_takes_over(sequence):
    better, registry = sequence.better, sequence.registry_after_better
    assert better.promoted
    assert better.reason.startswith("test_accuracy 50.00% beats champion 30.00% by 20.00 pp >= min_delta 0.002 (0.20 pp)")
    assert registry["champion"]["run_id"] == better.run_id and registry["champion"]["value"] == 0.5
    assert registry["champion"]["reason"] == better.reason


def test_keep_last_keeps_the_newest_run_and_the_champion(sequence):
    first, worse, better, last, rows = sequence.first, sequence.worse, sequence.better, sequence.last, sequence.rows
    assert not last.promoted
    assert [r["run_id"] for r in rows] == [last.run_id, better.run_id]
    assert [r["champion"] for r in rows] == [False, True]
    assert rows[1] == {
        "pipeline": "tiny", "run_id": better.run_id, "created_at": rows[1]["created_at"], "model": "tiny",
        "epochs": 1, "test_accuracy": 0.5, "test_images": 20, "validation_accuracy": None, "validation_images": None,
        "validation_protocol": "test", "train_seconds": 0.5, "champion": True,
        "damaged": None, "named_champion": True, "report": None, "path": better.path,
    }
    assert not Path(first.path).exists() and not Path(worse.path).exists()
    assert sequence.store_keys == {last.run_id, better.run_id}
    assert prune_runs(sequence.root / "tiny", 1, better.run_id) == []  # nothing more to prune


def test_the_runs_table_is_aligned_and_marks_the_champion(sequence):
    better = sequence.better
    table = format_runs_table(sequence.rows).splitlines()
    assert table[0].split()[:3] == ["PIPELINE", "RUN", "ID"] and len(table) == 3
    assert better.run_id in table[2] and " * " in table[2] and "50.00%" in table[2]
    assert len({len(line) for line in table[1:]}) == 1  # aligned: the rows are equally long
    assert format_runs_table([]) == "no runs yet"


def test_half_written_and_foreign_folders_are_never_listed(sequence):
    root, last, better = sequence.root, sequence.last, sequence.better
    (root / "tiny" / "runs" / ".tmp-20990101-000000-abcdef-1").mkdir()
    (root / "tiny" / "runs" / ".tmp-20990101-000000-abcdef-1" / "metadata.json").write_text("{}")
    (root / "tiny" / "runs" / "20990101-000000-abcdef").mkdir()
    assert [r["run_id"] for r in list_runs(root, "tiny")] == [last.run_id, better.run_id]
    assert list_runs(root, "other") == []


@pytest.mark.subprocess
def test_a_crash_mid_save_leaves_no_run_and_no_registry_change(tmp_path, dataset, models, monkeypatch):
    from tasks.store import export

    # what a save killed with -9 leaves behind: its temp folder, named after its (dead) pid
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "tiny" / "runs" / f".tmp-20260101-000000-abcdef-{int(dead.stdout)}"
    (stale / "savedmodel").mkdir(parents=True)
    first = save(tmp_path, dataset, models["const1"])
    assert not stale.exists()  # swept by the next save
    registry = (tmp_path / "tiny" / "registry.json").read_bytes()
    keys = sorted(p.name for p in (tmp_path / "tiny" / "store-keys").glob("*.json"))

    def export_dies(self, *a, **k):
        raise OSError("disk full (simulated in the test)")

    monkeypatch.setattr(export, "write_tflite", export_dies)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, dataset, models["const0"])  # would have been promoted
    assert [p.name for p in (tmp_path / "tiny" / "runs").iterdir()] == [first.run_id]
    assert (tmp_path / "tiny" / "registry.json").read_bytes() == registry
    assert sorted(p.name for p in (tmp_path / "tiny" / "store-keys").glob("*.json")) == keys
    assert [r["run_id"] for r in list_runs(tmp_path)] == [first.run_id]


def test_a_tampered_model_is_refused_before_loading(tmp_path, dataset, models, monkeypatch):
    import shutil

    import keras

    tdir = tmp_path / "models" / "k-tampered"
    shutil.copytree(models["const0"].path, tdir)
    with open(tdir / "model.keras", "ab") as f:
        f.write(b"\0")
    loads = []
    real_load = keras.models.load_model
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with pytest.raises(ModelIntegrityError) as exc:
        save(tmp_path / "artifacts", dataset, TrainRecord(key="k-tampered", path=str(tdir)))
    msg = str(exc.value)
    assert "model.keras" in msg and "sha256" in msg and str(tdir / "train.json") in msg and "--force" in msg
    assert loads == []
    assert list_runs(tmp_path / "artifacts") == []
    assert list((tmp_path / "artifacts" / "tiny" / "runs").iterdir()) == []
    assert not (tmp_path / "artifacts" / "tiny" / "registry.json").exists()


ROUND_TRIP = r"""
import json, sys
import numpy as np, keras, tensorflow as tf
from tasks.core.datacache import load_dataset
from tasks.core.pixels import scale_pixels
run, data = sys.argv[1], sys.argv[2]
meta = json.load(open(f"{run}/metadata.json"))
pre = meta["training"]["preprocess"]
ds = load_dataset(data)
x = scale_pixels(np.asarray(ds.x_test), pre["mean"], pre["std"])
model = keras.models.load_model(f"{run}/model.keras", safe_mode=True)
probs = model.predict(x, verbose=0)
serving = tf.saved_model.load(f"{run}/savedmodel")  # keep a reference: it owns the variables
served = serving.serve(tf.constant(np.asarray(ds.x_test)))["probabilities"].numpy()  # raw uint8 in
np.savez(sys.argv[3], probs=probs, served=served, y=np.asarray(ds.y_test))
print(json.dumps({"accuracy": float((probs.argmax(axis=1) == ds.y_test).mean())}))
"""


@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_round_trip_in_a_fresh_process(saved, dataset, tmp_path):
    artifacts, run = saved
    out = tmp_path / "fresh.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", ROUND_TRIP, run.path, dataset.path, str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((Path(run.path) / "metrics.json").read_text())
    assert json.loads(r.stdout.strip().splitlines()[-1])["accuracy"] == metrics["test_accuracy"]
    fresh, recorded = np.load(out), np.load(Path(run.path) / "predictions.npz")
    assert np.array_equal(fresh["probs"].argmax(axis=1), recorded["y_pred"])
    np.testing.assert_allclose(fresh["probs"], recorded["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fresh["served"], recorded["probs"], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- through Prefect
@pytest.mark.engine
def test_save_run_task_is_cached_on_a_rerun(prefect_engine, tmp_path, dataset, models):
    from prefect import flow

    from tasks.core.caching import bind_local
    from tasks.store.tasks import save_run  # Prefect: imported by the engine tests only

    task = bind_local(save_run, tmp_path / "data")  # as flows/cifar.py binds it
    artifacts = tmp_path / "artifacts"
    validation = ValidationRecord(dataset.fingerprint, {"checks": []})

    @flow
    def store_flow(stages: dict):
        state = task(pipeline_config(), dataset, validation, models["const1"], stages, "fr", str(artifacts),
                     return_state=True)
        return state.name, state.result()

    name1, run1 = store_flow(STAGES)
    # other stage timings and another flow run do not change what is saved: a cache hit
    name2, run2 = store_flow({**STAGES, "train": {"seconds": 0.01, "cache_hit": True}})
    assert (name1, name2) == ("Completed", "Cached")
    assert run2 == run1
    assert [p.name for p in (artifacts / "tiny" / "runs").iterdir()] == [run1.run_id]
    # the cache record alone proves nothing: with the run folder gone, the task saves again
    import shutil

    shutil.rmtree(run1.path)
    name3, run3 = store_flow(STAGES)
    assert name3 == "Completed" and run3.run_id != run1.run_id and Path(run3.path, "model.keras").is_file()
