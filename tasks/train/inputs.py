"""The input pipeline: what the model sees, batch by batch. Rows are read from the uint8 dataset
cache as they are needed, shuffled by seed, optionally augmented, then scaled (and standardised
with the train split's statistics) and one-hot encoded by ``tasks.core.pixels``."""

from __future__ import annotations

import os
from typing import Any, Protocol

from tasks.core.pixels import one_hot, scale_pixels
from tasks.core.records import ValidationRecord
from tasks.train.config import TrainingError


class PrepareSettings(Protocol):
    """The part of the ``prepare:`` settings that training follows (the prepare stage's config
    satisfies it; training does not import that stage)."""

    standardize: bool


def preprocess_stats(validation: ValidationRecord | None, prepare: PrepareSettings) -> dict[str, Any]:
    """{"mean", "std"}: the train split's channel statistics when ``prepare.standardize`` (from the
    validation summary; None: no validation ran, which only a pipeline that does not standardise takes)."""
    if not prepare.standardize:
        return {"mean": None, "std": None}
    summary = validation.summary if validation is not None else {}
    mean, std = summary.get("channel_mean"), summary.get("channel_std")
    if mean is None or std is None:
        raise TrainingError("prepare.standardize is on but the validation summary has no "
                            "channel_mean/channel_std; rerun the validation stage.")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def augment_batch(images, seed):
    """Random horizontal flip and pad-4-reflect-then-crop, per image, on a uint8 batch.

    ``seed`` is a shape-[2] int tensor (stateless ops: the same seed gives the same batch).
    """
    import tensorflow as tf

    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    flip = tf.random.stateless_uniform([n], seed=flip_seed) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return translate_batch(images, crop_seed, min(4, h - 1, w - 1))


