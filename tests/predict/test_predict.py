"""Using the model: the self-contained export as predictions read it, `cifar predict`, and the
`cifar-predict` flow (tasks/predict/, flows/predict.py, flows/predict_cli.py). Exporting a
mixed-precision model: tests/store/test_export.py; how `cifar predict` reads pipelines.yaml:
tests/flows/test_predict_cli.py.

Real parts only: the runs are saved by the store stage itself (``store_run``) from really
trained or hand-set Keras models on a tiny dataset cache; the CLI runs as a subprocess; the
fresh-process test imports nothing of this project; the flow runs on the session's Prefect
engine and fetches a URL input from a loopback HTTP server.

Runs (pipeline ``tiny``, 8x8x3 images, classes cat/dog/frog; min_delta 1.0, so only the first
run is ever promoted):
- ``fit``: trained one epoch with standardisation (mean/std inside the export) - the champion;
- ``frog``: zero kernels and output bias (0, 0, 5): every image is frog with probability
  e^5 / (e^5 + 2) = 0.98670 - the latest run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flows.config import PipelineConfig
from tasks.core.datacache import load_dataset, write_dataset_cache
from tasks.core.hashing import hash_file
from tasks.core.pixels import scale_pixels
from tasks.core.records import TrainRecord, ValidationRecord
from tasks.prepare.config import PrepareConfig
from tasks.store.config import PromoteConfig
from tasks.store.saving import store_run
from tasks.train.config import TrainingConfig
from trainfolders import model_folder

CLASSES = ("cat", "dog", "frog")
FROG_P = float(np.exp(5) / (np.exp(5) + 2))  # 0.98670


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# --------------------------------------------------------------------------- fixtures
def _write_trained(root: Path, key: str, ds, frog: bool) -> TrainRecord:
    """The train stage's folder (model.keras, history.json, train.json) for one tiny model."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    mean = std = None
    if frog:
        model.get_layer("conv").set_weights([np.zeros_like(w) for w in model.get_layer("conv").get_weights()])
        kernel = model.get_layer("dense").get_weights()[0]
        model.get_layer("dense").set_weights([np.zeros_like(kernel), np.array([0, 0, 5], np.float32)])
    else:
        x_train = scale_pixels(np.asarray(ds.x_train))
        mean, std = x_train.mean(axis=(0, 1, 2)).tolist(), x_train.std(axis=(0, 1, 2)).tolist()
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        model.fit(scale_pixels(np.asarray(ds.x_train), mean, std), np.asarray(ds.y_train), epochs=15,
                  batch_size=10, verbose=0)
    return model_folder(root / key, key, model, (mean, std), seconds=0.1)


