"""The store stage's evaluation (tasks/store/evaluation.py): test-time augmentation's views,
weights and averaging, and re-scoring a champion through its serving SavedModel. Tiny Keras
models built here."""

from __future__ import annotations

import numpy as np
import pytest


# --------------------------------------------------------------------------- test-time augmentation
def test_tta_views_and_weights():
    from tasks.store.evaluation import tta_views

    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    views = tta_views(x, "multi")
    assert [w for w, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    img = x[0, :, :, 0]
    assert np.array_equal(views[1][1][0, :, :, 0], img[:, ::-1])
    up_left = np.pad(img, 1, mode="reflect")[0:4, 0:4]  # shifted by one pixel down-right
    down_right = np.pad(img, 1, mode="reflect")[2:6, 2:6]
    assert np.array_equal(views[2][1][0, :, :, 0], up_left) and np.array_equal(views[3][1][0, :, :, 0], up_left[:, ::-1])
    assert np.array_equal(views[4][1][0, :, :, 0], down_right)
    assert [w for w, _ in tta_views(x, "mirror")] == [0.5, 0.5] and len(tta_views(x, "off")) == 1


def _images_and_labels():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    return x, rng.integers(0, 4, 10)


def _logits_and_probabilities():
    """A linear model's logits, and the same model with a softmax on top."""
    import keras

    inp = keras.Input((8, 8, 3))
    logit_model = keras.Model(inp, keras.layers.Dense(4)(keras.layers.Flatten()(inp)))
    return logit_model, keras.Model(inp, keras.layers.Softmax()(logit_model.output))


def test_tta_equals_plain_on_a_flip_invariant_model():
    import keras

    from tasks.store.evaluation import predict_views

    x, _ = _images_and_labels()
    inp = keras.Input((8, 8, 3))
    invariant = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp)))
    views = predict_views(invariant, x, level="mirror")
    assert np.allclose(views["mirror"], views["off"], atol=1e-6)  # mirroring changes nothing


def test_tta_averages_the_views_logits_reproducibly():
    from tasks.store.evaluation import predict_views, tta_views

    x, _ = _images_and_labels()
    logit_model, probs = _logits_and_probabilities()
    got = predict_views(probs, x, level="multi")
    scaled = x.astype(np.float32) / 255
    logits = sum(w * logit_model.predict_on_batch(v) for w, v in tta_views(scaled, "multi"))
    expect = np.exp(logits - logits.max(1, keepdims=True))
    assert np.allclose(got["multi"], expect / expect.sum(1, keepdims=True), atol=1e-5)
    assert not np.allclose(got["multi"], got["off"], atol=1e-3)
    again = predict_views(probs, x, level="multi")
    assert all(np.array_equal(again[k], got[k]) for k in got)  # reproducible


def test_the_test_split_is_scored_with_every_tta_level():
    from tasks.store.evaluation import predict_views, score_test_split

    x, y = _images_and_labels()
    _, probs = _logits_and_probabilities()
    got = predict_views(probs, x, level="multi")
    p, metrics = score_test_split(probs, x, y, list("abcd"), None, "multi")
    assert np.array_equal(p, got["multi"]) and set(metrics["tta"]["accuracy"]) == {"off", "mirror", "multi"}
    assert metrics["tta"]["views"] == 6 and metrics["test_accuracy"] == metrics["tta"]["accuracy"]["multi"]


# --------------------------------------------------------------------------- a champion re-scored
def test_a_champions_savedmodel_scores_as_its_evaluation_did(tmp_path):
    """Re-scoring through the serving SavedModel (uint8 in, scaling inside) gives the numbers the
    store's own evaluation gives for the same model and images, with and without test-time views."""
    import keras
    import numpy as np

    from tasks.store.evaluation import predict_views, savedmodel_metrics, score_test_split
    from tasks.store.export import write_savedmodel

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    pre = {"mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 40.0]}
    write_savedmodel(tmp_path / "savedmodel", model, ["a", "b", "c"], pre)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (37, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 37).astype(np.int64)

    _, want = score_test_split(model, images, labels, ["a", "b", "c"], pre)
    got = savedmodel_metrics(tmp_path / "savedmodel", images, labels, ["a", "b", "c"], batch_size=16)
    assert got["test_size"] == 37 and got["confusion_matrix"] == want["confusion_matrix"]
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-4)
    mirror = predict_views(model, images, pre["mean"], pre["std"], "mirror")["mirror"]
    got_tta = savedmodel_metrics(tmp_path / "savedmodel", images, labels, ["a", "b", "c"], tta="mirror")
    assert got_tta["test_accuracy"] == float((mirror.argmax(1) == labels).mean())