def translate_batch(images, seed, pad: int):
    """Each image shifted by a random whole number of pixels in [-pad, pad] on both axes: padded by
    ``pad`` with reflection, then cropped back at a per-image integer offset (never interpolated).
    ``seed`` is a shape-[2] int tensor (stateless)."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    offsets = tf.random.stateless_uniform([n, 2], seed=seed, minval=0, maxval=2 * pad + 1,
                                          dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(h)[None, :]
    cols = offsets[:, 1:] + tf.range(w)[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


FLIP_STREAM, SHUFFLE_STREAM, CROP_STREAM = 1, 2, 3  # independent stateless streams per seed


def flip_mask(indices, epoch, seed: int, n: int, mode: str):
    """Which images (by their row ``indices`` in the split of ``n``) are mirrored in ``epoch``.

    "alternate" (airbench): a seeded half of the images -- exactly floor(n/2), picked by a
    stateless permutation of the row numbers -- in even epochs, and exactly the other half in odd
    ones, so every image is seen both ways every two epochs. "random": a fresh seeded half each
    epoch. "off": none. Depends only on (row, epoch, seed), never on the batch it falls in.
    """
    import tensorflow as tf

    idx = tf.cast(indices, tf.int64)
    if mode == "off":
        return tf.zeros(tf.shape(idx), tf.bool)
    epoch = tf.cast(epoch, tf.int64)
    stream = tf.constant([seed, FLIP_STREAM], tf.int64)
    if mode == "random":
        stream = tf.stack([tf.constant(seed, tf.int64), FLIP_STREAM + 10 * (epoch + 1)])
    half = tf.random.experimental.index_shuffle(idx, stream, tf.constant(n - 1, tf.int64)) < n // 2
    if mode == "alternate":
        return tf.not_equal(half, tf.equal(epoch % 2, 1))
    return half


class RowReader:
    """Rows of an ``(N, ...)`` array by index, for the input pipeline's per-batch gather.

    A memory-mapped ``.npy`` (the dataset cache) is read with positional ``preadv`` calls into the
    batch buffer: the rows come from the kernel's page cache and nothing of the dataset stays
    resident in this process (a mapping or a TensorFlow copy would add 180 MB on CIFAR-10).
    Any other array is indexed in memory. Safe to call from several threads at once.
    """

    def __init__(self, a):
        import mmap

        import numpy as np

        self.shape = tuple(a.shape[1:])
        self.dtype = a.dtype
        self.row_bytes = int(np.prod(self.shape, dtype=np.int64)) * a.dtype.itemsize
        self._array = None
        self._fd = None
        self.vectored = hasattr(os, "preadv")  # else os.pread and a copy (platforms without it)
        # Only an original mapping of a C-ordered file (a view's offset would not be its own);
        # where the OS has no positional reads at all (Windows), the mapping is indexed instead.
        if (isinstance(a, np.memmap) and isinstance(a.base, mmap.mmap) and a.flags.c_contiguous
                and getattr(a, "filename", None) and hasattr(os, "pread")):
            self.filename, self.offset = str(a.filename), int(a.offset)
            self._fd = os.open(self.filename, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        else:
            self._array = np.asarray(a)

    def __call__(self, idx):
        import numpy as np

        if self._array is not None:
            return self._array[idx]
        out = np.empty((len(idx), *self.shape), self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        size, base = self.row_bytes, self.offset
        for j, i in enumerate(np.asarray(idx, np.int64).tolist()):
            row = view[j * size:(j + 1) * size]
            if self.vectored:
                got = os.preadv(self._fd, [row], base + i * size)
            else:
                data = os.pread(self._fd, size, base + i * size)
                got = len(data)
                row[:got] = data
            if got != size:
                raise TrainingError(f"{self.filename}: row {i} is cut short ({got} of {size} bytes); "
                                    "the dataset cache changed under training -- run again to rebuild it")
        return out

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def recipe_dataset(x, y, num_classes: int, batch_size: int, *, seed: int, epochs: int, start_epoch: int = 0,
                   flip: str = "alternate", translate: int = 2, mean=None, std=None, rows=None):
    """The recipe's training stream: every epoch from ``start_epoch`` to ``epochs`` in one
    ``tf.data`` pipeline (fit it with ``steps_per_epoch``), each a function of (seed, epoch) only.

    Epoch e: a stateless permutation of the rows, cut into full batches (the remainder dropped);
    per batch the rows are read from the cache (``RowReader``), mirrored per ``flip_mask``,
    shifted by integer pixels up to ``translate`` (reflect-padded; NHWC, so width is axis 2),
    scaled and one-hot encoded. A run resumed at epoch e sees exactly what it would have seen.
    ``rows``: only these rows of ``x``/``y`` (the training rows of a validation split), numbered
    0..len(rows)-1 for the permutation and the flips.
    """
    import numpy as np
    import tensorflow as tf

    read, n = _batch_reader(x, y, rows)
    per = min(batch_size, n)
    steps = max(1, n // batch_size)
    h, w = (int(d) for d in np.shape(x)[1:3])
    pad = min(int(translate), h - 1, w - 1)

    def epoch_batches(epoch):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), SHUFFLE_STREAM + 10 * epoch]))
        idx = tf.reshape(perm[: steps * per], [steps, per])
        return tf.data.Dataset.from_tensor_slices((idx, tf.fill([steps], epoch), tf.range(steps, dtype=tf.int64)))

    def load(idx, epoch, step):
        xb, yb = read(idx)
        if flip != "off":
            mask = flip_mask(idx, epoch, seed, n, flip)
            xb = tf.where(mask[:, None, None, None], tf.reverse(xb, axis=[2]), xb)
        if pad > 0:
            crop = tf.random.experimental.stateless_fold_in(
                tf.constant([seed, CROP_STREAM], tf.int64), epoch * steps + step)
            xb = translate_batch(xb, crop, pad)
        return scale_pixels(xb, mean, std), one_hot(yb, num_classes)

    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_batches)
    return _finish(ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def _batch_reader(x, y, rows=None):
    """(read, n): ``read(idx)`` gives the (uint8 images, labels) tensors of rows ``idx`` -- of
    ``rows[idx]`` when ``rows`` (a subset of the arrays' rows) is given; n rows in all."""
    import numpy as np
    import tensorflow as tf

    if len(x) != len(y):
        raise TrainingError(f"images and labels differ in length: {len(x)} vs {len(y)}")
    read_images = RowReader(x)
    chosen = None if rows is None else np.asarray(rows, dtype=np.int64)
    labels = np.array(y) if chosen is None else np.asarray(y)[chosen]  # N bytes, copied out of any mapping

    def gather(idx):
        return read_images(idx if chosen is None else chosen[idx]), labels[idx]

    def read(idx):
        xb, yb = tf.numpy_function(gather, [idx], [tf.as_dtype(read_images.dtype),
                                                    tf.as_dtype(labels.dtype)], stateful=False)
        return tf.ensure_shape(xb, (None, *read_images.shape)), tf.ensure_shape(yb, (None,))

    return read, len(labels)


def _finish(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotune optimisation thread: deleting an iterator waits for that thread's next wake-up,
    # and Keras deletes one per epoch -- measured here (TF 2.21, 2 shared cores) as 2-29 s stalls
    # at epoch ends / after fit(). The per-batch work is tiny; the AUTOTUNE buffer/parallelism
    # values below still apply (without the model thread).
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_dataset(x, y, num_classes: int, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 augment: bool = False, mean=None, std=None, rows=None):
    """A ``tf.data`` pipeline over uint8 arrays (memory-mapped ones welcome), or over ``rows``
    of them only (a validation split's training or held-out rows).

    An index stream is shuffled (seeded, reshuffled every epoch) and batched; each batch's rows
    are read from the arrays (``RowReader``: no copy of the dataset is held), augmented (optional),
    scaled to float32 and one-hot encoded per batch by ``tasks.core.pixels``, then prefetched.
    """
    import tensorflow as tf

    read, n = _batch_reader(x, y, rows)
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
                                 .batch(2))

    def load(idx, rnd=None):
        xb, yb = read(idx)
        if rnd is not None:
            xb = augment_batch(xb, rnd)
        return scale_pixels(xb, mean, std), one_hot(yb, num_classes)

    return _finish(ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