def _pipeline(name: str) -> PipelineConfig:
    return PipelineConfig(name=name, prepare=PrepareConfig(standardize=True), model="tiny",
                          training=TrainingConfig(epochs=1), promote=PromoteConfig(min_delta=1.0, min_value=0.0))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder: pipelines.yaml, a dataset cache, and two saved runs of ``tiny``."""
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(7)
    x_train = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    y_train = np.arange(60, dtype=np.uint8) % 3
    x_train[y_train == 0, :, :, 0] = 250  # learnable: cats are red, frogs green
    x_train[y_train == 2, :, :, 1] = 250
    x_test = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    y_test = np.arange(24, dtype=np.uint8) % 3
    x_test[y_test == 0, :, :, 0] = 250
    x_test[y_test == 2, :, :, 1] = 250
    ds = write_dataset_cache(root / "data" / "datasets" / "fp", x_train, y_train, x_test, y_test, CLASSES,
                             {"source": "test", "archive_sha256": "ab" * 32, "format": "test"})
    data = load_dataset(ds.path)
    validation = ValidationRecord(ds.fingerprint, {"checks": []})
    runs = {}
    for key, frog in (("fit", False), ("frog", True)):
        trained = _write_trained(root / "data" / "models", f"k-{key}", data, frog)
        runs[key] = store_run(_pipeline("tiny"), ds, validation, trained, {}, None, str(root / "artifacts"))
    (root / "pipelines.yaml").write_text("data_dir: data\nartifacts_dir: artifacts\npipelines:\n  tiny: {}\n")
    return {"root": root, "dataset": ds, "data": data, "runs": runs}


@pytest.fixture(scope="module")
def photos(project, tmp_path_factory):
    """Inputs: the first 6 test images as PNG files; a 40x30 JPEG; a 20x20 greyscale PNG; a
    folder holding them plus a corrupt .jpg, a .txt and a hidden file; archives."""
    root = tmp_path_factory.mktemp("photos")
    x_test = np.asarray(project["data"].x_test)
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        (folder / f"test{i}.png").write_bytes(png(x_test[i]))
    (folder / "sub" / "big.jpg").write_bytes(jpeg(np.full((30, 40, 3), 120, np.uint8)))
    (folder / "gray.png").write_bytes(png(np.full((20, 20), 90, np.uint8)))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(png(x_test[0]))
    with tarfile.open(root / "images.tar.gz", "w:gz") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"batch/img{i}.png")
            data = png(x_test[i])
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(root / "images.zip", "w") as zf:
        zf.writestr("a/one.png", png(x_test[0]))
        zf.writestr("a/readme.md", "ignored")
    with tarfile.open(root / "evil.tar", "w") as tf:
        info = tarfile.TarInfo("ok.png")
        info.size = len(png(x_test[0]))
        tf.addfile(info, io.BytesIO(png(x_test[0])))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    return root


def cifar_predict(project, *args, extra_python=()):
    """`python -m flows.cli predict ...` in the project folder (as `cifar predict` runs)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, *extra_python, "-m", "flows.cli", "predict", *map(str, args)],
                          cwd=project["root"], env=env, capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------- the export
FRESH = r"""
import json, sys
import numpy as np
import tensorflow as tf
import keras
run, data = sys.argv[1], sys.argv[2]
x = np.load(f"{data}/x_test.npy")                      # raw uint8 test images
model = tf.saved_model.load(f"{run}/savedmodel")
out = model.signatures["serving_default"](images=tf.constant(x))
served = model.serve(tf.constant(x[:5]))                # any batch size
pre = json.load(open(f"{run}/metadata.json"))["training"]["preprocess"]
k = keras.models.load_model(f"{run}/model.keras")       # takes scaled input (README)
z = x.astype("float32") / 255
if pre["mean"] is not None:
    z = (z - np.float32(pre["mean"])) / np.float32(pre["std"])
ours = [m for m in sys.modules if m.split(".")[0] in ("tasks", "flows")]
print(json.dumps({"probs": out["probabilities"].numpy().tolist(),
                  "index": out["class_index"].numpy().tolist(),
                  "names": [n.decode() for n in out["class_name"].numpy()],
                  "batch5": served["probabilities"].numpy().tolist(),
                  "keras": k.predict(z, verbose=0).tolist(),
                  "ours": ours}))
"""


@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_savedmodel_in_a_fresh_process_reproduces_the_recorded_test_predictions(project, tmp_path):
    run = Path(project["runs"]["fit"].path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3",
                                                                        "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", FRESH, str(run), project["dataset"].path], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["ours"] == []  # plain TensorFlow: nothing of this project was imported
    recorded = np.load(run / "predictions.npz")
    metrics = json.loads((run / "metrics.json").read_text())
    probs = np.array(got["probs"], np.float32)
    assert np.array_equal(np.array(got["index"]), recorded["y_pred"])  # image for image
    assert float((np.array(got["index"]) == recorded["y_true"]).mean()) == metrics["test_accuracy"]
    np.testing.assert_allclose(probs, recorded["probs"], atol=1e-6)
    np.testing.assert_allclose(np.array(got["batch5"]), recorded["probs"][:5], atol=1e-6)
    assert got["names"] == [CLASSES[i] for i in recorded["y_pred"]]
    assert json.loads((run / "classes.json").read_text()) == list(CLASSES)
    # the .keras file, fed scaled pixels as the README shows, gives the same predictions
    np.testing.assert_allclose(np.array(got["keras"]), recorded["probs"], atol=1e-6)
    assert metrics["test_accuracy"] > 0.5  # the fixture's model learned something


