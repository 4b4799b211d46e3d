"""Fused kernels for a Keras model's GELUs and batch norms, for the path that does not compile the
whole model (the CPU: there whole-model XLA is slower than TensorFlow's own convolutions).

TensorFlow runs the exact (erf) GELU as a chain of separate element-wise ops, each a pass over
the activations, forward and backward; Keras's batch norm casts bf16 activations up to float32 and
normalises them with more such passes (moments, then scale and shift). ``fused_kernels`` swaps in
the same functions as single kernels for the length of a block -- the GELU compiled by XLA, batch
norm as TensorFlow's FusedBatchNormV3 op (oneDNN's kernel on x86, float32 statistics inside) --
and puts the stock ones back on exit, so a saved model is unchanged and loads anywhere.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator
from contextlib import contextmanager


@functools.cache
def _xla_kernels():
    """(gelu,): the exact GELU compiled by XLA into one kernel (its gradient too)."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def gelu(x):
        return tf.nn.gelu(x, approximate=False)

    return (gelu,)


def _fusable(layer) -> bool:
    """A stock Keras BatchNormalization without renorm or cross-replica synchronisation (its call
    checks that the inputs are NHWC over the last axis, or stays stock)."""
    import keras

    return type(layer) is keras.layers.BatchNormalization and not layer.renorm and not layer.synchronized


def _fused_bn_call(self, inputs, training=None, mask=None):
    """BatchNormalization.call as one FusedBatchNormV3 op for 4-D (NHWC) inputs normalised over the
    last axis (same outputs and moving statistics; the op's Bessel-corrected batch variance is
    turned back into the biased one Keras averages); any other call is the stock one."""
    import tensorflow as tf

    if mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3):
        return type(self).call(self, inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    gamma = tf.cast(self.gamma.value, tf.float32) if self.scale else tf.ones([channels], tf.float32)
    beta = tf.cast(self.beta.value, tf.float32) if self.center else tf.zeros([channels], tf.float32)
    x = tf.cast(inputs, self.compute_dtype)
    if training and self.trainable:
        y, mean, var = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon,
                                                        data_format="NHWC", is_training=True)
        shape = tf.shape(x)
        n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        var = var * (n - 1.0) / tf.maximum(n, 1.0)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + var * (1.0 - m))
    else:
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, mean=tf.cast(self.moving_mean.value, tf.float32),
            variance=tf.cast(self.moving_variance.value, tf.float32), epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
    return y


@contextmanager
def fused_kernels(model) -> Iterator[int]:
    """Inside the block, every ``Activation("gelu")`` of ``model`` computes the same exact GELU as
    one XLA kernel, and every ``BatchNormalization`` of NHWC images runs as one FusedBatchNormV3 op. Yields
    how many layers were switched; on exit the stock functions are back, so model.keras still
    says "gelu" and "BatchNormalization". Trace the train or predict function inside the block
    (``fit`` and a first ``predict_on_batch`` do). Step times: docs/benchmarks.md."""
    import keras

    (gelu,) = _xla_kernels()
    acts = [layer for layer in model.layers if isinstance(layer, keras.layers.Activation)
            and layer.activation is keras.activations.gelu]
    norms = [layer for layer in model.layers if _fusable(layer)]
    for layer in acts:
        layer.activation = gelu
    for layer in norms:
        layer.call = types.MethodType(_fused_bn_call, layer)
    try:
        yield len(acts) + len(norms)
    finally:
        for layer in acts:
            layer.activation = keras.activations.gelu
        for layer in norms:
            del layer.call  # the class's own call again
