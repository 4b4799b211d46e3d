"""The validation split (tasks/core/holdout.py): stratified, seeded, disjoint, and refused with
the numbers when it cannot be drawn."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.holdout import HELD_OUT, TEST, Holdout, HoldoutError, problems, record, split_id, split_rows


def _labels(per_class=(50, 30, 20)):
    return np.repeat(np.arange(len(per_class)), per_class)[np.random.default_rng(7).permutation(sum(per_class))]


def test_a_fraction_holds_out_the_same_share_of_every_class():
    y = _labels()
    train, val = split_rows(y, Holdout(0.1, seed=3))
    assert np.bincount(y[val]).tolist() == [5, 3, 2]
    assert len(train) + len(val) == len(y)
    assert not set(train) & set(val)
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()


def test_a_count_is_spread_over_classes_by_largest_remainder():
    y = _labels((34, 33, 33))
    _, val = split_rows(y, Holdout(10, seed=0))
    assert len(val) == 10
    assert np.bincount(y[val], minlength=3).tolist() == [4, 3, 3]


def test_the_same_seed_gives_the_same_rows_and_another_seed_others():
    y = _labels()
    assert np.array_equal(split_rows(y, Holdout(0.2, 1))[1], split_rows(y, Holdout(0.2, 1))[1])
    assert not np.array_equal(split_rows(y, Holdout(0.2, 1))[1], split_rows(y, Holdout(0.2, 2))[1])


def test_validation_test_holds_out_nothing():
    y = _labels()
    train, val = split_rows(y, Holdout(TEST))
    assert len(train) == len(y) and len(val) == 0
    assert Holdout(TEST).protocol == TEST and Holdout(0.1).protocol == HELD_OUT


@pytest.mark.parametrize("size, words", [
    (99, "would hold out all 30 images of class 1"),
    (100, "would hold out every image"),
    (10**18, r"must be within \[1, 2,147,483,647\], got 1000000000000000000"),
    (0.001, "holds out no image"),
])
def test_a_split_that_cannot_be_drawn_is_refused_with_its_numbers(size, words):
    with pytest.raises(HoldoutError, match=words):
        split_rows(_labels(), Holdout(size))


@pytest.mark.parametrize("size, ok", [(0.1, True), (5000, True), ("test", True), (1.0, False), (0.0, False),
                                      (0, False), (-3, False), (2**31, False), ("train", False), (True, False), (None, False)])
def test_config_values(size, ok):
    assert (problems(size) == []) is ok


def test_the_split_id_names_the_images_not_the_run():
    a = split_id(Holdout(0.1, 0), "data-a")
    assert a == split_id(Holdout(0.1, 0), "data-a")
    assert len({a, split_id(Holdout(0.1, 1), "data-a"), split_id(Holdout(0.2, 0), "data-a"),
                split_id(Holdout(0.1, 0), "data-b"), split_id(Holdout(TEST), "data-a", "t1")}) == 5
    entry = record(Holdout(500, 4), 500, "data-a")
    assert entry["protocol"] == HELD_OUT and entry["images"] == 500 and entry["seed"] == 4
    assert "500 held-out training images" in entry["described"]