def test_metadata_records_the_serving_export(project):
    run = Path(project["runs"]["fit"].path)
    meta = json.loads((run / "metadata.json").read_text())
    serving = meta["serving"]
    assert serving["input"] == {"name": "images", "dtype": "uint8", "shape": [None, 8, 8, 3]}
    assert serving["classes"] == list(CLASSES)
    assert serving["preprocess"]["mean"] == meta["training"]["preprocess"]["mean"] is not None
    assert serving["tflite_agreement"]["same_class"] == serving["tflite_agreement"]["images"] == 24
    assert serving["tflite_agreement"]["max_abs_diff"] < 1e-5 and serving["tflite_precision"] == "float32"
    for name in ("model.tflite", "classes.json"):
        assert meta["files"][name] == hash_file(run / name).sha256


# --------------------------------------------------------------------------- cifar predict
@pytest.mark.subprocess
def test_predict_files_reproduces_the_recorded_predictions(project, photos):
    folder = photos / "folder"
    files = [folder / f"test{i}.png" for i in range(6)]
    r = cifar_predict(project, *files, "--json", "--top", "3")
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    recorded = np.load(Path(project["runs"]["fit"].path) / "predictions.npz")
    assert [rec["file"] for rec in records] == [str(f) for f in files]
    for i, rec in enumerate(records):  # PNG is lossless and 8x8 needs no resizing: the same numbers
        assert rec["index"] == recorded["y_pred"][i] and rec["class"] == CLASSES[rec["index"]]
        assert rec["probability"] == pytest.approx(float(recorded["probs"][i].max()), abs=1e-5)
        assert [t["class"] for t in rec["top"]] == [CLASSES[j] for j in np.argsort(-recorded["probs"][i])]
    assert "model: tiny run " in r.stderr and "(champion)" in r.stderr and "8x8x3 input, 3 classes" in r.stderr
    # every record names the run and the model's sha256 that answered
    meta = json.loads((Path(project["runs"]["fit"].path) / "metadata.json").read_text())
    assert {(rec["pipeline"], rec["run_id"], rec["model_sha256"]) for rec in records} == {
        ("tiny", project["runs"]["fit"].run_id, meta["files"]["model.tflite"])}
    assert "uncertain" not in records[0]  # no --min-prob: no verdict


@pytest.mark.subprocess
def test_predict_min_prob_marks_the_unsure_ones_uncertain(project, photos):
    files = [photos / "folder" / "test0.png", photos / "folder" / "gray.png"]
    r = cifar_predict(project, *files, "--run", "latest", "--json", "--min-prob", "0.99")
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    assert [rec["uncertain"] for rec in records] == [rec["probability"] < 0.99 for rec in records]
    assert any(rec["uncertain"] for rec in records)
    lines = cifar_predict(project, *files, "--run", "latest", "--min-prob", "0.99").stdout.splitlines()
    assert [line.endswith("uncertain (< 0.99)") for line in lines] == [rec["uncertain"] for rec in records]
    bad = cifar_predict(project, *files, "--min-prob", "1.5")
    assert bad.returncode == 2 and "expected a probability between 0 and 1, got '1.5'" in bad.stderr


@pytest.mark.subprocess
def test_predict_a_folder_skips_and_reports_the_bad_file(project, photos):
    r = cifar_predict(project, photos / "folder", "--run", "latest", "--top", "2")
    assert r.returncode == 1, r.stdout + r.stderr  # one file could not be scored
    lines = r.stdout.splitlines()
    names = [line.split("  ")[0] for line in lines]
    folder = photos / "folder"
    assert names == [str(folder / n) for n in ["gray.png", *(f"test{i}.png" for i in range(6)), "sub/big.jpg"]]
    assert all(line.endswith(f"frog {FROG_P:.3f}  cat {(1 - FROG_P) / 2:.3f}") for line in lines), lines
    assert f"error: {folder / 'broken.jpg'}: corrupt or unreadable image" in r.stderr
    assert "1 of 9 file(s) could not be scored" in r.stderr
    assert "notes.txt" not in r.stdout + r.stderr and ".hidden" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.subprocess
