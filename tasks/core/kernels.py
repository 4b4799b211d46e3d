"""An XLA-fused GELU for a Keras model, for the path that does not compile the whole model (the
CPU: there whole-model XLA is slower than TensorFlow's own convolutions).

TensorFlow runs the exact (erf) GELU as a chain of separate element-wise ops, each a pass over
the activations, forward and backward; ``fused_kernels`` swaps in the same function compiled by
XLA into one kernel for the length of a block, and puts the stock function back on exit, so a
saved model is unchanged and loads anywhere. (An XLA batch norm was tried the same way and
measured no faster on 2 CPU cores, so batch norm stays stock.)
"""

from __future__ import annotations

import functools
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


@contextmanager
def fused_kernels(model) -> Iterator[int]:
    """Inside the block, every ``Activation("gelu")`` of ``model`` computes the same exact GELU as
    one XLA kernel. The airbench train step (batch 512, bf16, 2 CPU cores) measured 1.17-1.23 s
    stock against 0.99-1.02 s fused, interleaved. Yields how many layers were switched; on exit
    the stock function is back, so model.keras still says "gelu". Trace the train or predict
    function inside the block (``fit`` and a first ``predict_on_batch`` do)."""
    import keras

    (gelu,) = _xla_kernels()
    acts = [layer for layer in model.layers if isinstance(layer, keras.layers.Activation)
            and layer.activation is keras.activations.gelu]
    for layer in acts:
        layer.activation = gelu
    try:
        yield len(acts)
    finally:
        for layer in acts:
            layer.activation = keras.activations.gelu
