"""Training stage: the notebook's model, the tf.data input, devices, the cache, resume, locks.

Real Keras and TensorFlow on tiny data (64 random 16x16 images); the kill/resume, concurrency,
mirrored and multi-worker tests run real subprocesses (tests/train_worker.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from trainfolders import make_cache

from tasks.core.datacache import write_dataset_cache
from tasks.core.files import read_json
from tasks.prepare.config import PrepareConfig
from tasks.train.config import OptimizerConfig, TrainingConfig, TrainingError
from tasks.train.devices import resolve_runtime
from tasks.train.fit import make_optimizer
from tasks.train.inputs import RowReader, make_dataset
from tasks.train.model_folder import trained_problems
from tasks.train.models import MODELS, build_model
from tasks.train.progress import format_epoch_line
from tasks.train.run import run_training, train_key

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "train_worker.py"
TINY = TrainingConfig(epochs=2, batch_size=16)


def model_summary(model) -> list[dict]:
    """One row per layer: name, class, output shape (batch dim as None), parameter count."""
    rows = []
    for layer in model.layers:
        shape = layer.output.shape
        rows.append({"name": layer.name, "class": type(layer).__name__,
                     "output_shape": [None if d is None else int(d) for d in shape],
                     "params": int(layer.count_params())})
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("tiny"))


# --------------------------------------------------------------------------- the model
def test_seed_cnn_matches_the_notebook_layer_by_layer():
    model = build_model("seed_cnn", (32, 32, 3), 10)
    rows = model_summary(model)[1:]  # skip the InputLayer
    assert [(r["class"], r["output_shape"][1:], r["params"]) for r in rows] == [
        ("Conv2D", [32, 32, 32], 896),
        ("Conv2D", [30, 30, 32], 9248),
        ("MaxPooling2D", [15, 15, 32], 0),
        ("Dropout", [15, 15, 32], 0),
        ("Conv2D", [15, 15, 32], 9248),
        ("Conv2D", [13, 13, 32], 9248),
        ("MaxPooling2D", [6, 6, 32], 0),
        ("Dropout", [6, 6, 32], 0),
        ("Flatten", [1152], 0),
        ("Dense", [512], 590336),
        ("Dropout", [512], 0),
        ("Dense", [10], 5130),
    ]
    assert model.count_params() == 624_106  # the notebook's model.summary() total
    assert model.layers[-1].activation.__name__ == "softmax"


def test_seed_cnn_sizes_itself_from_the_data():
    model = build_model("seed_cnn", (28, 28, 1), 5)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 5)
    assert model_summary(model)[9]["output_shape"] == [None, 5 * 5 * 32]  # 28->26->13->11->5


def test_seed_cnn_keeps_a_float32_output_under_mixed_precision():
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_model("seed_cnn", (32, 32, 3), 10)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert mixed.layers[1].compute_dtype == "float16"
    assert mixed.layers[-1].compute_dtype == "float32" and mixed.output.dtype == "float32"


def test_an_unknown_model_is_refused_naming_the_known_ones():
    with pytest.raises(TrainingError, match=r"unknown model 'resnet9'; known models: .*seed_cnn"):
        build_model("resnet9", (32, 32, 3), 10)


def test_images_too_small_for_the_model_are_refused():
    with pytest.raises(TrainingError, match=r"cannot take images of shape \(8, 8, 3\)"):
        build_model("seed_cnn", (8, 8, 3), 10)


def test_optimizer_reproduces_keras2_decay():
    import keras

    opt = make_optimizer(OptimizerConfig("rmsprop", 1e-4, 1e-6))
    assert isinstance(opt, keras.optimizers.RMSprop)
    schedule = opt._learning_rate
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(1_000_000)) == pytest.approx(1e-4 / 2)  # lr / (1 + decay * step)
    assert isinstance(make_optimizer(OptimizerConfig("adam", 1e-3, 0.0)), keras.optimizers.Adam)
    sgd = make_optimizer(OptimizerConfig("sgd", 0.1, 0.0, momentum=0.9))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    assert float(sgd.learning_rate) == pytest.approx(0.1)


@pytest.mark.parametrize("cfg, gpus, expected", [
    ({}, 0, ("one_device", "float32", False)),
    ({}, 1, ("one_device", "mixed_float16", True)),
    ({}, 4, ("mirrored", "mixed_float16", True)),
    ({"mixed_precision": "off", "xla": "off"}, 1, ("one_device", "float32", False)),
    ({"mixed_precision": "mixed_bfloat16", "xla": "on"}, 0, ("one_device", "mixed_bfloat16", True)),
    ({"strategy": "multi_worker"}, 0, ("multi_worker", "float32", False)),
])
def test_resolve_runtime(cfg, gpus, expected):
    rt = resolve_runtime(TrainingConfig(**cfg), gpus)
    assert (rt.strategy, rt.precision, rt.xla) == expected


def test_format_epoch_line():
    logs = {"loss": 1.4712, "accuracy": 0.4749, "val_loss": 1.3561, "val_accuracy": 0.5123}
    assert format_epoch_line(3, 20, logs, 41.234) == (
        "epoch 3/20 loss 1.47 accuracy 0.47 val_loss 1.36 val_accuracy 0.51 (41.2 s)")


# --------------------------------------------------------------------------- input pipeline
def _ten_images():
    """Ten 4x4x3 images, image i filled with 25 * i, labels i % 3."""
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(4, 1).repeat(4, 2).repeat(3, 3) * 25
    y = (np.arange(10) % 3).astype(np.uint8)
    return x, y


def _epoch(ds):
    xs, ys = zip(*[(a.numpy(), b.numpy()) for a, b in ds])
    return np.concatenate(xs), np.concatenate(ys)


def _ids(batch: np.ndarray) -> np.ndarray:
    """Which of ``_ten_images`` each scaled image is."""
    return np.rint(batch[:, 0, 0, 0] * 255 / 25).astype(int)


def test_input_pipeline_gives_each_image_once_as_float32_with_its_one_hot_label():
    x, y = _ten_images()
    x1, y1 = _epoch(make_dataset(x, y, 3, 4, shuffle=True, seed=7))
    assert x1.dtype == np.float32 and y1.dtype == np.float32 and x1.shape == (10, 4, 4, 3)
    ids1 = _ids(x1)
    assert sorted(ids1) == list(range(10))  # every image once
    np.testing.assert_array_equal(y1.argmax(1), ids1 % 3)  # labels stay with their images
    assert y1.sum(1).tolist() == [1.0] * 10


def test_input_pipeline_reshuffles_each_epoch_in_a_seeded_order():
    x, y = _ten_images()
    ds = make_dataset(x, y, 3, 4, shuffle=True, seed=7)
    (x1, _), (x2, _) = _epoch(ds), _epoch(ds)
    ids1, ids2 = _ids(x1), _ids(x2)
    assert sorted(ids2) == list(range(10))  # every image once
    assert list(ids1) != list(ids2)  # reshuffled per epoch
    again = _epoch(make_dataset(x, y, 3, 4, shuffle=True, seed=7))[0]
    np.testing.assert_array_equal(again, x1)  # same seed, same order


def test_input_pipeline_scales_and_standardises_the_pixels():
    x, y = _ten_images()
    plain = _epoch(make_dataset(x, y, 3, 4))[0]
    np.testing.assert_allclose(plain[:, 0, 0, 0], np.arange(10) * 25 / 255, rtol=1e-6)
    std = _epoch(make_dataset(x, y, 3, 4, mean=[0.5] * 3, std=[0.25] * 3))[0]
    np.testing.assert_allclose(std, (plain - 0.5) / 0.25, rtol=1e-5)


def test_input_pipeline_reads_the_memory_mapped_cache_by_row(tmp_path):
    # The cache's arrays are read per batch with positional reads (nothing of the dataset held in
    # the process): the batches equal the in-memory path's, image for image, label for label.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (37, 5, 6, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 37, dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    reader = RowReader(mapped)
    assert reader.filename == str(tmp_path / "x.npy")  # the pread path, not an in-memory copy
    idx = np.array([36, 0, 17, 17, 5])
    np.testing.assert_array_equal(reader(idx), x[idx])
    reader.vectored = False  # the os.pread fallback (platforms without preadv)
    np.testing.assert_array_equal(reader(idx), x[idx])
    reader.vectored = True
    for a, b in zip(make_dataset(mapped, y, 4, 8, shuffle=True, seed=5),
                    make_dataset(x, y, 4, 8, shuffle=True, seed=5)):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not hasattr(RowReader(mapped[1:]), "filename")  # a view is indexed in memory instead


def test_input_pipeline_names_a_cache_file_cut_short_under_it(tmp_path):
    x = np.zeros((10, 4, 4, 3), np.uint8)
    np.save(tmp_path / "x.npy", x)
    reader = RowReader(np.load(tmp_path / "x.npy", mmap_mode="r"))
    with open(tmp_path / "x.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 48 * 3)  # the last three rows gone
    for vectored in (True, False):
        reader.vectored = vectored
        with pytest.raises(TrainingError, match=r"x\.npy: row 9 is cut short \(0 of 48 bytes\)"):
            reader(np.array([0, 9]))
    with pytest.raises(TrainingError, match="differ in length: 10 vs 9"):
        make_dataset(x, np.zeros(9, np.uint8), 2, 4)


def test_augmentation_flips_and_shifts_within_the_image():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    x[0] = 77  # a constant image stays constant under flips and reflect-padded crops
    ds = make_dataset(x, np.zeros(32, np.uint8), 2, 32, augment=True, seed=3)
    a1, a2 = (next(iter(ds))[0].numpy() for _ in range(2))
    assert a1.shape == (32, 8, 8, 3)
    np.testing.assert_allclose(a1[0], 77 / 255, rtol=1e-6)
    assert not np.allclose(a1, x / 255) and not np.allclose(a1, a2)  # changes, per epoch
    # every augmented image's centre 0..3 rows lie inside the original (flipped or not)
    for orig, aug in zip(x[1:], (a1[1:] * 255).round().astype(np.uint8)):
        cands = [orig, orig[:, ::-1]]
        padded = [np.pad(c, ((4, 4), (4, 4), (0, 0)), mode="reflect") for c in cands]
        assert any((p[i:i + 8, j:j + 8] == aug).all() for p in padded for i in range(9) for j in range(9))


# --------------------------------------------------------------------------- key + stage
def test_cache_key_covers_data_model_config_and_preprocessing(tiny):
    p = PrepareConfig()
    base = train_key(tiny, None, "seed_cnn", TINY, p)
    assert base == train_key(tiny, None, "seed_cnn", TrainingConfig(epochs=2, batch_size=16), p)
    assert len({
        base,
        train_key(tiny, None, "seed_cnn", TrainingConfig(epochs=3, batch_size=16), p),
        train_key(tiny, None, "seed_cnn", TrainingConfig(epochs=2, batch_size=16, seed=1), p),
        train_key(tiny, None, "seed_cnn", TrainingConfig(
            epochs=2, batch_size=16, optimizer=OptimizerConfig(learning_rate=1e-3)), p),
        train_key(type(tiny)(**{**tiny.__dict__, "content": "other-arrays"}), None, "seed_cnn", TINY, p),
    }) == 5
    assert "other_model" not in MODELS

    class Validation:
        summary = {"channel_mean": [0.5, 0.5, 0.5], "channel_std": [0.2, 0.2, 0.2]}

    assert train_key(tiny, Validation(), "seed_cnn", TINY, PrepareConfig(standardize=True)) != base
    assert train_key(tiny, Validation(), "seed_cnn", TINY, p) == base  # stats unused: same key


def test_the_key_follows_the_data_not_the_decoder_that_wrote_it(tmp_path):
    """A decoder change gives a new dataset fingerprint (the cache is rebuilt); if the arrays it
    writes are the same, the training key is the same and nothing is retrained."""
    rng = np.random.default_rng(3)
    arrays = (rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), (np.arange(20) % 10).astype(np.uint8),
              rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8), (np.arange(10) % 10).astype(np.uint8))
    classes = [f"c{i}" for i in range(10)]
    same_a = write_dataset_cache(tmp_path / "fp-old-decoder", *arrays, classes, {"source": "a"})
    same_b = write_dataset_cache(tmp_path / "fp-new-decoder", *arrays, classes, {"source": "b"})
    other = write_dataset_cache(tmp_path / "fp-other", arrays[0] ^ 1, *arrays[1:], classes, {})
    assert same_a.fingerprint != same_b.fingerprint
    p = PrepareConfig()
    assert same_a.content and same_a.content == same_b.content != other.content
    assert train_key(same_a, None, "seed_cnn", TINY, p) == train_key(same_b, None, "seed_cnn", TINY, p)
    assert train_key(same_a, None, "seed_cnn", TINY, p) != train_key(other, None, "seed_cnn", TINY, p)


@contextlib.contextmanager
def _cifar_lines():
    """The messages of the ``cifar`` logger (INFO and up) while the block runs."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger, handler = logging.getLogger("cifar"), Collect(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One real training into a fresh data folder, and the cifar logger's lines meanwhile."""
    data = tmp_path_factory.mktemp("a")
    with _cifar_lines() as lines:
        rec = run_training(tiny, None, "seed_cnn", TINY, PrepareConfig(), data)
    return SimpleNamespace(rec=rec, data=data, out=Path(rec.path), lines=lines,
                           hist=read_json(Path(rec.path) / "history.json")["epochs"])