def test_predict_archives_and_a_refused_one(project, photos):
    r = cifar_predict(project, photos / "images.tar.gz", photos / "images.zip", photos / "evil.tar",
                      "--run", "latest", "--json")
    records = json.loads(r.stdout)
    ok = [rec["file"] for rec in records if "error" not in rec]
    assert ok == [f"{photos / 'images.tar.gz'}:batch/img{i}.png" for i in range(3)] + [
        f"{photos / 'images.zip'}:a/one.png"]
    assert all(rec["class"] == "frog" for rec in records if "error" not in rec)
    refused = [rec for rec in records if "error" in rec]
    assert [rec["file"] for rec in refused] == [str(photos / "evil.tar")]  # refused whole: not even ok.png
    assert "'link.png' is a link" in refused[0]["error"] and r.returncode == 1


@pytest.mark.subprocess
def test_predict_named_bad_inputs_say_which_file(project, photos, tmp_path):
    notes = photos / "folder" / "notes.txt"
    r = cifar_predict(project, notes, tmp_path / "missing.png", photos / "folder" / "test0.png")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"error: {notes}: corrupt or unreadable image" in r.stderr and "only PNG and JPEG" in r.stderr
    assert f"error: {tmp_path / 'missing.png'}: no such file or folder" in r.stderr
    assert r.stdout.startswith(str(photos / "folder" / "test0.png"))  # the good one was still scored


@pytest.mark.subprocess
def test_predict_names_an_unknown_run_or_pipeline(project, photos):
    img = photos / "folder" / "test0.png"
    r = cifar_predict(project, img, "--run", "20990101-000000-abcdef")
    assert r.returncode == 1 and "no run '20990101-000000-abcdef'" in r.stderr
    assert project["runs"]["frog"].run_id in r.stderr and "Traceback" not in r.stderr
    r = cifar_predict(project, img, "--pipeline", "nope")
    assert r.returncode == 1 and "pipeline 'nope' has no runs" in r.stderr


def _without_a_champion(project, folder: Path) -> Path:
    """A copy of the project's artifacts and pipelines.yaml whose registry names no champion."""
    shutil.copytree(project["root"] / "artifacts", folder / "artifacts")
    shutil.copy(project["root"] / "pipelines.yaml", folder)
    registry = folder / "artifacts" / "tiny" / "registry.json"
    registry.write_text(json.dumps({"champion": None}))
    return folder


@pytest.mark.subprocess
def test_predict_without_a_champion_says_to_choose_a_run(project, photos, tmp_path):
    copy = _without_a_champion(project, tmp_path / "copy")
    r = cifar_predict({"root": copy}, photos / "folder" / "test0.png")
    assert r.returncode == 1 and "pipeline 'tiny' has no champion yet" in r.stderr and "--run latest" in r.stderr


@pytest.mark.subprocess
def test_predict_refuses_an_altered_model_before_loading_it(project, photos, tmp_path):
    copy = _without_a_champion(project, tmp_path / "copy")
    tflite = copy / "artifacts" / "tiny" / "runs" / project["runs"]["frog"].run_id / "model.tflite"
    with open(tflite, "ab") as f:
        f.write(b"\0")
    r = cifar_predict({"root": copy}, photos / "folder" / "test0.png", "--run", "latest")
    assert r.returncode == 1 and f"{tflite}: sha256" in r.stderr and "recorded in" in r.stderr
    assert "was not loaded" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.subprocess
def test_predict_never_imports_prefect_keras_or_tensorflow(project, photos, tmp_path):
    # Read by flows.config, as every command reads it: a file elsewhere, with a schedule (checked
    # as Prefect checks it, without Prefect: flows/cron.py).
    cfg = tmp_path / "conf" / "pipelines.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"artifacts_dir: {project['root'] / 'artifacts'}\n"
                   "pipelines:\n  tiny: {schedule: {cron: '0 3 * * 1'}}\n")
    r = cifar_predict(project, photos / "folder" / "test0.png", "--config", cfg, extra_python=("-X", "importtime"))
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "ai_edge_litert" in imported and "PIL" in imported and "flows" in imported
    assert not imported & {"prefect", "keras", "tensorflow", "pydantic_settings"}, imported & {
        "prefect", "keras", "tensorflow"}


