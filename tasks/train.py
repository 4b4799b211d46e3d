"""Stage 3: training (issue: training).

The notebook's CNN (``seed_cnn``) and any other registered model, trained from the memory-mapped
uint8 dataset cache through ``tf.data``; GPU-aware (mixed precision + XLA by default on a GPU),
``tf.distribute`` strategies, resumable (``BackupAndRestore``), content-cached and single-flight.

Folder layout under ``<data_dir>/models/``::

    <key>/            model.keras, history.json, train.json (written last: the commit point)
    <key>.work/       backup/ (BackupAndRestore) and history.json (per-epoch rows so far);
                      derived from the key, not the run id, so any later run resumes it
    <key>.lock        flock: one training per key at a time; the kernel drops it on kill -9

Multi-worker training (``strategy: multi_worker``): start the same flow on every machine with
``TF_CONFIG`` set per process, e.g. ``{"cluster": {"worker": ["host1:12345", "host2:12345"]},
"task": {"type": "worker", "index": 0}}`` (index 0 is the chief, which alone writes the model);
``data_dir`` must be a shared folder or the chief's. ``batch_size`` is the global batch.
With a Prefect work pool, deploy the flow once per worker with its own TF_CONFIG in the job
variables (``job_variables={"env": {"TF_CONFIG": ...}}``) and run them together.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from prefect import task

from tasks.core.settings import SETTINGS
from tasks.core.datacache import DatasetRecord, load_dataset
from tasks.core.caching import VerifiedCache
from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_json, file_lock, read_json
from tasks.core.hashing import code_fingerprint, hash_file, stable_hash, to_jsonable
from tasks.core.logs import get_logger
from tasks.core import pixels
from tasks.prepare import PrepareConfig



class TrainingError(CifarError):
    """Training cannot start with these settings (unknown model, input too small, no TF_CONFIG)."""


@dataclass(frozen=True)
class OptimizerConfig:
    """``training.optimizer:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    name: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    learning_rate: float = 1e-4
    decay: float = 1e-6  # Keras 2's per-step `decay`, as InverseTimeDecay(lr, 1, decay)
    momentum: float = 0.0


@dataclass(frozen=True)
class TrainingConfig:
    """``training:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    epochs: int = 20
    batch_size: int = 32
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = 42
    shuffle: bool = True
    augment: bool = False  # random flip + pad-and-crop, in tf.data
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    mixed_precision: Literal["auto", "off", "mixed_float16", "mixed_bfloat16"] = "auto"
    xla: Literal["auto", "on", "off"] = "auto"

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                out.append((key, f"must be at least 1, got {getattr(self, key)}"))
        if self.optimizer.learning_rate <= 0:
            out.append(("optimizer.learning_rate", f"must be > 0, got {self.optimizer.learning_rate}"))
        if self.optimizer.decay < 0:
            out.append(("optimizer.decay", f"must be >= 0, got {self.optimizer.decay}"))
        return out


@dataclass(frozen=True)
class TrainRecord:
    """What the training stage hands on: the cache key and the committed model folder."""

    key: str
    path: str  # <data_dir>/models/<key>/


# --------------------------------------------------------------------------- models
# name -> builder(input_shape, num_classes) -> keras.Model. Filled below by @register_model.
MODELS: dict = {}


def register_model(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


@register_model("seed_cnn")
def seed_cnn(input_shape, num_classes):
    """The course notebook's CNN, layer for layer (624,106 parameters on 32x32x3, 10 classes).

    The softmax runs in float32 so mixed precision keeps a stable output.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for _ in range(2):  # the notebook's block, twice: Conv32-same, Conv32, MaxPool, Dropout .25
        x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(32, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def build_model(name: str, input_shape, num_classes: int):
    """The registered model ``name``, sized for the data; a person-readable error otherwise."""
    if name not in MODELS:
        raise TrainingError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}. "
                            "Set `model:` in pipelines.yaml to one of them or register a builder.")
    try:
        return MODELS[name](tuple(input_shape), int(num_classes))
    except ValueError as exc:
        raise TrainingError(f"model {name!r} cannot take images of shape {tuple(input_shape)} "
                            f"({num_classes} classes): {exc}. Use larger images or another model.") from exc