def test_a_training_commits_its_model_folder(trained):
    rec, out, hist = trained.rec, trained.out, trained.hist
    assert out == trained.data / "models" / rec.key and not trained_problems(out)
    meta = read_json(out / "train.json")
    assert [r["epoch"] for r in hist] == [1, 2] and meta["epochs"] == 2
    assert set(hist[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert (meta["strategy"], meta["precision"], meta["xla"], meta["resumed_from_epoch"]) == (
        "one_device", "float32", False, 0)
    # 16x16 input: 16->14->7->7->5->2, Flatten 2*2*32 = 128, Dense 128*512+512 = 66,048
    assert meta["params"] == 896 + 3 * 9248 + 66_048 + 5130 == 99_818
    assert meta["config"]["batch_size"] == 16
    assert meta["preprocess"] == {"mean": None, "std": None}
    assert meta["seconds"] == pytest.approx(sum(r["seconds"] for r in hist), abs=1e-2)
    assert not (trained.data / "models" / f"{rec.key}.work").exists()


def test_a_training_logs_one_line_per_epoch(trained):
    lines = [line for line in trained.lines if line.startswith("epoch ")]
    assert len(lines) == 2
    assert re.fullmatch(r"epoch 2/2 loss \d+\.\d\d accuracy \d\.\d\d val_loss \d+\.\d\d "
                        r"val_accuracy \d\.\d\d \(\d+\.\d s\)", lines[1])


def test_the_committed_model_loads_and_predicts(trained):
    import keras

    model = keras.models.load_model(trained.out / "model.keras")
    assert model.predict(np.zeros((2, 16, 16, 3), np.float32), verbose=0).shape == (2, 10)


def test_the_same_key_is_reused_and_nothing_trained(trained, tiny, caplog):
    caplog.set_level(logging.INFO, logger="cifar")
    t0 = time.perf_counter()
    assert run_training(tiny, None, "seed_cnn", TINY, PrepareConfig(), trained.data) == trained.rec
    assert time.perf_counter() - t0 < 2 and "already trained" in caplog.text
    assert not [r for r in caplog.records if r.getMessage().startswith("epoch ")]


def _copy_of(trained, folder: Path) -> Path:
    """The trained data folder copied to ``folder``; its model folder there."""
    shutil.copytree(trained.data, folder)
    return folder / "models" / trained.rec.key


def test_a_corrupted_model_is_detected_and_retrained(trained, tiny, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cifar")
    out = _copy_of(trained, tmp_path / "a")
    (out / "model.keras").write_bytes(b"garbage")
    assert "altered" in trained_problems(out)[0]
    run_training(tiny, None, "seed_cnn", TINY, PrepareConfig(), tmp_path / "a")
    assert not trained_problems(out) and "epoch 2/2" in caplog.text


def test_force_retrains_an_intact_model(trained, tiny, tmp_path):
    out = _copy_of(trained, tmp_path / "a")
    before = read_json(out / "train.json")["completed_at"], (out / "train.json").stat().st_mtime_ns
    run_training(tiny, None, "seed_cnn", TINY, PrepareConfig(), tmp_path / "a", force=True)
    assert (out / "train.json").stat().st_mtime_ns != before[1] and not trained_problems(out)


def test_the_same_seed_on_cpu_gives_the_same_history_in_another_folder(trained, tiny, tmp_path):
    # while another thread draws from Python's random (as Prefect's threads or a second training
    # may): Keras takes its default seeds from there, and this run must not see those draws
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            random.random()
            time.sleep(0)

    drawer = threading.Thread(target=draw, daemon=True)
    drawer.start()
    try:
        other = run_training(tiny, None, "seed_cnn", TINY, PrepareConfig(), tmp_path / "b")
    finally:
        stop.set()
        drawer.join()
    assert other.key == trained.rec.key
    for a, b in zip(trained.hist, read_json(Path(other.path) / "history.json")["epochs"]):
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k


def test_a_different_seed_changes_the_history(trained, tiny, tmp_path):
    # (so the comparison of the test above can fail)
    diff = run_training(tiny, None, "seed_cnn", TrainingConfig(epochs=1, batch_size=16, seed=5),
                        PrepareConfig(), tmp_path / "b")
    assert read_json(Path(diff.path) / "history.json")["epochs"][0]["loss"] != pytest.approx(
        trained.hist[0]["loss"], rel=1e-4, abs=1e-5)


def test_precision_and_xla_switches_take_effect(tiny, tmp_path):
    """bf16 on CPU is opt-in; XLA can be forced on. Both end up in the model and train.json."""
    import keras

    cfg = TrainingConfig(epochs=1, batch_size=16, mixed_precision="mixed_bfloat16", xla="on")
    rec = run_training(tiny, None, "seed_cnn", cfg, PrepareConfig(), tmp_path)
    meta = read_json(Path(rec.path) / "train.json")
    assert (meta["precision"], meta["xla"], meta["strategy"]) == ("mixed_bfloat16", True, "one_device")
    assert meta["devices"] == ["/device:CPU:0"]
    model = keras.models.load_model(Path(rec.path) / "model.keras")
    assert model.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert model.layers[-1].dtype_policy.name == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training


# --------------------------------------------------------------------------- subprocesses
class Proc:
    """A worker subprocess whose stdout lines are collected as they arrive."""

    def __init__(self, *args, env=None):
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        self.p = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], cwd=ROOT,
                                  env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.p.poll() is not None and not self._t.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 180) -> dict:
        rc = self.p.wait(timeout)
        self._t.join(5)
        assert rc == 0, "worker failed:\n" + "\n".join(self.lines)
        return json.loads(self.wait_for(r"^RESULT ").removeprefix("RESULT "))

    def epoch_lines(self) -> list[str]:
        return [re.sub(r"^\[pid \d+\] ", "", l) for l in self.lines if re.search(r"\] epoch \d+/", l)]

    def kill(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(30)


@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_killed_run_resumes_at_the_next_epoch_and_its_lock_dies_with_it(tiny, tmp_path):
    """kill -9 after epoch 2 of 4 while a second run waits on the lock: the second run gets the
    lock at once, resumes at epoch 3 from the backup and commits one continuous 4-epoch history."""
    data = tmp_path / "data"
    first = Proc(tiny.path, data, "--epochs", 4, "--pause-at-epoch", 3)
    try:
        first.wait_for(r"^PAUSED 3$", timeout=150)
        assert [l.split(" loss")[0] for l in first.epoch_lines()] == ["epoch 1/4", "epoch 2/4"]
        second = Proc(tiny.path, data, "--epochs", 4)
        second.wait_for(r"waiting for training of seed_cnn", timeout=150)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nfirst run's output:\n" + "\n".join(first.lines)) from None
    finally:
        first.kill()
    res = second.finish()
    out = Path(res["path"])
    assert not trained_problems(out)
    meta, hist = read_json(out / "train.json"), read_json(out / "history.json")["epochs"]
    assert meta["resumed_from_epoch"] == 2
    assert [l.split(" loss")[0] for l in second.epoch_lines()] == ["epoch 3/4", "epoch 4/4"]
    assert any("resuming after epoch 2/4" in l for l in second.lines)
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    # epochs 1-2 are the killed run's own rows, 3-4 the second run's
    for row, line in zip(hist, first.epoch_lines() + second.epoch_lines()):
        assert line.startswith(f"epoch {row['epoch']}/4 loss {row['loss']:.2f} accuracy {row['accuracy']:.2f}")


@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_two_concurrent_runs_train_once(tiny, tmp_path):
    data = tmp_path / "data"
    procs = [Proc(tiny.path, data, "--epochs", 2) for _ in range(2)]
    results = [p.finish() for p in procs]
    assert results[0] == results[1]
    trained = [p for p in procs if p.epoch_lines()]
    reused = [p for p in procs if not p.epoch_lines()]
    assert len(trained) == 1 and len(reused) == 1
    assert any("trained by a concurrent run" in l or "already trained" in l for l in reused[0].lines)
    assert not trained_problems(results[0]["path"])


@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_mirrored_strategy_on_two_logical_cpus(tiny, tmp_path):
    res = Proc(tiny.path, tmp_path / "data", "--epochs", 1, "--strategy", "mirrored",
               "--logical-cpus", 2).finish()
    meta = read_json(Path(res["path"]) / "train.json")
    assert meta["strategy"] == "mirrored" and meta["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in meta["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert len(read_json(Path(res["path"]) / "history.json")["epochs"]) == 1


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_multi_worker_two_processes_only_the_chief_writes(tiny, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [Proc(tiny.path, tmp_path / "data", "--epochs", 1, "--strategy", "multi_worker",
                  env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
             for i in range(2)]
    try:
        results = [p.finish(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert results[0] == results[1]
    meta = read_json(Path(results[0]["path"]) / "train.json")
    assert meta["strategy"] == "multi_worker" and meta["replicas"] == 2
    # One synchronous training: both workers log the same all-reduced metrics (seconds aside).
    lines = [[l.rsplit(" (", 1)[0] for l in p.epoch_lines()] for p in procs]
    assert len(lines[0]) == 1 and lines[0] == lines[1]
    assert any("trained seed_cnn" in l for l in procs[0].lines)  # the chief commits ...
    assert not any("trained seed_cnn" in l for l in procs[1].lines)  # ... the other does not
    models = tmp_path / "data" / "models"
    assert sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) == [results[0]["key"]]


def test_multi_worker_without_tf_config_says_what_to_do(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TrainingError, match="TF_CONFIG is not set"):
        run_training(tiny, None, "seed_cnn", TrainingConfig(epochs=1, strategy="multi_worker"),
                     PrepareConfig(), tmp_path)


@pytest.mark.parametrize("raw, says", [
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": "x"}}',
     "index 'x'"),
    ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}', "lists of"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": []}', "task that is a JSON list"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "lists 1 worker"),
    ("[1, 2]", "JSON list, not an object"),
])
def test_a_malformed_tf_config_is_a_clear_error_not_a_traceback(monkeypatch, raw, says):
    from tasks.train.devices import worker_role

    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(TrainingError, match="TF_CONFIG") as err:
        worker_role("multi_worker")
    assert says in str(err.value) and '"task": {"type": "worker", "index": 0}' in str(err.value)


# --------------------------------------------------------------------------- Prefect
@pytest.mark.engine
def test_train_model_task_caches_and_reports_progress(prefect_engine, tiny, tmp_path):
    """The task as the flow binds it (results and cache records under <data_dir>/prefect/)."""
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.core.caching import bind_local
    from tasks.train.tasks import train_model

    data = str(tmp_path / "data")
    bound = bind_local(train_model, data)
    cfg = TrainingConfig(epochs=1, batch_size=16)

    @flow
    def twice():
        a = bound(tiny, None, "seed_cnn", cfg, PrepareConfig(), data, return_state=True)
        b = bound(tiny, None, "seed_cnn", cfg, PrepareConfig(), data, return_state=True)
        return a, b

    a, b = twice()
    assert a.name == "Completed" and b.name == "Cached" and a.result() == b.result()
    rec = a.result()
    assert not trained_problems(rec.path)

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"train-{rec.key}"])))

    arts = asyncio.run(artifacts())
    assert arts and arts[0].type == "progress" and float(arts[0].data) == 100.0

    # The stored model is deleted: Prefect's cache record no longer counts, the task retrains.
    (Path(rec.path) / "model.keras").unlink()
    c, _ = twice()
    assert c.name == "Completed" and c.result() == rec and not trained_problems(rec.path)


def test_no_per_batch_hook_unless_the_fault_matrix_arms_one(tmp_path, monkeypatch):
    """A per-batch Keras callback costs every training step: the fit.mid-epoch fault point adds
    one only when CIFAR_FAULT_POINT names it."""
    from tasks.core import faults
    from tasks.train.progress import EpochTracker

    monkeypatch.delenv(faults.ENV, raising=False)
    plain = EpochTracker(None, 1, "k", persist=False).recorder
    assert "on_train_batch_end" not in type(plain).__dict__
    monkeypatch.setenv(faults.ENV, "fit.mid-epoch")
    held = EpochTracker(None, 1, "k", persist=False).recorder
    assert "on_train_batch_end" in type(held).__dict__