# --------------------------------------------------------------------------- pure parts
def test_an_image_of_the_models_size_is_untouched():
    from tasks.predict.imaging import to_model_input

    exact = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    assert np.array_equal(to_model_input(exact, (8, 8, 3)), exact)  # the model's size: untouched


def test_a_grey_image_is_repeated_into_r_g_and_b():
    from tasks.predict.imaging import to_model_input

    gray = np.full((20, 30), 77, np.uint8)
    out = to_model_input(gray, (8, 8, 3))
    assert out.shape == (8, 8, 3) and (out == 77).all()  # repeated into R, G, B; a flat image stays flat


def test_a_larger_image_is_averaged_down_not_sampled():
    from tasks.predict.imaging import to_model_input

    halves = np.zeros((64, 64, 3), np.uint8)
    halves[:, 32:] = 255
    out = to_model_input(halves, (8, 8, 3))
    assert (out[:, :3] <= 2).all() and (out[:, 5:] >= 253).all()  # averaged, not sampled


def test_a_colour_image_for_a_grey_model_becomes_its_luma():
    from tasks.predict.imaging import to_model_input

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 255  # pure green -> luma 0.587 * 255
    assert to_model_input(rgb, (8, 8, 1)).shape == (8, 8, 1) and to_model_input(rgb, (8, 8, 1))[0, 0, 0] == 150


def test_top_k_orders_by_probability_and_stops_at_the_classes():
    from tasks.predict.scoring import top_k

    probs = np.array([0.2, 0.5, 0.2, 0.1], np.float32)
    assert top_k(probs, ["a", "b", "c", "d"], 3) == [("b", 0.5), ("a", pytest.approx(0.2)), ("c", pytest.approx(0.2))]
    assert len(top_k(probs, ["a", "b", "c", "d"], 99)) == 4


def test_a_prediction_as_a_line_and_as_a_record():
    from tasks.predict.scoring import Failure, Prediction, as_line, as_record

    p = Prediction("x.png", [("b", 0.5), ("a", 0.25)], 1)
    assert as_line(p) == "x.png  b 0.500  a 0.250"
    assert as_record(p) == {"file": "x.png", "class": "b", "probability": 0.5, "index": 1,
                            "top": [{"class": "b", "probability": 0.5}, {"class": "a", "probability": 0.25}]}
    assert as_record(Failure("y.png", "y.png: bad")) == {"file": "y.png", "error": "y.png: bad"}
    assert as_record(p, min_prob=0.6)["uncertain"] and not as_record(p, min_prob=0.5)["uncertain"]
    assert as_line(p, 0.6) == "x.png  b 0.500  a 0.250  uncertain (< 0.6)" and as_line(p, 0.5) == as_line(p)


def test_choosing_the_run(project):
    from tasks.predict.resolve import resolve_model

    arts = project["root"] / "artifacts"
    champion = resolve_model(arts)
    assert (champion.run_id, champion.champion) == (project["runs"]["fit"].run_id, True)
    latest = resolve_model(arts, "tiny", "latest")
    assert latest.run_id == project["runs"]["frog"].run_id and not latest.champion
    assert resolve_model(arts, "tiny", latest.run_id) == latest
    assert latest.model_sha256 == hash_file(Path(latest.path) / "model.tflite").sha256


def test_choosing_the_default_pipeline(tmp_path, project):
    from tasks.predict.errors import NoModelError
    from tasks.predict.resolve import default_pipeline

    arts = project["root"] / "artifacts"
    assert default_pipeline(arts) == "tiny"  # the one pipeline with runs
    with pytest.raises(NoModelError, match="no trained runs under"):
        default_pipeline(tmp_path)
    for name in ("a", "b"):
        shutil.copytree(arts / "tiny", tmp_path / name)
    with pytest.raises(NoModelError, match=r"several others do \(a, b\); choose one with --pipeline"):
        default_pipeline(tmp_path)
    shutil.copytree(arts / "tiny", tmp_path / "train")
    assert default_pipeline(tmp_path) == "train"


