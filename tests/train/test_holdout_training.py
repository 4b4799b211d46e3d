"""Training with a validation split (issue 30): the held-out rows never reach the model's training
stream (nor the whitening sample), they are what each epoch validates on, and the train key and
train.json say which split trained."""

from __future__ import annotations

import numpy as np
import pytest

from trainfolders import make_cache

from tasks.core.datacache import load_dataset
from tasks.core.files import read_json
from tasks.core.holdout import TEST, Holdout, split_rows
from tasks.prepare.config import PrepareConfig
from tasks.train.config import RecipeConfig, TrainingConfig
from tasks.train.fit import make_inputs, whiten_sample
from tasks.train.run import run_training, train_key

NO_STATS = {"mean": None, "std": None}
SPLIT = Holdout(0.2, seed=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("holdout"), n_train=60, n_test=20, shape=(16, 16, 3), classes=3)


def _images(ds) -> list[bytes]:
    return [bytes(np.asarray(x * 255.0).round().astype(np.uint8).tobytes()) for xb, _ in ds for x in xb.numpy()]


@pytest.mark.parametrize("recipe", [None, RecipeConfig(translate=0, flip="off")], ids=["notebook", "recipe"])
def test_held_out_rows_validate_and_never_train(cache, recipe):
    data = load_dataset(cache.path)
    train_rows, val_rows = split_rows(data.y_train, SPLIT)
    cfg = TrainingConfig(epochs=1, batch_size=8, recipe=recipe)
    train, validation = make_inputs(cache, cfg, NO_STATS, holdout=SPLIT)
    held = {bytes(data.x_train[i].tobytes()) for i in val_rows}
    kept = {bytes(data.x_train[i].tobytes()) for i in train_rows}
    trained_on = _images(train)
    assert not held & set(trained_on)
    assert set(trained_on) <= kept and len(trained_on) == (len(train_rows) if recipe is None else 48)
    assert sorted(_images(validation)) == sorted(held)
    labels = np.concatenate([np.argmax(yb.numpy(), axis=1) for _, yb in validation])
    assert sorted(labels.tolist()) == sorted(data.y_train[val_rows].tolist())


def test_validation_test_trains_on_every_row_and_validates_on_the_test_split(cache):
    data = load_dataset(cache.path)
    train, validation = make_inputs(cache, TrainingConfig(epochs=1, batch_size=8), NO_STATS, holdout=Holdout(TEST))
    assert len(_images(train)) == 60
    assert sorted(_images(validation)) == sorted(bytes(x.tobytes()) for x in data.x_test)


def test_the_whitening_sample_comes_from_training_rows_only(cache):
    data = load_dataset(cache.path)
    train_rows, val_rows = split_rows(data.y_train, SPLIT)
    cfg = TrainingConfig(epochs=1, batch_size=8, recipe=RecipeConfig(whiten_images=1000))
    sample = whiten_sample(cache, cfg, NO_STATS, train_rows)
    got = {bytes(np.asarray(x * 255.0).round().astype(np.uint8).tobytes()) for x in sample}
    assert got == {bytes(data.x_train[i].tobytes()) for i in train_rows}


def test_the_split_is_part_of_the_train_key(cache):
    cfg, p = TrainingConfig(epochs=1, batch_size=8), PrepareConfig()
    keys = {train_key(cache, None, "seed_cnn", cfg, p, h) for h in (Holdout(TEST), SPLIT, Holdout(0.2, 4),
                                                                       Holdout(0.3, 3))}
    assert len(keys) == 4
    assert train_key(cache, None, "seed_cnn", cfg, p, SPLIT) == train_key(cache, None, "seed_cnn", cfg, p,
                                                                          Holdout(0.2, 3))


def test_a_training_with_a_split_records_it(cache, tmp_path):
    data_dir = tmp_path / "data"
    cfg = TrainingConfig(epochs=1, batch_size=16)
    rec = run_training(cache, None, "seed_cnn", cfg, PrepareConfig(), data_dir, holdout=SPLIT)
    train_json = read_json(f"{rec.path}/train.json")
    assert train_json["validation"] == {"protocol": "held-out", "spec": 0.2, "seed": 3,
                                        "train_images": 48, "validation_images": 12}
    epoch = read_json(f"{rec.path}/history.json")["epochs"][0]
    assert epoch["val_accuracy"] is not None and epoch["val_accuracy"] * 12 == pytest.approx(round(epoch["val_accuracy"] * 12))
