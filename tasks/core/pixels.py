"""The one definition of what the model sees: uint8 pixels scaled (and standardised), integer
labels one-hot. Validation checks it, training feeds it, evaluation repeats it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np


def _is_tf(x: Any) -> bool:
    """A tf tensor can only exist once TensorFlow is imported: never import it to find out."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and tf.is_tensor(x)
def scale_pixels(x, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """Pixels 0..255 -> float32 in [0, 1]; with ``mean``/``std`` (per channel, of the scaled
    pixels) also standardised. NumPy in, NumPy out; tf tensor in, tf tensor out."""
    if (mean is None) != (std is None):
        raise ValueError("scale_pixels: give both mean and std, or neither")
    if _is_tf(x):
        import tensorflow as tf

        out = tf.cast(x, tf.float32) / 255.0
        if mean is not None:
            out = (out - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
        return out
    out = np.array(x, dtype=np.float32)  # always a new array (a cast, then in place: 4x faster
    out /= np.float32(255)                # than np.divide(..., dtype=float32); same values)
    if mean is not None:
        out -= np.asarray(mean, dtype=np.float32)
        out /= np.asarray(std, dtype=np.float32)
    return out


def one_hot(y, num_classes: int):
    """Integer labels (N,) -> float32 (N, num_classes). A label outside 0..num_classes-1 gives an
    all-zero row (as ``tf.one_hot`` does), which validation reports."""
    if _is_tf(y):
        import tensorflow as tf

        return tf.one_hot(tf.cast(y, tf.int32), num_classes, dtype=tf.float32)
    y = np.asarray(y).reshape(-1)
    out = np.zeros((y.shape[0], num_classes), dtype=np.float32)
    ok = (y >= 0) & (y < num_classes)
    out[np.flatnonzero(ok), y[ok].astype(np.intp)] = 1.0
    return out