def test_archive_members_are_checked_before_any_is_used(tmp_path):
    from tasks.predict.inputs import iter_sources

    good = png(np.zeros((8, 8, 3), np.uint8))
    with tarfile.open(tmp_path / "dots.tar.gz", "w:gz") as tf:
        for name in ("fine.png", "../escape.png"):
            info = tarfile.TarInfo(name)
            info.size = len(good)
            tf.addfile(info, io.BytesIO(good))
    with zipfile.ZipFile(tmp_path / "abs.zip", "w") as zf:
        zf.writestr("fine.png", good)
        zf.writestr("/etc/abs.png", good)
    got = list(iter_sources([tmp_path / "dots.tar.gz", tmp_path / "abs.zip"]))
    assert [s.name for s in got] == [str(tmp_path / "dots.tar.gz"), str(tmp_path / "abs.zip")]
    assert all(s.data is None and "absolute or '..' path; refused" in s.error for s in got)
    (tmp_path / "trunc.tar.gz").write_bytes((tmp_path / "dots.tar.gz").read_bytes()[:40])
    (bad,) = iter_sources([tmp_path / "trunc.tar.gz"])
    assert "not a readable archive, or corrupt or truncated" in bad.error


def _batch_folder(folder: Path) -> dict:
    """A predictions folder of one prediction with a hostile name and one failure; its manifest."""
    from tasks.predict.batch import build_folder
    from tasks.predict.scoring import Failure, Prediction

    pixels = np.zeros((8, 8, 3), np.uint8)
    items = [Prediction("<script>alert(1)</script>.png", [("cat", 0.9), ("dog", 0.1)], 0, pixels),
             Failure("bad & worse.jpg", "bad & worse.jpg: corrupt")]
    title = {"pipeline": "p", "run_id": "r", "model_sha256": "f" * 64, "input": "in<put>", "input_sha256": "0",
             "top_k": 2, "input_shape": [8, 8, 3]}
    return build_folder(folder, iter(items), title)


def test_the_page_escapes_names(tmp_path):
    from tasks.predict.batch import PAGE

    _batch_folder(tmp_path / "k")
    page = (tmp_path / "k" / PAGE).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;.png" in page
    assert "bad &amp; worse.jpg" in page and "in&lt;put&gt;" in page


def test_the_page_is_self_contained(tmp_path):
    from tasks.predict.batch import PAGE

    _batch_folder(tmp_path / "k")
    page = (tmp_path / "k" / PAGE).read_text()
    assert "data:image/png;base64," in page and "http" not in page  # nothing loaded from elsewhere


def test_the_csv_has_a_row_per_input_failures_included(tmp_path):
    from tasks.predict.batch import CSV

    _batch_folder(tmp_path / "k")
    rows = (tmp_path / "k" / CSV).read_text().splitlines()
    assert rows[0] == "file,class,probability,top_k,error,pipeline,run_id,model_sha256"
    assert rows[1].startswith("<script>alert(1)</script>.png,cat,0.900000,cat:0.900000;dog:0.100000,,")
    assert rows[2].startswith("bad & worse.jpg,,,,bad & worse.jpg: corrupt,")


def test_the_manifest_counts_and_is_checked_against_the_files(tmp_path):
    from tasks.predict.batch import CSV, intact

    manifest = _batch_folder(tmp_path / "k")
    assert manifest["counts"] == [{"class": "cat", "images": 1}] and manifest["failed"] == 1
    assert intact(tmp_path / "k") == manifest
    (tmp_path / "k" / CSV).write_text("tampered")
    assert intact(tmp_path / "k") is None


# --------------------------------------------------------------------------- the flow
def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


