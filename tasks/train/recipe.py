"""The airbench training recipe (``training.recipe:``), piece by piece: Nesterov SGD whose
learning rate warms up then decays linearly, a faster rate for batch-norm biases, label-smoothed
cross-entropy on logits, and lookahead over every weight including batch-norm statistics, whose
state is checkpointed beside ``BackupAndRestore``'s so a resumed run continues it exactly.

The schedule and lookahead numbers are plain functions (``lr_factor``, ``lookahead_rho``); the
Keras objects that use them are classes of ``tasks.train.recipe_keras``, imported inside the
functions that build them, so importing this module does not import Keras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.train.config import RecipeConfig, TrainingError

REFERENCE_BATCH = 1024  # recipe.learning_rate is the peak rate at this batch size
LOOKAHEAD_STATE = "lookahead-{epoch}.npz"
STEM = "whiten"  # the airbench stem's layer name (tasks.train.airbench)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial one is dropped, as airbench does); at least 1."""
    return max(1, n_train // batch_size)


def peak_learning_rate(recipe: RecipeConfig, batch_size: int) -> float:
    """The SGD rate at the top of the schedule: ``recipe.learning_rate`` per 1,024 images."""
    return recipe.learning_rate * batch_size / REFERENCE_BATCH


def lr_factor(step: float, total: int, recipe: RecipeConfig) -> float:
    """The multiple of the peak rate at ``step`` (0-based) of ``total``: linear from lr_start to 1
    over the first int(warmup * total) steps, then linear to lr_end at ``total``; 1 without the
    schedule."""
    if not recipe.schedule:
        return 1.0
    warm = int(total * recipe.warmup)
    if step < warm:
        return recipe.lr_start + (1.0 - recipe.lr_start) * step / warm
    return 1.0 + (recipe.lr_end - 1.0) * (step - warm) / max(total - warm, 1)


def lookahead_rho(step: int, total: int, every: int = 5, decay: float = 0.95) -> float:
    """The lookahead's EMA weight at ``step``: decay**every * (step / total)**3 (0 at the start,
    so early updates follow the weights; near decay**every at the end)."""
    return decay ** every * (min(step, total) / total) ** 3


def lookahead_update(ema: list[np.ndarray], weights: list[np.ndarray], rho: float):
    """One lookahead step in NumPy (the reference the callback is tested against): ema <- rho*ema +
    (1-rho)*w, then w <- ema. Returns the new (ema, weights)."""
    new = [rho * e + (1.0 - rho) * w for e, w in zip(ema, weights)]
    return new, [n.copy() for n in new]


def recipe_facts(cfg, n_train: int) -> dict[str, Any] | None:
    """What train.json records of the recipe (the report draws the schedule from it): steps, the
    peak rate and the schedule's corner points (step, rate); None without a recipe."""
    recipe = cfg.recipe
    if recipe is None:
        return None
    spe = steps_per_epoch(n_train, cfg.batch_size)
    total = spe * cfg.epochs
    peak = peak_learning_rate(recipe, cfg.batch_size)
    corners = sorted({0, int(total * recipe.warmup) if recipe.schedule else 0, total})
    return {"steps_per_epoch": spe, "total_steps": total, "peak_learning_rate": peak,
            "schedule": [[s, peak * lr_factor(s, total, recipe)] for s in corners],
            "lookahead": recipe.lookahead, "tta": recipe.tta}


def make_optimizer(model, recipe: RecipeConfig, batch_size: int, total_steps: int):
    """Nesterov SGD on the schedule, BN biases at ``bias_rate`` x the rate."""
    import keras

    from tasks.train.recipe_keras import RateScaledSGD, WarmupLinearDecay

    peak = peak_learning_rate(recipe, batch_size)
    lr: Any = peak
    if recipe.schedule:
        lr = WarmupLinearDecay(peak, total_steps, recipe.warmup, recipe.lr_start, recipe.lr_end)
    scaled = [layer.beta.path for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization) and layer.center]
    return RateScaledSGD(learning_rate=lr, momentum=recipe.momentum, nesterov=True, scaled=scaled,
                         rate=recipe.bias_rate)


def make_loss(recipe: RecipeConfig | None, from_logits: bool):
    import keras

    smoothing = recipe.label_smoothing if recipe is not None else 0.0
    return keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=smoothing)


def lookahead_callback(recipe: RecipeConfig, total_steps: int, state_dir):
    """The recipe's ``Lookahead`` over ``total_steps``, its state kept in ``state_dir`` (None: not kept)."""
    from tasks.train.recipe_keras import Lookahead

    return Lookahead(total_steps, recipe.lookahead_every, recipe.lookahead_decay, state_dir)


def backup_of(callbacks: list):
    """The ``BackupAndRestore`` among ``callbacks`` (None if there is none)."""
    import keras

    return next((c for c in callbacks if isinstance(c, keras.callbacks.BackupAndRestore)), None)


def resume_epoch(backup) -> int:
    """The epoch a fit with ``backup`` will resume after (0: from scratch), read from its metadata
    as BackupAndRestore will read it; the training data stream starts there."""
    import json

    if backup is None:
        return 0
    path = Path(backup.backup_dir) / "training_metadata.json"
    try:
        return int(json.loads(path.read_text())["epoch"])
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path} is unreadable ({exc}); delete {path.parent} to train from scratch") from exc
