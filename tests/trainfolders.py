"""Test helpers: what the training stage reads and writes, without the training stage.

``make_cache`` writes a dataset cache of random images (``n_train``/``n_test`` of ``shape``,
labels cycling through ``classes``). ``tiny_model`` is a 3-class Keras model on 8x8x3 images, and
``write_trained`` writes the train stage's folder exactly as the contract defines it (model.keras,
history.json, train.json), for a model fitted one epoch or a "constant" one that always predicts
one class (zero kernels, one large output bias): its test accuracy is known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tasks.core.datacache import write_dataset_cache
from tasks.core.hashing import hash_file
from tasks.core.pixels import scale_pixels


def make_cache(root: Path, n_train=64, n_test=32, shape=(16, 16, 3), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return write_dataset_cache(
        root / "datasets" / f"fp{seed}",
        rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        (np.arange(n_train) % classes).astype(np.uint8),
        rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        (np.arange(n_test) % classes).astype(np.uint8),
        [f"c{i}" for i in range(classes)],
        {"source": "test"},
    )


def tiny_model():
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(3, activation="softmax", name="dense")(x)
    model = keras.Model(inp, out, name="tiny")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def write_trained(root: Path, key: str, dataset, constant: int | None = None):
    """The train stage's folder, as the contract defines it. ``constant``: always predict that
    class (zero kernels, large bias); else fit one epoch on the dataset's training images."""
    import keras

    from tasks.core.datacache import load_dataset
    from tasks.core.records import TrainRecord

    keras.utils.set_random_seed(1)
    model = tiny_model()
    ds = load_dataset(dataset.path)
    if constant is None:
        x = scale_pixels(np.asarray(ds.x_train))
        mean, std = x.mean(axis=(0, 1, 2)).tolist(), x.std(axis=(0, 1, 2)).tolist()
        fit = model.fit(scale_pixels(np.asarray(ds.x_train), mean, std), np.asarray(ds.y_train),
                        validation_data=(scale_pixels(np.asarray(ds.x_test), mean, std), np.asarray(ds.y_test)),
                        epochs=1, batch_size=10, verbose=0)
        epochs = [{"epoch": 1, **{k: float(v[0]) for k, v in fit.history.items()}, "seconds": 0.5}]
    else:
        mean = std = None
        dense = model.get_layer("dense")
        bias = np.zeros(3, np.float32)
        bias[constant] = 5.0
        model.get_layer("conv").set_weights([np.zeros_like(w) for w in model.get_layer("conv").get_weights()])
        dense.set_weights([np.zeros_like(dense.get_weights()[0]), bias])
        epochs = [{"epoch": 1, "loss": 1.0, "accuracy": 0.4, "val_loss": 1.1, "val_accuracy": 0.3, "seconds": 0.5}]
    return model_folder(root / "models" / key, key, model, (mean, std), epochs, params=model.count_params(),
                        seconds_per_epoch=0.5, devices=["/physical_device:CPU:0"], strategy="one_device",
                        precision="float32", xla=False, resumed_from_epoch=None,
                        config={"epochs": 1, "batch_size": 10}, completed_at="2026-01-01T00:00:00+00:00")


def model_folder(tdir: Path, key: str, model, preprocess=(None, None), epochs=None, seconds: float = 0.5,
                 **train_json):
    """Write ``model`` as the train stage leaves it in ``tdir`` (model.keras, history.json,
    train.json with the model's sha256 and ``preprocess`` = (mean, std)); its TrainRecord."""
    from tasks.core.records import TrainRecord

    tdir.mkdir(parents=True)
    model.save(tdir / "model.keras")
    epochs = epochs or [{"epoch": 1, "loss": 1.0, "seconds": seconds}]
    (tdir / "history.json").write_text(json.dumps({"epochs": epochs}))
    mean, std = preprocess
    (tdir / "train.json").write_text(json.dumps({
        "key": key, "model": "tiny", "model_sha256": hash_file(tdir / "model.keras").sha256, "epochs": 1,
        "seconds": seconds, "preprocess": {"mean": mean, "std": std}, "config": {"epochs": 1}, **train_json,
    }))
    return TrainRecord(key=key, path=str(tdir))


# --------------------------------------------------------------------------- constant models
CLASSES3 = ("cat", "dog", "frog")
Y_TEST = np.array([0] * 10 + [1] * 6 + [2] * 4, dtype=np.uint8)  # constant models: 0.5 / 0.3 / 0.2


def three_class_cache(root: Path, shape=(8, 8, 3)):
    """48 random training images of cat, dog and frog; 20 test images: 10 cats, 6 dogs, 4 frogs."""
    rng = np.random.default_rng(0)
    return write_dataset_cache(
        root / "datasets" / f"fp-{shape[0]}", rng.integers(0, 256, (48, *shape), dtype=np.uint8),
        np.array([0, 1, 2] * 16, dtype=np.uint8), rng.integers(0, 256, (20, *shape), dtype=np.uint8),
        Y_TEST, CLASSES3, {"source": "test-fixture", "archive_sha256": "ab" * 32, "format": "test"})


def pipeline(name="tiny", min_delta=0.0, min_value: float | None = 0.0, auto: bool = True,
             validation="test", metric="test_accuracy"):
    """A resolved pipeline config, as the flow hands it to the store. ``min_value`` 0: the
    constant classifiers of these fixtures score at or under chance, which the default floor
    (better than chance) never promotes; tests of the floor pass None. By default validated and
    promoted on the test split (the promotion mechanics); tests/store/test_validation_split.py
    holds images out."""
    from flows.config import PipelineConfig
    from tasks.download.config import DatasetConfig
    from tasks.store.config import PromoteConfig
    from tasks.train.config import TrainingConfig

    return PipelineConfig(name=name, training=TrainingConfig(epochs=1), dataset=DatasetConfig(validation=validation),
                          promote=PromoteConfig(metric=metric, min_delta=min_delta, min_value=min_value, auto=auto))


def store_trained(artifacts: Path, dataset, trained, name="tiny", **promote):
    """The store stage's save of ``trained`` as a run of pipeline ``name`` (min_delta 0; ``promote``:
    ``pipeline``'s other keywords)."""
    from tasks.core.records import ValidationRecord
    from tasks.store.saving import store_run

    validation = ValidationRecord(dataset.fingerprint, {"checks": [], "train_test_duplicates": 0})
    stages = {"train": {"seconds": 1.0, "cache_hit": False}}
    return store_run(pipeline(name, **promote), dataset, validation, trained, stages, None, str(artifacts))
