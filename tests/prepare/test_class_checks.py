"""What a dataset must be to train a classifier (issue 15; tasks/prepare/validation.py): at least
two classes, and every class in both splits, each failure naming the class and the split."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.datacache import write_dataset_cache
from tasks.core.pixels import one_hot, scale_pixels
from tasks.prepare.config import PrepareConfig
from tasks.prepare.errors import DataValidationError
from tasks.prepare.validation import validate_arrays, validate_cached_dataset


def _prepared(y_train, y_test, classes):
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, (len(y_train), 2, 2, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (len(y_test), 2, 2, 3), dtype=np.uint8)
    return validate_arrays(x_train, np.asarray(y_train, np.uint8), x_test, np.asarray(y_test, np.uint8),
                           classes, scale=scale_pixels, encode=lambda y: one_hot(y, len(classes)),
                           balance_tolerance=1.0)


def test_a_single_class_dataset_fails_validation():
    with pytest.raises(DataValidationError) as e:
        _prepared([0] * 8, [0] * 4, ("cat",))
    assert "1 validation check(s) failed" in str(e.value)
    assert "1 class(es) ('cat'): a classifier needs at least two" in str(e.value)
    assert "100% test accuracy that means nothing" in str(e.value)


def test_a_single_class_dataset_cache_fails_validation(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (12, 2, 2, 3), dtype=np.uint8)
    y = np.zeros(len(x), np.uint8)
    rec = write_dataset_cache(tmp_path / "datasets" / "one", x[:8], y[:8], x[8:], y[8:], ("cat",),
                              {"source": "tests", "format": "tiny"})
    with pytest.raises(DataValidationError, match="a classifier needs at least two"):
        validate_cached_dataset(rec, PrepareConfig(), str(tmp_path))


def test_missing_classes_are_named_per_split():
    with pytest.raises(DataValidationError) as e:
        _prepared([0, 1] * 4, [0, 2] * 2, ("a", "b", "c"))  # train has no 'c', test no 'b'
    assert "1 validation check(s) failed" in str(e.value)
    assert "every class present in both splits: train has no 'c'; test has no 'b'" in str(e.value)
    assert "add its images to that split" in str(e.value)


def test_every_class_in_both_splits_passes():
    assert _prepared([0, 1, 2] * 3, [2, 1, 0], ("a", "b", "c"))["passed"]
