"""How a model is trained: the optimizer, the compile settings, and one seeded ``model.fit``
over the cached dataset's input pipeline -- the notebook's recipe, or the airbench recipe of
``training.recipe`` (``tasks.train.recipe``: its optimizer, loss, lookahead and input stream;
its Keras classes in ``tasks.train.recipe_keras``)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from tasks.core.datacache import DatasetRecord, load_dataset
from tasks.core.holdout import TEST, Holdout, split_rows
from tasks.core.pixels import scale_pixels
from tasks.core.kernels import fused_kernels
from tasks.train import recipe as recipes
from tasks.train.config import OptimizerConfig, RecipeConfig, TrainingConfig, TrainingError
from tasks.train.devices import Runtime
from tasks.train.inputs import make_dataset, recipe_dataset
from tasks.train.models import as_probabilities, build_model, model_options, outputs_logits
from tasks.train.seeding import seeded


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


def split_of(dataset: DatasetRecord, holdout: Holdout):
    """(train rows, validation rows) of the cached training split (``tasks.core.holdout``); with
    ``validation: test`` every row trains and the test split validates."""
    return split_rows(load_dataset(dataset.path).y_train, holdout)


def make_inputs(dataset: DatasetRecord, cfg: TrainingConfig, stats: dict[str, Any], start_epoch: int = 0,
                holdout: Holdout = Holdout(TEST), rows=None):
    """(train, validation) ``tf.data`` pipelines over the memory-mapped cache; the train split is
    shuffled (seeded) and augmented when the settings say so, the validation data is neither. The
    validation data is the held-out training rows (``holdout``; ``rows`` = ``split_of``'s pair
    when already drawn), or the test split with ``validation: test``. With a recipe the train
    stream holds every epoch from ``start_epoch`` on (``recipe_dataset``)."""
    data = load_dataset(dataset.path)
    train_rows, val_rows = rows if rows is not None else split_rows(data.y_train, holdout)
    held_out = holdout.protocol != TEST
    common = dict(num_classes=dataset.num_classes, batch_size=cfg.batch_size,
                  mean=stats["mean"], std=stats["std"])
    train_part = dict(rows=train_rows if held_out else None)
    if cfg.recipe is not None:
        train = recipe_dataset(data.x_train, data.y_train, seed=cfg.seed, epochs=cfg.epochs,
                               start_epoch=start_epoch, flip=cfg.recipe.flip, translate=cfg.recipe.translate,
                               **train_part, **common)
    else:
        train = make_dataset(data.x_train, data.y_train, shuffle=cfg.shuffle, seed=cfg.seed,
                             augment=cfg.augment, **train_part, **common)
    if held_out:
        validation = make_dataset(data.x_train, data.y_train, rows=val_rows, **common)
    else:
        validation = make_dataset(data.x_test, data.y_test, **common)
    return train, validation


def whiten_sample(dataset: DatasetRecord, cfg: TrainingConfig, stats: dict[str, Any], train_rows=None):
    """``recipe.whiten_images`` training images (a seeded sample of ``train_rows``, all rows when
    None, in cache order), scaled as the model sees them: the patches that whiten airbench's stem.
    Held-out validation images are never among them."""
    import numpy as np

    data = load_dataset(dataset.path)
    pool = np.arange(len(data.y_train)) if train_rows is None else np.asarray(train_rows)
    k = min((cfg.recipe or RecipeConfig()).whiten_images, len(pool))
    rows = np.sort(pool[np.random.default_rng(cfg.seed).choice(len(pool), size=k, replace=False)])
    return scale_pixels(data.x_train[rows], stats["mean"], stats["std"])


def compiled_model(model_name: str, dataset: DatasetRecord, cfg: TrainingConfig, runtime: Runtime,
                   strategy, stats: dict[str, Any] | None = None, train_rows=None):
    """The registered model, built and compiled under ``strategy`` (in the current dtype policy).

    A builder that takes ``whiten_images`` gets them from the training rows (``train_rows``, all
    of the split when None; ``stats`` scale them); with a recipe the optimizer and loss are the
    recipe's, its schedule over the steps of ``len(train_rows)`` images per epoch."""
    options: dict[str, Any] = {"recipe": cfg.recipe}
    n_train = dataset.train_size if train_rows is None else len(train_rows)
    if "whiten_images" in model_options(model_name) and (cfg.recipe or RecipeConfig()).whiten:
        options["whiten_images"] = whiten_sample(dataset, cfg, stats or {"mean": None, "std": None}, train_rows)
    with strategy.scope():
        model = build_model(model_name, dataset.input_shape, dataset.num_classes, **options)
        logits = outputs_logits(model)
        if cfg.recipe is None:
            optimizer = make_optimizer(cfg.optimizer)
            loss = recipes.make_loss(None, True) if logits else "categorical_crossentropy"
        else:
            total = recipes.steps_per_epoch(n_train, cfg.batch_size) * cfg.epochs
            optimizer = recipes.make_optimizer(model, cfg.recipe, cfg.batch_size, total)
            loss = recipes.make_loss(cfg.recipe, logits)
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=runtime.xla)
    return model