@pytest.mark.engine
def test_predict_flow_scores_once_writes_csv_and_page_and_publishes(prefect_engine, project, photos, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.predict import cifar_predict

    config = str(project["root"] / "pipelines.yaml")
    kwargs = {"input": str(photos / "folder"), "pipeline": "tiny", "run": "latest", "config": config, "top_k": 2}
    first = cifar_predict(**kwargs, output=str(tmp_path / "one"), return_state=True)
    summary = first.result()
    assert (summary["images"], summary["scored"], summary["failed"]) == (9, 8, 1)
    assert summary["counts"] == [{"class": "frog", "images": 8}]
    rows = (tmp_path / "one" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 9 and rows[0] == "file,class,probability,top_k,error,pipeline,run_id,model_sha256"
    answered = project["root"] / "artifacts" / "tiny" / "runs" / summary["run_id"] / "metadata.json"
    sha = json.loads(answered.read_text())["files"]["model.tflite"]
    assert all(row.endswith(f",tiny,{summary['run_id']},{sha}") for row in rows[1:])
    assert sum(",frog,0.986" in row for row in rows) == 8
    assert [r.split(",")[0] for r in rows[1:3]] == ["broken.jpg", "gray.png"] and "corrupt" in rows[1]
    assert rows[-1].startswith("sub/big.jpg,frog,")
    page = (tmp_path / "one" / "predictions.html").read_text()
    assert page.count("<figure>") == 8 and "Not scored (1)" in page
    assert _task_states(first.state_details.flow_run_id)["score-images"] == "Completed"

    # the same model on the same input: not scored again, wherever the output goes
    second = cifar_predict(**kwargs, output=str(tmp_path / "two"), return_state=True)
    assert second.result()["key"] == summary["key"]
    assert _task_states(second.state_details.flow_run_id)["score-images"] == "Cached"
    assert (tmp_path / "two" / "predictions.csv").read_bytes() == (tmp_path / "one" / "predictions.csv").read_bytes()
    # ... until its files are altered: then it scores again
    cached = Path(project["root"] / "data" / "predictions" / summary["key"] / "predictions.csv")
    cached.write_text("tampered")
    third = cifar_predict(**kwargs, output=str(tmp_path / "three"), return_state=True)
    assert _task_states(third.state_details.flow_run_id)["score-images"] == "Completed"
    assert (tmp_path / "three" / "predictions.csv").read_bytes() == (tmp_path / "one" / "predictions.csv").read_bytes()

    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = {a.key: a for a in sorted(client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["predictions-tiny", "predictions-page-tiny"]))),
            key=lambda a: a.created)}  # each key's latest version
    assert arts["predictions-tiny"].type == "table" and "frog" in str(arts["predictions-tiny"].data)
    link = str(arts["predictions-page-tiny"].data)  # a link artifact: markdown "[text](file://...)"
    assert (tmp_path / "three" / "predictions.html").as_uri() in link


@pytest.mark.engine
def test_predict_flow_fetches_a_url_and_defaults_to_the_champion(prefect_engine, project, photos):
    from archives import FileServer, status

    from flows.predict import cifar_predict
    from tasks.predict.errors import InputError
    from tasks.predict.fetch import fetch_url

    with FileServer() as srv:
        url = srv.add("batch.tar.gz", photos / "images.tar.gz")
        srv.script("batch.tar.gz", status(503))  # a 5xx is retried (with backoff) ...
        summary = cifar_predict(input=url, config=str(project["root"] / "pipelines.yaml"))
        assert [h.status for h in srv.hits("batch.tar.gz")] == [503, 200]
        with pytest.raises(InputError, match=r"/nothing.zip: HTTP 404; check the URL \(it is not retried\)"):
            fetch_url(srv.url("nothing.zip"), photos / "downloads")  # ... a 4xx is not
        with pytest.raises(InputError, match="more than 0 MiB; refused"):
            fetch_url(url, photos / "downloads", max_bytes=100)
        assert not list((photos / "downloads").glob("*.part"))  # nothing half-written is left
    assert summary["run_id"] == project["runs"]["fit"].run_id and summary["images"] == summary["scored"] == 3
    out = Path(summary["csv"]).parent
    assert out.parent == project["root"] / "artifacts" / "tiny" / "predictions"
    assert out.name.startswith("batch.tar.gz-")
    rows = Path(summary["csv"]).read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [f"batch/img{i}.png" for i in range(3)]  # names within the input
    recorded = np.load(Path(project["runs"]["fit"].path) / "predictions.npz")
    assert [r.split(",")[1] for r in rows] == [CLASSES[i] for i in recorded["y_pred"][:3]]


