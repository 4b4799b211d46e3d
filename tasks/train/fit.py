"""How a model is trained: the optimizer, the compile settings, and one seeded ``model.fit``
over the cached dataset's input pipeline."""

from __future__ import annotations

import time
from typing import Any

from tasks.core.datacache import DatasetRecord, load_dataset
from tasks.train.config import OptimizerConfig, TrainingConfig, TrainingError
from tasks.train.devices import Runtime
from tasks.train.inputs import make_dataset
from tasks.train.models import build_model


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


def make_inputs(dataset: DatasetRecord, cfg: TrainingConfig, stats: dict[str, Any]):
    """(train, validation) ``tf.data`` pipelines over the memory-mapped cache; the train split is
    shuffled (seeded) and augmented when the settings say so, the test split is neither."""
    data = load_dataset(dataset.path)
    common = dict(num_classes=dataset.num_classes, batch_size=cfg.batch_size,
                  mean=stats["mean"], std=stats["std"])
    train = make_dataset(data.x_train, data.y_train, shuffle=cfg.shuffle, seed=cfg.seed,
                         augment=cfg.augment, **common)
    validation = make_dataset(data.x_test, data.y_test, **common)
    return train, validation


def compiled_model(model_name: str, dataset: DatasetRecord, cfg: TrainingConfig, runtime: Runtime,
                   strategy):
    """The registered model, built and compiled under ``strategy`` (in the current dtype policy)."""
    with strategy.scope():
        model = build_model(model_name, dataset.input_shape, dataset.num_classes)
        model.compile(optimizer=make_optimizer(cfg.optimizer), loss="categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=runtime.xla)
    return model


def fit_model(model_name: str, dataset: DatasetRecord, cfg: TrainingConfig, stats: dict[str, Any],
              runtime: Runtime, strategy, callbacks: list, *, verbose: int):
    """Seed everything, build the inputs and the model, run ``cfg.epochs`` epochs: the trained
    model and the seconds ``fit`` took.

    ``callbacks`` include BackupAndRestore, so an interrupted fit resumes at its next epoch.
    """
    import keras

    keras.utils.set_random_seed(cfg.seed)
    train, validation = make_inputs(dataset, cfg, stats)
    model = compiled_model(model_name, dataset, cfg, runtime, strategy)
    started = time.perf_counter()
    model.fit(train, validation_data=validation, epochs=cfg.epochs, callbacks=callbacks,
              shuffle=False,  # tf.data shuffles (seeded, every epoch)
              verbose=verbose)
    return model, time.perf_counter() - started
