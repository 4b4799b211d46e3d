"""Test helpers: saved runs with a real serving export (model.tflite, classes.json, the sha256 in
metadata.json), made by the store stage itself (``store_run``) from hand-set tiny Keras models, so
a test knows every answer in advance.

``constant_runs(root, winners)`` saves one run per entry of ``winners`` (pipeline ``tiny``, 32x32x3
images, classes cat/dog/frog): run *i* always answers class ``winners[i]`` with probability
e^5 / (e^5 + 2) = 0.98670 (zero kernels, output bias 5 on that class). The first run is the
champion; the later ones are saved with ``min_delta`` 1.0, so never promoted: ``promote(root, run)``
writes the registry as the store does when it promotes (atomically), for hot-swap tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("cat", "dog", "frog")
SHAPE = (32, 32, 3)
CONSTANT_P = float(np.exp(5) / (np.exp(5) + 2))  # 0.98670


def _constant_trained(models: Path, key: str, winner: int):
    import keras

    from trainfolders import model_folder

    inp = keras.Input(SHAPE)
    x = keras.layers.Conv2D(2, 3, strides=4, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(len(CLASSES), activation="softmax", name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    model.get_layer("conv").set_weights([np.zeros_like(w) for w in model.get_layer("conv").get_weights()])
    kernel = model.get_layer("dense").get_weights()[0]
    bias = np.zeros(len(CLASSES), np.float32)
    bias[winner] = 5.0
    model.get_layer("dense").set_weights([np.zeros_like(kernel), bias])
    return model_folder(models / key, key, model, seconds=0.1)


def constant_runs(root: Path, winners=(0, 1), pipeline: str = "tiny") -> list:
    """RunRecords of ``pipeline`` under ``root/artifacts``, one per winner class (see above)."""
    from flows.config import PipelineConfig
    from tasks.core.datacache import write_dataset_cache
    from tasks.core.records import ValidationRecord
    from tasks.store.config import PromoteConfig
    from tasks.store.saving import store_run
    from tasks.train.config import TrainingConfig

    rng = np.random.default_rng(0)
    ds = write_dataset_cache(root / "data" / "datasets" / f"fp-{pipeline}",
                             rng.integers(0, 256, (6, *SHAPE), dtype=np.uint8), np.arange(6, dtype=np.uint8) % 3,
                             rng.integers(0, 256, (6, *SHAPE), dtype=np.uint8), np.arange(6, dtype=np.uint8) % 3,
                             CLASSES, {"source": "test", "archive_sha256": "ab" * 32, "format": "test"})
    validation = ValidationRecord(ds.fingerprint, {"checks": []})
    config = PipelineConfig(name=pipeline, model="tiny", training=TrainingConfig(epochs=1),
                            promote=PromoteConfig(min_delta=1.0, min_value=0))
    saved = []
    for i, winner in enumerate(winners):
        trained = _constant_trained(root / "data" / "models", f"k-{pipeline}-{i}-{winner}", winner)
        saved.append(store_run(config, ds, validation, trained, {}, None, str(root / "artifacts")))
    return saved


def promote(artifacts: Path, pipeline: str, run_id: str) -> None:
    """registry.json naming ``run_id`` the champion, written as the store writes it (atomically,
    its history and checksum updated)."""
    from tasks.core.files import read_json
    from tasks.core.registry import champion_entry, set_champion, write_registry

    path = artifacts / pipeline / "registry.json"
    registry = read_json(path)
    old = registry["champion"]
    set_champion(registry, champion_entry(run_id, old["metric"], old.get("value"), "test: promoted", "person"))
    write_registry(path, registry)
