"""The airbench training recipe (``training.recipe:``), piece by piece: Nesterov SGD whose
learning rate warms up then decays linearly, a faster rate for batch-norm biases, label-smoothed
cross-entropy on logits, and lookahead over every weight including batch-norm statistics, whose
state is checkpointed beside ``BackupAndRestore``'s so a resumed run continues it exactly.

The schedule and lookahead numbers are plain functions (``lr_factor``, ``lookahead_rho``); the
Keras objects that use them are built on demand, so importing this module does not import Keras.
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.files import atomic_write_bytes
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


@functools.cache
def _keras_classes():
    import keras
    from keras import ops

    class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
        """``peak * lr_factor(step)`` as a Keras schedule (same numbers, in tensor ops)."""

        def __init__(self, peak, total_steps, warmup=0.23, start=0.2, end=0.07):
            self.peak, self.total_steps = float(peak), int(total_steps)
            self.warmup, self.start, self.end = float(warmup), float(start), float(end)

        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm = float(int(self.total_steps * self.warmup))
            up = self.start + (1.0 - self.start) * step / max(warm, 1.0)
            down = 1.0 + (self.end - 1.0) * (step - warm) / max(self.total_steps - warm, 1.0)
            return self.peak * ops.where(step < warm, up, down)

        def get_config(self):
            return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup,
                    "start": self.start, "end": self.end}

    class RateScaledSGD(keras.optimizers.SGD):
        """SGD where the variables named in ``scaled`` (their paths) step ``rate`` times farther.
        With (Nesterov) momentum this is exactly a gradient ``rate`` times larger, i.e. the
        bias = sqrt(rate)*q reparametrisation, without a custom layer in the model."""

        def __init__(self, *args, scaled=(), rate=1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaled, self.rate = tuple(scaled), float(rate)
            self._rates: list[float] = []

        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            names = set(self.scaled)
            self._rates = [self.rate if v.path in names else 1.0 for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            rate = self._rates[self._get_variable_index(variable)] if self._rates else 1.0
            if rate != 1.0:
                learning_rate = ops.multiply(learning_rate, rate)
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "scaled": list(self.scaled), "rate": self.rate}

    class Lookahead(keras.callbacks.Callback):
        """Every ``every`` steps: ema <- rho*ema + (1-rho)*w and w <- ema over all float weights of
        the model (trainable ones and batch-norm moving statistics); at the last step w <- ema.

        The EMA is saved after every epoch as ``state_dir/lookahead-<epoch>.npz`` (the last two
        kept), before BackupAndRestore backs up the weights; a resumed fit loads the file of the
        epoch it resumes after, so the run continues as if never stopped.
        """

        def __init__(self, total_steps: int, every: int = 5, decay: float = 0.95, state_dir=None):
            super().__init__()
            self.total_steps, self.every, self.decay = int(total_steps), int(every), float(decay)
            self.state_dir = Path(state_dir) if state_dir else None
            self.ema = None
            self._weights: list = []
            self._last_step = -1
            self._apply = None

        def _start(self, epoch: int) -> None:
            import tensorflow as tf

            self._weights = [v for v in self.model.weights if "float" in str(v.dtype)]
            values = [v.numpy() for v in self._weights]
            if epoch > 0 and self.state_dir is not None:
                path = self.state_dir / LOOKAHEAD_STATE.format(epoch=epoch)
                if not path.is_file():
                    raise TrainingError(f"{path} is missing: the lookahead state of epoch {epoch} did not "
                                        "survive beside the weights' backup. Retrain from scratch (--force).")
                with np.load(path) as saved:
                    values = [saved[f"w{i}"] for i in range(len(self._weights))]
            self.ema = [tf.Variable(v, trainable=False, name=f"lookahead_{i}") for i, v in enumerate(values)]
            pairs = list(zip(self.ema, self._weights))

            @tf.function
            def apply(rho):
                for ema, w in pairs:
                    new = ema * rho + tf.cast(w.value, ema.dtype) * (1.0 - rho)
                    ema.assign(new)
                    w.assign(new)

            self._apply = apply

        def on_epoch_begin(self, epoch, logs=None):
            if self.ema is None:
                self._start(epoch)

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations)
            if step == self._last_step:  # a skipped (loss-scaled) step: nothing new to average
                return
            self._last_step = step
            if step % self.every == 0 and step <= self.total_steps:
                self._apply(np.float32(lookahead_rho(step, self.total_steps, self.every, self.decay)))
            if step >= self.total_steps:
                self._apply(np.float32(1.0))  # the end: the weights become the average

        def on_epoch_end(self, epoch, logs=None):
            if self.state_dir is None or self.ema is None:
                return
            buf = io.BytesIO()
            np.savez(buf, **{f"w{i}": e.numpy() for i, e in enumerate(self.ema)})
            atomic_write_bytes(self.state_dir / LOOKAHEAD_STATE.format(epoch=epoch + 1), buf.getvalue())
            for old in self.state_dir.glob("lookahead-*.npz"):
                found = re.fullmatch(r"lookahead-(\d+)\.npz", old.name)
                if found and int(found.group(1)) < epoch:  # keep this epoch's and the one before
                    old.unlink(missing_ok=True)

    class ResumeGuard(keras.callbacks.Callback):
        """Fails the fit if BackupAndRestore resumed at another epoch than the input stream was
        built for (it falls back to its previous backup when the latest is unreadable)."""

        def __init__(self, expected: int):
            super().__init__()
            self.expected, self.checked = int(expected), False

        def on_epoch_begin(self, epoch, logs=None):
            if not self.checked and epoch != self.expected:
                raise TrainingError(f"the backup resumed after epoch {epoch}, but its metadata said "
                                    f"{self.expected} when the input stream was built; run again "
                                    "(it now resumes consistently)")
            self.checked = True

    class FreezeStemBias(keras.callbacks.Callback):
        """From epoch ``after`` on, the whitening stem's bias stops training (airbench's speed
        trick: with nothing trainable before it, the first block's input gradient is never
        computed). The train step is re-traced once, at that epoch or on resuming past it."""

        def __init__(self, after: int, layer: str = STEM):
            super().__init__()
            self.after, self.layer = int(after), layer

        def on_epoch_begin(self, epoch, logs=None):
            stem = next((l for l in self.model.layers if l.name == self.layer), None)
            if epoch >= self.after and stem is not None and stem.bias.trainable:
                stem.bias.trainable = False
                self.model.make_train_function(force=True)

    return WarmupLinearDecay, RateScaledSGD, Lookahead, ResumeGuard, FreezeStemBias


def make_optimizer(model, recipe: RecipeConfig, batch_size: int, total_steps: int):
    """Nesterov SGD on the schedule, BN biases at ``bias_rate`` x the rate."""
    import keras

    schedule_cls, sgd_cls = _keras_classes()[:2]
    peak = peak_learning_rate(recipe, batch_size)
    lr: Any = peak
    if recipe.schedule:
        lr = schedule_cls(peak, total_steps, recipe.warmup, recipe.lr_start, recipe.lr_end)
    scaled = [layer.beta.path for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization) and layer.center]
    return sgd_cls(learning_rate=lr, momentum=recipe.momentum, nesterov=True, scaled=scaled,
                   rate=recipe.bias_rate)


def make_loss(recipe: RecipeConfig | None, from_logits: bool):
    import keras

    smoothing = recipe.label_smoothing if recipe is not None else 0.0
    return keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=smoothing)


def lookahead_callback(recipe: RecipeConfig, total_steps: int, state_dir):
    return _keras_classes()[2](total_steps, recipe.lookahead_every, recipe.lookahead_decay, state_dir)


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


def resume_guard(expected: int):
    return _keras_classes()[3](expected)


def freeze_stem_bias(after: int):
    return _keras_classes()[4](after)
