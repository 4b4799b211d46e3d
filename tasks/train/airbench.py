"""Model ``airbench``: Keller Jordan's fast CIFAR-10 network (airbench, arXiv 2404.00498) in Keras,
written from the paper's description and the recipe notes in docs (no code copied).

    whitening stem  2x2 conv, no padding, 2*C*4 filters: the eigenvectors of the uncentred
                    covariance of the training images' 2x2xC patches, each / sqrt(eigenvalue + eps),
                    largest first, stacked with their negations. Frozen kernel, trainable bias. GELU.
    three blocks    conv3x3 (no bias) -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU
    head            global max-pool -> dense (no bias) -> logits * 1/9, float32

Convolutions and the dense layer start from PyTorch's default scale (uniform, bound
1/sqrt(fan_in): Keras's glorot default is ~1.7x larger here), then "dirac": the first C_in
filters of every 3x3 conv are the identity. Batch norm has no learned scale, a learned bias, and
Keras's momentum convention (moving = 0.6*moving + 0.4*batch, which PyTorch calls 0.4).

The BN biases' 64x learning rate of the recipe is the optimizer's job (``tasks.train.recipe``):
with plain SGD it is exactly the "bias = 8*q" reparametrisation, but keeps every layer a stock
Keras layer, so model.keras loads in any stage without this module. For the same reason the
frozen stem is a stock Conv2D whose kernel variable is marked non-trainable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WHITEN_KERNEL = 2
BN_MOMENTUM = 0.6  # Keras convention: moving = 0.6 * moving + 0.4 * batch (PyTorch's momentum=0.4)
BN_EPSILON = 1e-5  # airbench uses 1e-12; anything <= 1e-5 behaves the same
LOGIT_SCALE = 1 / 9
MIN_SIDE = WHITEN_KERNEL - 1 + 8  # three 2x pools after the stem need 8 pixels left


def _patch_rows(images: np.ndarray, k: int) -> np.ndarray:
    """(N*(H-k+1)*(W-k+1), k*k*C) float64: every k x k patch, flattened in Keras's kernel order
    (row, column, channel), so a patch row dotted with a flattened kernel is the conv's output."""
    _, h, w, c = images.shape
    views = [images[:, a:h - k + 1 + a, b:w - k + 1 + b, :] for a in range(k) for b in range(k)]
    return np.concatenate(views, axis=-1).reshape(-1, k * k * c).astype(np.float64)


def patch_covariance(images: np.ndarray, k: int = WHITEN_KERNEL, chunk: int = 256) -> np.ndarray:
    """The uncentred covariance E[p p^T] of all k x k patches of ``images`` (N,H,W,C), float64.
    Accumulated over chunks of images, so 5,000 CIFAR images never need 5,000 images of patches."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] < k or images.shape[2] < k:
        raise ValueError(f"need (N, H, W, C) images of at least {k}x{k} pixels, got {images.shape}")
    dim = k * k * images.shape[-1]
    total, count = np.zeros((dim, dim)), 0
    for i in range(0, len(images), chunk):
        rows = _patch_rows(images[i:i + chunk], k)
        total += rows.T @ rows
        count += len(rows)
    return total / max(count, 1)


def whitening_kernel(images: np.ndarray, k: int = WHITEN_KERNEL, eps: float = 5e-4):
    """(kernel (k, k, C, 2*k*k*C) float32, eigenvalues largest first): the stem's filters from the
    patches of ``images``, scaled as the model will see them. Filter i < k*k*C is eigenvector i
    / sqrt(eigenvalue_i + eps); filter k*k*C + i is its negation (so GELU keeps both signs)."""
    cov = patch_covariance(images, k)
    values, vectors = np.linalg.eigh(cov)  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    filters = vectors / np.sqrt(np.maximum(values, 0.0) + eps)
    c = images.shape[-1]
    kernel = np.concatenate([filters, -filters], axis=1).reshape(k, k, c, 2 * k * k * c)
    return kernel.astype(np.float32), values


def dirac_kernel(kernel: np.ndarray) -> np.ndarray:
    """``kernel`` (kh, kw, C_in, C_out) with its first min(C_in, C_out) filters set to the identity:
    filter j copies input channel j at the centre tap and is zero elsewhere."""
    out = np.array(kernel, dtype=np.float32, copy=True)
    kh, kw, c_in, c_out = out.shape
    n = min(c_in, c_out)
    out[:, :, :, :n] = 0.0
    out[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
    return out


def torch_uniform():
    """PyTorch's default conv/linear init (kaiming uniform, a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    import keras

    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


def build_airbench(input_shape, num_classes, recipe=None, whiten_images=None):
    """The airbench network for ``input_shape`` (H, W, C) images and ``num_classes`` logits.

    ``recipe`` (a ``RecipeConfig``; None: its defaults) gives the widths and the switches
    (whiten, dirac, weight_decay, bias_rate); ``whiten_images`` (N, H, W, C) float32, scaled as
    the model sees them, whiten the stem. Without them (or with ``recipe.whiten`` off) the stem
    is an ordinary trainable 2x2 conv.
    """
    import keras
    from keras import layers

    from tasks.train.config import RecipeConfig

    recipe = recipe or RecipeConfig()
    h, w, c = (int(d) for d in input_shape)
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"airbench needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels "
                         f"(a 2x2 stem, then three 2x max-pools)")
    l2 = keras.regularizers.L2(recipe.weight_decay) if recipe.weight_decay > 0 else None
    # The optimizer gives BN biases `bias_rate` x the learning rate; their L2 is divided by it,
    # so the decay per step equals the weights' (as airbench's decoupled-per-group decay does).
    beta_l2 = keras.regularizers.L2(recipe.weight_decay / recipe.bias_rate) if l2 else None
    whiten = recipe.whiten and whiten_images is not None

    inputs = keras.Input(shape=(h, w, c), name="image")
    stem = layers.Conv2D(2 * c * WHITEN_KERNEL ** 2, WHITEN_KERNEL, padding="valid", use_bias=True,
                         kernel_initializer=torch_uniform(), kernel_regularizer=None if whiten else l2,
                         bias_regularizer=l2, name="whiten")
    x = layers.Activation("gelu", name="whiten_gelu")(stem(inputs))
    convs = []
    for b, width in enumerate(_widths(recipe.widths), start=1):
        for i in (1, 2):
            conv = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=torch_uniform(),
                                 kernel_regularizer=l2, name=f"block{b}_conv{i}")
            x = conv(x)
            convs.append(conv)
            if i == 1:
                x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False, center=True,
                                          beta_regularizer=beta_l2, name=f"block{b}_bn{i}")(x)
            x = layers.Activation("gelu", name=f"block{b}_gelu{i}")(x)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=torch_uniform(), kernel_regularizer=l2,
                     dtype="float32", name="head")(x)
    outputs = layers.Rescaling(LOGIT_SCALE, dtype="float32", name="logits")(x)
    model = keras.Model(inputs, outputs, name="airbench")

    if whiten:
        kernel, _ = whitening_kernel(np.asarray(whiten_images, np.float32), WHITEN_KERNEL, recipe.whiten_eps)
        stem.kernel.assign(kernel)
        stem.kernel.trainable = False  # frozen filters; the bias still trains
    if recipe.dirac:
        for conv in convs:
            conv.kernel.assign(dirac_kernel(conv.kernel.numpy()))
    return model


def _widths(widths: Sequence[int]) -> list[int]:
    if len(widths) != 3 or any(int(v) < 1 for v in widths):
        raise ValueError(f"airbench takes three block widths >= 1, got {list(widths)}")
    return [int(v) for v in widths]
