"""Issue 29: a cifar10-python batch whose labels are not integers in range is refused naming the
file, the record and the value (before: raw TypeError, UFuncTypeError, ValueError or IndexError
tracebacks, and 0.9 silently read as class 0)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from tasks.download.errors import DatasetFormatError
from tasks.download.formats import python_batch


def batch(labels) -> bytes:
    return pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels})


@pytest.mark.parametrize("labels, words", [
    ([None, 1], "record 0 has label None, not an integer within 0..9"),
    ([1, "x"], "record 1 has label 'x', not an integer within 0..9"),
    ([float("nan"), 1], "record 0 has label nan, not an integer within 0..9"),
    ([{}, 1], "record 0 has label {}, not an integer within 0..9"),
    ([0.9, 1], "record 0 has label 0.9, not an integer within 0..9"),
    ([True, 1], "record 0 has label True, not an integer within 0..9"),
    ([1, 10], "record 1 has label 10, not an integer within 0..9"),
    ([1, 2**70], "record 1 has label 1180591620717411303424, not an integer"),
    (None, "'labels' is NoneType, expected a list of integers 0..9"),
    ({"a": 1}, "'labels' is dict, expected a list of integers 0..9"),
    (np.array([0.5, 1.0]), "'labels' is a float64 array of shape (2,); expected a list of integers"),
])
def test_labels_that_are_not_class_indices_are_refused_by_record_and_value(labels, words):
    with pytest.raises(DatasetFormatError) as info:
        python_batch(batch(labels), "cifar.tgz:cifar-10-batches-py/data_batch_1")
    assert str(info.value).startswith("cifar.tgz:cifar-10-batches-py/data_batch_1: ") and words in str(info.value)


def test_integer_labels_still_decode():
    x, y = python_batch(batch([3, 9]), "w")
    assert y.tolist() == [3, 9] and y.dtype == np.uint8
    x, y = python_batch(batch(np.array([0, 1], np.int64)), "w")
    assert y.tolist() == [0, 1]
