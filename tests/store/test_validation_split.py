"""Promotion on the validation split (issue 30): a run is judged on held-out training images, the
test split is scored once for the report, and a champion validated on other images is never
scored on this run's held-out ones (it may have trained on them).

Constant classifiers (``trainfolders.write_trained(constant=c)``) on a training split of 30 cats,
12 dogs and 6 frogs: a quarter held out per class is 8/3/1 images, so their validation accuracy
is 8/12, 3/12 and 1/12; on the test split below (12 dogs, 8 cats) it is 0.4, 0.6 and 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trainfolders import CLASSES3, pipeline, store_trained, write_trained

from tasks.core import runs as layout
from tasks.core.datacache import write_dataset_cache
from tasks.core.files import read_json
from tasks.core.records import ValidationRecord
from tasks.store.saving import store_run

Y_TRAIN = np.array([0] * 30 + [1] * 12 + [2] * 6, dtype=np.uint8)
Y_TEST = np.array([1] * 12 + [0] * 8, dtype=np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout")
    rng = np.random.default_rng(0)
    ds = write_dataset_cache(root / "datasets" / "fp", rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8),
                             Y_TRAIN, rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), Y_TEST, CLASSES3,
                             {"source": "test", "archive_sha256": "ab" * 32, "format": "test"})
    return ds, {c: write_trained(root, f"k-const{c}", ds, constant=c) for c in range(3)}


def _metrics(art, record):
    return read_json(layout.run_dir(art, "tiny", record.run_id) / layout.METRICS)


def test_held_out_images_score_the_run_and_the_test_split_is_reported_beside(models, tmp_path):
    ds, m = models
    run = store_trained(tmp_path, ds, m[0], validation=0.25, metric="validation_accuracy")
    metrics = _metrics(tmp_path, run)
    assert metrics["validation_size"] == 12 and metrics["validation_accuracy"] == pytest.approx(8 / 12)
    assert metrics["test_size"] == 20 and metrics["test_accuracy"] == pytest.approx(0.4)
    assert metrics["validation"]["protocol"] == "held-out" and metrics["validation"]["images"] == 12
    assert "12 held-out training images (25% per class, seed 0)" == metrics["validation"]["described"]


def test_the_champion_is_chosen_on_validation_even_where_the_test_split_disagrees(models, tmp_path):
    ds, m = models
    dogs = store_trained(tmp_path, ds, m[1], validation=0.25, metric="validation_accuracy")  # val 0.25, test 0.6
    cats = store_trained(tmp_path, ds, m[0], validation=0.25, metric="validation_accuracy")  # val 0.67, test 0.4
    assert dogs.promoted and cats.promoted
    assert cats.reason.startswith("validation_accuracy 66.67% beats champion 25.00% by 41.67 pp"), cats.reason
    assert "test" not in cats.reason


def test_validation_test_is_the_notebooks_protocol_and_says_so(models, tmp_path):
    ds, m = models
    metrics = _metrics(tmp_path, store_trained(tmp_path, ds, m[1], validation="test", metric="validation_accuracy"))
    assert metrics["validation_accuracy"] == metrics["test_accuracy"] == pytest.approx(0.6)
    assert metrics["validation"]["protocol"] == "test" and metrics["validation_size"] == 20
    assert "the notebook's protocol" in metrics["validation"]["described"]


def test_a_champion_validated_on_other_images_is_compared_on_the_test_split_once(models, tmp_path):
    ds, m = models
    dogs = store_trained(tmp_path, ds, m[1], validation=0.25, metric="validation_accuracy")
    # Another validation seed: other held-out images, which the champion may have trained on.
    # Its 25% there says nothing comparable; both are judged by test accuracy (0.4 vs 0.6).
    other = pipeline(validation=0.25, metric="validation_accuracy")
    other = dataclasses.replace(other, dataset=dataclasses.replace(other.dataset, validation_seed=1))
    cats = store_run(other, ds, ValidationRecord(ds.fingerprint, {"checks": []}), m[0], {}, None, str(tmp_path))
    assert not cats.promoted
    assert f"champion {dogs.run_id} was validated on other images (12 held-out training images (25% per class, " \
           "seed 0)), so both are compared by test_accuracy this once" in cats.reason, cats.reason
    assert "test_accuracy 40.00% does not beat champion 60.00%" in cats.reason


def test_a_champion_that_validated_on_the_test_split_is_compared_on_the_test_split(models, tmp_path):
    ds, m = models
    old = store_trained(tmp_path, ds, m[2], validation="test", metric="test_accuracy")  # test 0.0
    new = store_trained(tmp_path, ds, m[1], validation=0.25, metric="validation_accuracy")  # test 0.6
    assert old.promoted and new.promoted
    assert "compared by test_accuracy this once" in new.reason and "beats champion 0.00%" in new.reason