def model_summary(model) -> list[dict[str, Any]]:
    """One row per layer: name, class, output shape (batch dim as None), parameter count."""
    rows = []
    for layer in model.layers:
        shape = layer.output.shape
        rows.append({"name": layer.name, "class": type(layer).__name__,
                     "output_shape": [None if d is None else int(d) for d in shape],
                     "params": int(layer.count_params())})
    return rows


def make_optimizer(cfg: OptimizerConfig):
    """The optimizer; Keras 2's per-step ``decay`` becomes InverseTimeDecay(lr, 1, decay)."""
    import keras

    lr: Any = cfg.learning_rate
    if cfg.decay > 0:
        lr = keras.optimizers.schedules.InverseTimeDecay(
            cfg.learning_rate, decay_steps=1, decay_rate=cfg.decay)
    if cfg.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, momentum=cfg.momentum)
    if cfg.name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if cfg.name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum)
    raise TrainingError(f"training.optimizer.name: unknown optimizer {cfg.name!r}; use rmsprop, adam or sgd")


# --------------------------------------------------------------------------- input pipeline
def augment_batch(images, seed):
    """Random horizontal flip and pad-4-reflect-then-crop, per image, on a uint8 batch.

    ``seed`` is a shape-[2] int tensor (stateless ops: the same seed gives the same batch).
    """
    import tensorflow as tf

    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    flip = tf.random.stateless_uniform([n], seed=flip_seed) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    pad = min(4, h - 1, w - 1)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    offsets = tf.random.stateless_uniform([n, 2], seed=crop_seed, minval=0, maxval=2 * pad + 1,
                                          dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(h)[None, :]
    cols = offsets[:, 1:] + tf.range(w)[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


class RowReader:
    """Rows of an ``(N, ...)`` array by index, for the input pipeline's per-batch gather.

    A memory-mapped ``.npy`` (the dataset cache) is read with positional ``preadv`` calls into the
    batch buffer: the rows come from the kernel's page cache and nothing of the dataset stays
    resident in this process (a mapping or a TensorFlow copy would add 180 MB on CIFAR-10).
    Any other array is indexed in memory. Safe to call from several threads at once.
    """

    def __init__(self, a):
        import mmap

        import numpy as np

        self.shape = tuple(a.shape[1:])
        self.dtype = a.dtype
        self.row_bytes = int(np.prod(self.shape, dtype=np.int64)) * a.dtype.itemsize
        self._array = None
        self._fd = None
        self.vectored = hasattr(os, "preadv")  # else os.pread and a copy (platforms without it)
        # Only an original mapping of a C-ordered file (a view's offset would not be its own);
        # where the OS has no positional reads at all (Windows), the mapping is indexed instead.
        if (isinstance(a, np.memmap) and isinstance(a.base, mmap.mmap) and a.flags.c_contiguous
                and getattr(a, "filename", None) and hasattr(os, "pread")):
            self.filename, self.offset = str(a.filename), int(a.offset)
            self._fd = os.open(self.filename, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        else:
            self._array = np.asarray(a)

    def __call__(self, idx):
        import numpy as np

        if self._array is not None:
            return self._array[idx]
        out = np.empty((len(idx), *self.shape), self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        size, base = self.row_bytes, self.offset
        for j, i in enumerate(np.asarray(idx, np.int64).tolist()):
            row = view[j * size:(j + 1) * size]
            if self.vectored:
                got = os.preadv(self._fd, [row], base + i * size)
            else:
                data = os.pread(self._fd, size, base + i * size)
                got = len(data)
                row[:got] = data
            if got != size:
                raise TrainingError(f"{self.filename}: row {i} is cut short ({got} of {size} bytes); "
                                    "the dataset cache changed under training -- run again to rebuild it")
        return out

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_dataset(x, y, num_classes: int, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 augment: bool = False, mean=None, std=None):
    """A ``tf.data`` pipeline over uint8 arrays (memory-mapped ones welcome).

    An index stream is shuffled (seeded, reshuffled every epoch) and batched; each batch's rows
    are read from the arrays (``RowReader``: no copy of the dataset is held), augmented (optional),
    scaled to float32 and one-hot encoded per batch by ``tasks.prepare``'s functions, then
    prefetched.
    """
    import numpy as np
    import tensorflow as tf

    from tasks.core.pixels import one_hot, scale_pixels

    if len(x) != len(y):
        raise TrainingError(f"images and labels differ in length: {len(x)} vs {len(y)}")
    read_images = RowReader(x)
    labels = np.array(y)  # N bytes, copied out of any mapping
    n = len(labels)
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
                                 .batch(2))

    def gather(idx):
        return read_images(idx), labels[idx]

    def load(idx, rnd=None):
        xb, yb = tf.numpy_function(gather, [idx], [tf.as_dtype(read_images.dtype),
                                                    tf.as_dtype(labels.dtype)], stateful=False)
        xb = tf.ensure_shape(xb, (None, *read_images.shape))
        yb = tf.ensure_shape(yb, (None,))
        if rnd is not None:
            xb = augment_batch(xb, rnd)
        return scale_pixels(xb, mean, std), one_hot(yb, num_classes)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotune optimisation thread: deleting an iterator waits for that thread's next wake-up,
    # and Keras deletes one per epoch -- measured here (TF 2.21, 2 shared cores) as 2-29 s stalls
    # at epoch ends / after fit(). The per-batch work is tiny; the AUTOTUNE buffer/parallelism
    # values below still apply (without the model thread).
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class Runtime:
    strategy: str  # one_device | mirrored | multi_worker
    precision: str  # float32 | mixed_float16 | mixed_bfloat16
    xla: bool
    gpus: int


def resolve_runtime(cfg: TrainingConfig, gpus: int) -> Runtime:
    """Turn the "auto" settings into concrete ones for a machine with ``gpus`` GPUs.

    GPU: mixed_float16 + XLA; CPU: float32, no XLA (bf16 on CPU is opt-in). More than one GPU:
    mirrored.
    """
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "mirrored" if gpus > 1 else "one_device"
    precision = {"auto": "mixed_float16" if gpus else "float32", "off": "float32"}.get(
        cfg.mixed_precision, cfg.mixed_precision)
    xla = {"auto": gpus > 0, "on": True, "off": False}[cfg.xla]
    return Runtime(strategy=strategy, precision=precision, xla=xla, gpus=gpus)


def _tf_config() -> dict[str, Any] | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise TrainingError(f"TF_CONFIG is not valid JSON ({exc}): {raw[:200]!r}") from exc


def worker_role(strategy: str) -> tuple[bool, str]:
    """(is_chief, label) of this process: always chief unless multi_worker says otherwise."""
    if strategy != "multi_worker":
        return True, "chief"
    conf = _tf_config()
    if not conf or "cluster" not in conf or "task" not in conf:
        raise TrainingError(
            "training.strategy is multi_worker but TF_CONFIG is not set (or lacks cluster/task). "
            'Set it per process, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\', or use strategy: auto.')
    kind, index = conf["task"].get("type", "worker"), int(conf["task"].get("index", 0))
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in conf["cluster"])
    return chief, f"{kind}-{index}"


def make_strategy(runtime: Runtime):
    import tensorflow as tf

    if runtime.strategy == "multi_worker":

        class MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15's fit() under this strategy calls strategy.reduce on (x, y) tuples (the
            # collective strategy reduces one value at a time) and on scalar metrics with
            # axis=0 (invalid for a scalar). Reduce part by part; scalars across replicas only.
            def reduce(self, reduce_op, value, axis):
                parent = super()

                def one(v):
                    local = self.experimental_local_results(v)[0]
                    scalar = getattr(local, "shape", None) is not None and local.shape.rank == 0
                    return parent.reduce(reduce_op, v, None if scalar else axis)

                return tf.nest.map_structure(one, value)

        return MultiWorker()
    if runtime.strategy == "mirrored":
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    # one_device: TensorFlow's default strategy (no distribution wrapper, no per-step overhead);
    # it places the model on the first GPU when there is one.
    return tf.distribute.get_strategy()


def strategy_devices(strategy, runtime: Runtime) -> list[str]:
    """The devices this process trains on."""
    if runtime.strategy != "one_device":
        return list(strategy.extended.worker_devices)
    return ["/device:GPU:0" if runtime.gpus else "/device:CPU:0"]


# --------------------------------------------------------------------------- cache key + files
def preprocess_stats(validation, prepare: PrepareConfig) -> dict[str, Any]:
    """{"mean", "std"}: the train split's channel statistics when ``prepare.standardize``."""
    if not prepare.standardize:
        return {"mean": None, "std": None}
    summary = getattr(validation, "summary", None) or {}
    mean, std = summary.get("channel_mean"), summary.get("channel_std")
    if mean is None or std is None:
        raise TrainingError("prepare.standardize is on but the validation summary has no "
                            "channel_mean/channel_std; rerun the validation stage.")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def train_key(dataset: DatasetRecord, validation, model: str, cfg: TrainingConfig,
              prepare: PrepareConfig) -> str:
    """Content key: the data's content hash, model, full training config (seed included), the inputs'
    preprocessing and the code of this stage and of the scaling it uses."""
    return stable_hash("train", dataset.content or dataset.fingerprint, model, cfg,
                       {"standardize": prepare.standardize, **preprocess_stats(validation, prepare)},
                       code_fingerprint(sys.modules[__name__], pixels))


def model_dir(data_dir, key: str) -> Path:
    return Path(data_dir) / "models" / key


def work_dir(data_dir, key: str) -> Path:
    return Path(data_dir) / "models" / f"{key}.work"


def trained_problems(path) -> list[str]:
    """Why the model folder cannot be reused (empty: it can): train.json is the commit point and
    carries model.keras's sha256."""
    path = Path(path)
    meta = path / "train.json"
    if not meta.is_file():
        return [f"{meta} is missing (training never finished)"]
    try:
        digest = read_json(meta)["model_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{meta} is unreadable: {exc!r}"]
    model = path / "model.keras"
    if not model.is_file():
        return [f"{model} is missing"]
    if hash_file(model).sha256 != digest:
        return [f"{model} was altered (sha256 differs from train.json)"]
    if not (path / "history.json").is_file():
        return [f"{path / 'history.json'} is missing"]
    return []


def format_epoch_line(epoch: int, epochs: int, logs: dict[str, float], seconds: float) -> str:
    """``epoch 3/20 loss 1.47 accuracy 0.47 val_loss 1.36 val_accuracy 0.51 (41.2 s)``"""
    parts = [f"epoch {epoch}/{epochs}"]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if name in logs:
            parts.append(f"{name} {float(logs[name]):.2f}")
    return " ".join(parts) + f" ({seconds:.1f} s)"


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


class _EpochTracker:
    """Per-epoch history rows (persisted atomically to the work dir), the log line, progress.

    Two Keras callbacks share it: ``before`` sits ahead of BackupAndRestore and writes the row
    before the backup is taken; ``after`` follows it, so the log line (the "epoch N is safe"
    marker) appears only once both are on disk. On resume, rows past the restored epoch (from
    an epoch whose backup never landed) are dropped, so the history stays continuous.
    """

    def __init__(self, rows_path: Path | None, epochs: int, key: str, persist: bool):
        import keras

        self.rows_path, self.epochs, self.key, self.persist = rows_path, epochs, key, persist
        self.rows: list[dict[str, Any]] = []
        if rows_path is not None and rows_path.is_file():
            self.rows = read_json(rows_path)["epochs"]
        self.resumed_from = 0
        self.log = get_logger()
        self.artifact_id = None
        self._t0 = 0.0
        tracker = self

        class Before(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                tracker._t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()
                                              if k in ("loss", "accuracy", "val_loss", "val_accuracy")},
                       "seconds": round(time.perf_counter() - tracker._t0, 3)}
                tracker.rows = [r for r in tracker.rows if r["epoch"] <= epoch] + [row]
                if tracker.persist:
                    atomic_write_json(tracker.rows_path, {"epochs": tracker.rows})

        class After(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                tracker.resumed_from = int(self.model._initial_epoch or 0)
                tracker.rows = [r for r in tracker.rows if r["epoch"] <= tracker.resumed_from]
                if tracker.resumed_from:
                    tracker.log.info("resuming after epoch %d/%d from the backup",
                                     tracker.resumed_from, tracker.epochs)
                tracker._progress(create=True)

            def on_epoch_end(self, epoch, logs=None):
                tracker.log.info(format_epoch_line(epoch + 1, tracker.epochs, logs or {},
                                                   tracker.rows[-1]["seconds"]))
                tracker._progress()

        self.before, self.after = Before(), After()

    def _progress(self, create: bool = False) -> None:
        """The Prefect progress artifact (only inside a Prefect run, only on the chief)."""
        if not self.persist or not _in_prefect_run():
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        done = len(self.rows)
        pct = 100.0 * done / self.epochs
        desc = f"training {self.key}: {done}/{self.epochs} epochs"
        try:
            if create or self.artifact_id is None:
                self.artifact_id = create_progress_artifact(pct, key=f"train-{self.key}", description=desc)
            else:
                update_progress_artifact(self.artifact_id, pct, description=desc)
        except Exception as exc:  # noqa: BLE001 - the UI's progress bar must not kill a training
            self.log.warning("could not update the progress artifact: %r", exc)


# --------------------------------------------------------------------------- the stage
def run_training(dataset: DatasetRecord, validation, model: str, cfg: TrainingConfig,
                 prepare: PrepareConfig, data_dir, force: bool = False,
                 extra_callbacks: tuple = ()) -> TrainRecord:
    """Train ``model`` on the cached dataset unless an intact result for the same key exists.

    Idempotent and single-flight: a verified ``<data_dir>/models/<key>/`` returns at once; else
    the key's file lock is taken, the folder re-checked (a concurrent run may just have written
    it), and training runs, resuming from ``<key>.work/backup`` if a killed run left one.
    ``force`` retrains from scratch. ``extra_callbacks`` are appended to Keras's list.
    """
    key = train_key(dataset, validation, model, cfg, prepare)
    out = model_dir(data_dir, key)
    log = get_logger()
    if model not in MODELS:
        build_model(model, dataset.input_shape, dataset.num_classes)  # raises the readable error
    if not force and not trained_problems(out):
        log.info("model %s (%s) already trained: reusing %s", model, key, out)
        return TrainRecord(key=key, path=str(out))
    chief, role = worker_role(resolve_runtime(cfg, 0).strategy)
    if not chief:  # multi-worker: the chief holds the lock and writes; others just take part
        _fit(dataset, validation, model, cfg, prepare, data_dir, key, chief=False, role=role,
             extra_callbacks=extra_callbacks)
        return TrainRecord(key=key, path=str(out))
    lock = Path(data_dir) / "models" / f"{key}.lock"
    with file_lock(lock, what=f"training of {model} ({key})"):
        if not force and not trained_problems(out):
            log.info("model %s (%s) was trained by a concurrent run: reusing %s", model, key, out)
            return TrainRecord(key=key, path=str(out))
        if force:
            shutil.rmtree(work_dir(data_dir, key), ignore_errors=True)
        _fit(dataset, validation, model, cfg, prepare, data_dir, key, chief=True, role=role,
             extra_callbacks=extra_callbacks)
    return TrainRecord(key=key, path=str(out))


def _fit(dataset, validation, model_name, cfg, prepare, data_dir, key, *, chief, role,
         extra_callbacks):
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    runtime = resolve_runtime(cfg, gpus)
    strategy = make_strategy(runtime)  # first: multi-worker must configure TF before it starts

    import keras

    log = get_logger()
    if runtime.precision == "mixed_float16" and not gpus:
        log.warning("mixed_float16 on a CPU is slow; use mixed_bfloat16 or off there")
    keras.utils.set_random_seed(cfg.seed)
    stats = preprocess_stats(validation, prepare)
    data = load_dataset(dataset.path)
    common = dict(num_classes=dataset.num_classes, batch_size=cfg.batch_size,
                  mean=stats["mean"], std=stats["std"])
    train_ds = make_dataset(data.x_train, data.y_train, shuffle=cfg.shuffle, seed=cfg.seed,
                            augment=cfg.augment, **common)
    val_ds = make_dataset(data.x_test, data.y_test, **common)

    out, work = model_dir(data_dir, key), work_dir(data_dir, key)
    # Non-chief workers back up beside, not inside, the chief's work dir (which it deletes).
    backup = work / "backup" if chief else work.with_name(f"{work.name}-{role}") / "backup"
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(runtime.precision)
    try:
        with strategy.scope():
            model = build_model(model_name, dataset.input_shape, dataset.num_classes)
            model.compile(optimizer=make_optimizer(cfg.optimizer), loss="categorical_crossentropy",
                          metrics=["accuracy"], jit_compile=runtime.xla)
        tracker = _EpochTracker(work / "history.json" if chief else None, cfg.epochs, key,
                                persist=chief)
        callbacks = [tracker.before,
                     keras.callbacks.BackupAndRestore(backup_dir=str(backup), double_checkpoint=True),
                     tracker.after, *extra_callbacks]
        devices = strategy_devices(strategy, runtime)
        log.info("training %s (%s): %d epochs, batch %d, %s on %s, %s, XLA %s", model_name, key,
                 cfg.epochs, cfg.batch_size, runtime.strategy, ", ".join(devices), runtime.precision,
                 "on" if runtime.xla else "off")
        t0 = time.perf_counter()
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
                  shuffle=False,  # tf.data shuffles (seeded, every epoch)
                  verbose=1 if chief and sys.stdout.isatty() else 0)
        wall = time.perf_counter() - t0
        if not chief:
            shutil.rmtree(backup.parent, ignore_errors=True)
            return
        _commit(out, work, model, tracker, key=key, model_name=model_name, cfg=cfg,
                runtime=runtime, devices=devices, stats=stats, dataset=dataset, wall=wall,
                replicas=strategy.num_replicas_in_sync)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _commit(out: Path, work: Path, model, tracker: _EpochTracker, *, key, model_name, cfg, runtime,
            devices, stats, dataset, wall, replicas):
    """model.keras, history.json, then train.json (the commit point); then drop the work dir."""
    import keras
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").unlink(missing_ok=True)  # uncommitted while it is being rewritten
    tmp = out / f".model.{os.getpid()}.keras"
    model.save(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / "model.keras")
    rows = tracker.rows
    atomic_write_json(out / "history.json", {"epochs": rows})
    seconds = sum(r["seconds"] for r in rows)
    atomic_write_json(out / "train.json", {
        "key": key,
        "model": model_name,
        "model_sha256": hash_file(out / "model.keras").sha256,
        "dataset_fingerprint": dataset.fingerprint,
        "epochs": len(rows),
        "seconds": round(seconds, 3),
        "seconds_per_epoch": round(seconds / max(len(rows), 1), 3),
        "wall_seconds_this_run": round(wall, 3),
        "devices": devices,
        "replicas": replicas,
        "strategy": runtime.strategy,
        "precision": runtime.precision,
        "xla": runtime.xla,
        "resumed_from_epoch": tracker.resumed_from,
        "preprocess": stats,
        "params": int(model.count_params()),
        "config": to_jsonable(cfg),
        "final": {k: v for k, v in rows[-1].items() if k != "epoch"} if rows else {},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    shutil.rmtree(work, ignore_errors=True)
    get_logger().info("trained %s (%s): %d epochs in %.1f s -> %s", model_name, key, len(rows),
                      seconds, out)


# --------------------------------------------------------------------------- Prefect task
def _task_key(inputs: dict[str, Any]) -> str:
    return train_key(inputs["dataset"], inputs.get("validation"), inputs["model"], inputs["cfg"],
                     inputs["prepare"])


def _task_valid(inputs: dict[str, Any], key: str) -> bool:
    if inputs.get("force"):
        return False
    return not trained_problems(model_dir(inputs["data_dir"], key))


@task(name="train_model", retries=1, cache_policy=VerifiedCache(key_fn=_task_key, valid_fn=_task_valid),
      persist_result=True, timeout_seconds=None)
def train_model(dataset: DatasetRecord, validation, model: str, cfg: TrainingConfig,
                prepare: PrepareConfig, data_dir: str, force: bool = False) -> TrainRecord:
    """Train (or reuse) ``model`` on ``dataset``; a retry resumes from the epoch backup."""
    return run_training(dataset, validation, model, cfg, prepare, data_dir, force=force)
