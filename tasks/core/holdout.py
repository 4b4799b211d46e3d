"""The validation split: which training images are held out to judge a run (per-epoch curves,
promotion, sweeps), so that the test split is used once, at the end, for the report.

``dataset.validation`` in pipelines.yaml says how many: a fraction of the training split
(``0.1``), a number of images (``5000``), or ``test`` -- the notebook's protocol, where the
test split is also the validation data (and any choice made on it is a choice on the test set).
The held-out images are drawn per class (stratified: each class gives the same share, the
rounding spread by largest remainder) with ``dataset.validation_seed``; the same labels, spec
and seed always give the same rows, so training (which leaves them out) and saving (which scores
them) agree without passing arrays. Pure: NumPy only, no Prefect, no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.core.errors import CifarError
from tasks.core.hashing import stable_hash

TEST = "test"
HELD_OUT = "held-out"
MAX_IMAGES = 2**31 - 1  # a count beyond any training split this product decodes


class HoldoutError(CifarError):
    """The validation split cannot be drawn from this training split."""


@dataclass(frozen=True)
class Holdout:
    """``dataset.validation`` and ``dataset.validation_seed``, as the train and store stages take
    them (small and picklable: it crosses stages and Prefect's cache)."""

    size: float | int | str = 0.1  # a fraction in (0, 1), a number of images, or "test"
    seed: int = 0

    @property
    def protocol(self) -> str:
        return TEST if self.size == TEST else HELD_OUT

    def describe(self, images: int | None = None) -> str:
        """"5,000 held-out training images (10% per class, seed 0)" or "the test split"."""
        if self.protocol == TEST:
            return "the test split (validation: test, the notebook's protocol)"
        share = (f"{self.size:.0%} per class" if isinstance(self.size, float)
                 else f"{self.size:,} images, stratified by class")
        count = f"{images:,} " if images is not None else ""
        return f"{count}held-out training images ({share}, seed {self.seed})"


def problems(size: Any) -> list[str]:
    """What is wrong with a ``dataset.validation`` value on its own (before any data is seen)."""
    if size == TEST:
        return []
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        return [f"must be a fraction (0.1), a number of images (5000) or 'test', got {size!r}"]
    if isinstance(size, float) and not 0 < size < 1:
        return [f"a fraction must be within (0, 1), got {size}; write a whole number for a count of images"]
    if isinstance(size, int) and not 1 <= size <= MAX_IMAGES:
        return [f"a number of images must be within [1, {MAX_IMAGES:,}], got {size}"]
    return []


def _counts(per_class: np.ndarray, holdout: Holdout) -> np.ndarray:
    """Images to hold out of each class: the same share of every class, the rounding given to
    the classes with the largest remainders (ties to the lower class index)."""
    total = int(per_class.sum())
    wanted = holdout.size * total if isinstance(holdout.size, float) else holdout.size
    exact = per_class * (float(wanted) / total) if total else per_class * 0.0
    counts = np.floor(exact).astype(np.int64)
    short = int(round(float(wanted))) - int(counts.sum())
    if short > 0:
        order = np.lexsort((np.arange(len(exact)), -(exact - counts)))
        counts[order[:short]] += 1
    return counts


def split_rows(labels: np.ndarray, holdout: Holdout) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of a training split with these integer ``labels``, both
    sorted. With ``validation: test`` every row trains and none is held out.

    Raises HoldoutError (naming the numbers) when the split would leave a class with no training
    image or hold out nothing or everything."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(y)
    if holdout.protocol == TEST:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if problem := problems(holdout.size):
        raise HoldoutError(f"dataset.validation {problem[0]}")
    what = f"dataset.validation {holdout.size!r} of {n:,} training images"
    if isinstance(holdout.size, int) and holdout.size >= n:
        raise HoldoutError(f"{what} would hold out every image, leaving nothing to train on; hold out fewer "
                           "(a fraction such as 0.1, or a number below the training split's size)")
    classes = np.unique(y)
    per_class = np.array([int((y == c).sum()) for c in classes], dtype=np.int64)
    counts = _counts(per_class, holdout)
    if counts.sum() < 1:
        raise HoldoutError(f"{what} holds out no image; hold out a larger share, or set "
                           "`validation: test` to validate on the test split")
    starved = [(int(c), int(k), int(m)) for c, k, m in zip(classes, counts, per_class) if k >= m]
    if starved:
        c, k, m = starved[0]
        raise HoldoutError(f"{what} would hold out all {m:,} images of class {c} ({k:,} wanted), leaving "
                           "it nothing to train on; hold out a smaller share or a smaller number")
    rng = np.random.default_rng(holdout.seed)
    held = [np.sort(rng.permutation(np.flatnonzero(y == c))[:k]) for c, k in zip(classes, counts)]
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask).astype(np.int64), val.astype(np.int64)


def split_id(holdout: Holdout, data_content: str, test_split: str | None = None) -> str:
    """Which images a run was validated on, as a short hash: the same for two runs exactly when
    their validation images are the same (same data, spec and seed; or the same test split)."""
    if holdout.protocol == TEST:
        return stable_hash("validation", TEST, test_split or data_content)[:16]
    return stable_hash("validation", data_content, holdout.size, holdout.seed)[:16]


def record(holdout: Holdout, images: int, data_content: str, test_split: str | None = None) -> dict[str, Any]:
    """metrics.json's ``validation`` entry: protocol, images, spec, seed and split id."""
    return {"protocol": holdout.protocol, "images": int(images), "spec": holdout.size,
            "seed": None if holdout.protocol == TEST else holdout.seed,
            "split": split_id(holdout, data_content, test_split), "described": holdout.describe(images)}
