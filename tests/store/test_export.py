"""The serving export the store writes beside each model (tasks/store/export.py): a
mixed-precision model exports a float32 flatbuffer that predictions score with. The export of a
saved run, read back as predictions read it: tests/predict/test_predict.py."""

from __future__ import annotations

import numpy as np

from tasks.core.hashing import hash_file
from tasks.core.pixels import scale_pixels

CLASSES = ("cat", "dog", "frog")


def test_a_mixed_precision_model_exports_a_float32_flatbuffer(tmp_path):
    """A GPU run trains in mixed_float16; LiteRT has no half-precision convolutions on CPU. The
    SavedModel keeps the model as trained, the flatbuffer is a float32 copy, and the store
    stage records how closely it follows (bfloat16 here: the CPU runs it)."""
    import keras

    from tasks.predict.engine import Scorer
    from tasks.predict.resolve import ModelRef
    from tasks.store.export import export_serving

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
        model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", dtype="float32")(
            keras.layers.Flatten()(x)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    probs = np.asarray(model.predict_on_batch(scale_pixels(x)), np.float32)
    serving = export_serving(tmp_path, model, list(CLASSES), None, x, probs)
    assert serving["tflite_precision"] == "float32 copy of the mixed_bfloat16 model"
    assert serving["tflite_agreement"]["same_class"] == 16 and serving["tflite_agreement"]["max_abs_diff"] < 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.json", "model.tflite", "savedmodel"]
    ref = ModelRef("p", "r", str(tmp_path), False, {n: hash_file(tmp_path / n).sha256
                                                    for n in ("model.tflite", "classes.json")})
    scorer = Scorer(ref)
    np.testing.assert_allclose(scorer.probabilities(x), probs, atol=0.02)
