"""The airbench recipe's Keras objects: the learning-rate schedule, the SGD whose batch-norm biases
step faster, the lookahead callback, the resume check and the stem bias's freeze
(``tasks.train.recipe`` holds the recipe's numbers and builds these from the settings).

Keras and TensorFlow are imported at the top here, so this module is imported only inside the
functions that build and fit a model (``tasks.train.recipe``, ``tasks.train.fit``): importing
the stage's config, its recipe module or its Prefect task loads neither. The classes are not
registered as Keras serializables; their names and ``get_config`` are
what a saved compile config records.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tasks.core.files import atomic_write_bytes
from tasks.train.config import TrainingError
from tasks.train.recipe import LOOKAHEAD_STATE, STEM, lookahead_rho


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