# --------------------------------------------------------------------------- issue 29
def _with_classes(project, folder: Path, classes) -> Path:
    """A copy of the project whose latest run's classes.json holds ``classes`` (its sha256 in
    metadata.json updated: the file is consistent with its record, but not with the model)."""
    copy = _without_a_champion(project, folder)
    run = copy / "artifacts" / "tiny" / "runs" / project["runs"]["frog"].run_id
    (run / "classes.json").write_text(json.dumps(classes))
    meta = json.loads((run / "metadata.json").read_text())
    meta["files"]["classes.json"] = hash_file(run / "classes.json").sha256
    (run / "metadata.json").write_text(json.dumps(meta))
    return run / "classes.json"


@pytest.mark.parametrize("classes, words", [
    (["cat", "dog"], "names 2 classes but"),
    ({"0": "cat"}, "expected a list of 1 to 100,000 names, got dict"),
    (["cat", "cat", "frog"], "'cat' is listed twice"),
    (["cat", None, "frog"], "entry 1 is None"),
    (["cat", "\x1b[31mdog", "frog"], "entry 1 is '\\x1b[31mdog'"),
])
@pytest.mark.subprocess
def test_classes_json_is_checked_against_the_model(project, photos, tmp_path, classes, words):
    path = _with_classes(project, tmp_path / "copy", classes)
    r = cifar_predict({"root": path.parents[4]}, photos / "folder" / "test0.png", "--run", "latest")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"error: {path}" in r.stderr and words in r.stderr


def test_a_batch_keeps_model_inputs_not_file_bytes(project):
    """256 files of 2 MiB each (not images): once decoded or refused, a file's bytes are gone;
    before, a batch held all 256 (512 MiB here; 2.0 GB for the issue's 8 MiB files)."""
    import tracemalloc

    from tasks.predict.engine import Scorer
    from tasks.predict.inputs import Source
    from tasks.predict.resolve import resolve_model
    from tasks.predict.scoring import predict_sources

    scorer = Scorer(resolve_model(project["root"] / "artifacts", "tiny", "latest"))
    files = (Source(f"zero{i}.png", bytes(2 << 20)) for i in range(256))
    tracemalloc.start()
    items = list(predict_sources(scorer, files, 1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(items) == 256 and all(hasattr(i, "error") for i in items)
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB"


def test_small_batches_score_on_one_thread_with_the_same_answers(project):
    from tasks.predict.engine import SMALL_BATCH, Scorer
    from tasks.predict.resolve import resolve_model

    ref = resolve_model(project["root"] / "artifacts", "tiny", project["runs"]["fit"].run_id)
    scorer = Scorer(ref, threads=2)
    one = Scorer(ref, threads=1)
    assert scorer._small is not scorer._runner and one._small is one._runner
    x = np.asarray(project["data"].x_test)[np.arange(SMALL_BATCH + 1) % 24]
    whole = scorer.probabilities(x)  # on the two-thread interpreter
    parts = [scorer.probabilities(x[:SMALL_BATCH]), scorer.probabilities(x[SMALL_BATCH:])]  # on the one-thread one
    np.testing.assert_allclose(whole, np.concatenate(parts), rtol=1e-5, atol=1e-6)
    assert len(set(whole.argmax(axis=1))) > 1  # a model whose answers depend on the image


@pytest.mark.subprocess
def test_hostile_names_and_fifos_through_cifar_predict(project, photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    img = (photos / "folder" / "test0.png").read_bytes()
    (folder / "ok.png\rcat 0.999.png").write_bytes(img)
    (folder / "=HYPERLINK(1).png").write_bytes(img)
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(img)
    os.mkfifo(folder / "pipe.png")
    r = cifar_predict(project, folder, "--run", "latest", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "\r" not in r.stdout and "\r" not in r.stderr
    records = json.loads(r.stdout)
    names = [rec["file"] for rec in records]
    assert f"{folder}/ok.png\\x0dcat 0.999.png" in names and f"{folder}/caf\\xe9.png" in names
    assert f"{folder}/pipe.png is a FIFO (named pipe), not a regular file; skipped" in r.stderr
    r = cifar_predict(project, folder / "=HYPERLINK(1).png", "--run", "latest")
    assert r.stdout.startswith(f"{folder}/=HYPERLINK(1).png  frog")
