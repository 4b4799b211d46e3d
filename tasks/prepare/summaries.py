"""The prepared data reduced to tables pandera can check: one row per image (its value range,
mean, std, finiteness, dtype, shape) and one row per label (its one-hot shape), built chunk by
chunk so no float copy of the whole set is ever made; and a digest per image for duplicates."""

import hashlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

CHUNK = 512  # images per chunk: 6 MB of float32 at 32x32x3; cache-sized chunks beat 4096 by 3-4x


def shape_text(shape: Sequence[int]) -> str:
    """(32, 32, 3) -> "32x32x3", as the summary frame's ``shape`` column spells it."""
    return "x".join(str(int(d)) for d in shape)


def chunk_bounds(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive chunks of ``size`` rows covering ``n`` rows."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _channel_sums(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and channel: the sum of the values and of their squares, (images, channels) in
    float64. Summed in the data's float type (an image's sum has ~1k terms) and accumulated across
    images in float64. One strided reduction per channel: no float64 copy, no BLAS (its threads
    thrash on small cores). A chunk that is not (N, H, W, C) counts as one channel."""
    f = c.astype(np.result_type(c.dtype, np.float32), copy=False)
    f = f if f.ndim == 4 else f.reshape(len(f), -1, 1, 1)
    sq = np.square(f)
    s1 = np.stack([f[..., k].sum(axis=(1, 2)) for k in range(f.shape[-1])], 1).astype(np.float64)
    s2 = np.stack([sq[..., k].sum(axis=(1, 2)) for k in range(f.shape[-1])], 1).astype(np.float64)
    return s1, s2


def _finite_range(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``flat``: (all values finite, min, max), min/max over the finite values only
    (NaN when a row has none)."""
    fin = np.isfinite(flat).all(axis=1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    for i in np.flatnonzero(~fin):  # rare
        good = flat[i][np.isfinite(flat[i])]
        lo[i], hi[i] = (good.min(), good.max()) if good.size else (np.nan, np.nan)
    return fin, lo, hi


def summarize_images(x, transform: Callable | None = None, chunk: int = CHUNK):
    """One row per image of ``transform(x)`` (the prepared pixels), built chunk by chunk.

    Returns ``(frame, channel_sums)``: frame columns min, max, mean, std (float64 statistics of
    the image's values, min/max over its finite values), finite, dtype, shape; channel_sums is
    ``(count, sum, sum of squares)`` per channel (float64), or None when x is not (N, H, W, C).
    """
    import pandas as pd

    n = len(x)
    cols = {k: np.empty(n, dtype=np.float64) for k in ("min", "max", "mean", "std")}
    finite = np.empty(n, dtype=bool)
    dtype = shape = None
    ch_sum = ch_sq = None
    for a, b in chunk_bounds(n, chunk):
        c = np.asarray(x[a:b]) if transform is None else transform(x[a:b])
        dtype, shape = c.dtype.name, c.shape[1:]
        flat = c.reshape(len(c), -1)
        s1, s2 = _channel_sums(c)
        size = flat.shape[1]
        mean = s1.sum(axis=1) / size
        cols["mean"][a:b] = mean
        cols["std"][a:b] = np.sqrt(np.maximum(s2.sum(axis=1) / size - mean**2, 0.0))
        finite[a:b], cols["min"][a:b], cols["max"][a:b] = _finite_range(flat)
        if c.ndim == 4:
            ch_sum = s1.sum(axis=0) if ch_sum is None else ch_sum + s1.sum(axis=0)
            ch_sq = s2.sum(axis=0) if ch_sq is None else ch_sq + s2.sum(axis=0)
    frame = pd.DataFrame(cols)
    frame["finite"] = finite
    # The same string object in every row: 8 bytes a row.
    frame["dtype"] = np.full(n, dtype or str(np.asarray(x[:0]).dtype), dtype=object)
    frame["shape"] = np.full(n, shape_text(shape if shape is not None else x.shape[1:]), dtype=object)
    channels = None
    if ch_sum is not None:
        count = n * int(np.prod(shape[:-1]))
        channels = (count, ch_sum, ch_sq)
    return frame, channels


def summarize_labels(y, transform: Callable | None = None, chunk: int = CHUNK * 4):
    """One row per label of ``transform(y)`` (the one-hot rows): width, ones (entries equal to
    1), other (entries neither 0 nor 1, NaN included), label (argmax, -1 unless exactly one 1)."""
    import pandas as pd

    n = len(y)
    cols = {k: np.empty(n, dtype=np.int64) for k in ("width", "ones", "other", "label")}
    for a, b in chunk_bounds(n, chunk):
        c = np.asarray(y[a:b]) if transform is None else transform(y[a:b])
        if c.ndim == 1:
            c = c[:, None]
        c = c.reshape(len(c), -1)
        is1 = c == 1
        ones = is1.sum(axis=1)
        cols["width"][a:b] = c.shape[1]
        cols["ones"][a:b] = ones
        cols["other"][a:b] = ((c != 0) & ~is1).sum(axis=1)
        cols["label"][a:b] = np.where(ones == 1, is1.argmax(axis=1), -1)
    return pd.DataFrame(cols)


def image_hashes(x, chunk: int = CHUNK) -> list[bytes]:
    """A 128-bit blake2b digest of each image's bytes (rows of the array, in order)."""
    out: list[bytes] = []
    for a, b in chunk_bounds(len(x), chunk):
        buf = memoryview(np.ascontiguousarray(x[a:b])).cast("B")
        step = len(buf) // (b - a)
        out.extend(hashlib.blake2b(buf[i:i + step], digest_size=16).digest()
                   for i in range(0, len(buf), step))
    return out