def recipe_callbacks(cfg: TrainingConfig, n_train: int, callbacks: list, start_epoch: int) -> list:
    """``callbacks`` with the recipe's own before BackupAndRestore: the resume check, the
    lookahead (its state saved in the backup folder before the weights are) and the stem bias's
    freeze."""
    from tasks.train.recipe_keras import FreezeStemBias, ResumeGuard

    backup = recipes.backup_of(callbacks)
    ours = [ResumeGuard(start_epoch)]
    if cfg.recipe.lookahead:
        total = recipes.steps_per_epoch(n_train, cfg.batch_size) * cfg.epochs
        ours.append(recipes.lookahead_callback(cfg.recipe, total, backup.backup_dir if backup else None))
    if cfg.recipe.whiten and cfg.recipe.whiten_bias_epochs is not None:
        ours.append(FreezeStemBias(cfg.recipe.whiten_bias_epochs))
    at = callbacks.index(backup) if backup is not None else 0
    return [*callbacks[:at], *ours, *callbacks[at:]]


def fit_model(model_name: str, dataset: DatasetRecord, cfg: TrainingConfig, stats: dict[str, Any],
              runtime: Runtime, strategy, callbacks: list, *, verbose: int, holdout: Holdout = Holdout(TEST),
              rows=None):
    """Seed everything, build the inputs and the model, run ``cfg.epochs`` epochs on the training
    rows that ``holdout`` leaves (validating on the held-out ones, or on the test split with
    ``validation: test``): the trained model and the seconds ``fit`` took.

    ``callbacks`` include BackupAndRestore, so an interrupted fit resumes at its next epoch.
    """
    with seeded(cfg.seed):  # this thread's own draws: another thread's cannot change the model
        return _seeded_fit(model_name, dataset, cfg, stats, runtime, strategy, callbacks, verbose=verbose,
                           holdout=holdout, rows=rows)


def _seeded_fit(model_name: str, dataset: DatasetRecord, cfg: TrainingConfig, stats: dict[str, Any],
                runtime: Runtime, strategy, callbacks: list, *, verbose: int, holdout: Holdout, rows):
    import keras

    fit_args: dict[str, Any] = {}
    start = 0
    rows = rows if rows is not None else split_of(dataset, holdout)  # drawn once by the caller, if given
    n_train = len(rows[0])
    if cfg.recipe is not None:
        start = recipes.resume_epoch(recipes.backup_of(callbacks))
        callbacks = recipe_callbacks(cfg, n_train, callbacks, start)
        fit_args = {"steps_per_epoch": recipes.steps_per_epoch(n_train, cfg.batch_size),
                    "validation_freq": 1 if cfg.recipe.validate == "every" else cfg.epochs}
    train, validation = make_inputs(dataset, cfg, stats, start, holdout, rows)
    model = compiled_model(model_name, dataset, cfg, runtime, strategy, stats, rows[0])
    started = time.perf_counter()
    # Without whole-model XLA, GELUs run as one fused kernel each (same math; saved as "gelu").
    # TerminateOnNaN: a loss that turned NaN/inf stops the fit at that batch (the epoch's row
    # records it as null, and the store never promotes such a run) instead of training on.
    with nullcontext() if runtime.xla else fused_kernels(model):
        model.fit(train, validation_data=validation, epochs=cfg.epochs,
                  callbacks=[*callbacks, keras.callbacks.TerminateOnNaN()],
                  shuffle=False,  # tf.data shuffles (seeded, every epoch)
                  verbose=verbose, **fit_args)
    return as_probabilities(model), time.perf_counter() - started
