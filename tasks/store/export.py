"""The run's model for serving: a SavedModel that takes raw uint8 images and carries its own
preprocessing and class names, and the same graph as a LiteRT (TFLite) flatbuffer for the fast
``cifar predict`` (LiteRT imports in 0.3 s, TensorFlow in ~6 s).

Serving signature (``serving_default``, also callable as ``loaded.serve(images)``)::

    images          uint8   [batch, H, W, C]   raw pixels, any batch size
    probabilities   float32 [batch, classes]   softmax
    class_index     int64   [batch]            argmax
    class_name      string  [batch]            the class's name

Inside it, pixels are scaled and standardised exactly as ``tasks.core.pixels.scale_pixels``
does for training and evaluation (``x / 255``, then ``(x - mean) / std`` with the train split's
statistics from train.json). The class names travel in the signature (``class_name``) and in
``classes.json`` beside the SavedModel (the names in label order).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.files import atomic_write_bytes, atomic_write_json

SAVEDMODEL = "savedmodel"
TFLITE = "model.tflite"
CLASSES = "classes.json"
SIGNATURE = "serving_default"
INPUT = "images"
OUTPUTS = ("probabilities", "class_index", "class_name")
AGREEMENT_BATCH = 256


def serving_function(model, classes: list[str], mean=None, std=None):
    """``images (uint8 [B, H, W, C]) -> {probabilities, class_index, class_name}``: the pixel
    scaling of ``tasks.core.pixels.scale_pixels`` (tf branch), then the model."""
    import tensorflow as tf

    from tasks.core.pixels import scale_pixels

    names = tf.constant(list(classes), tf.string)

    def serve(images):
        probs = tf.cast(model(scale_pixels(images, mean, std), training=False), tf.float32)
        index = tf.argmax(probs, axis=-1, output_type=tf.int64)
        return {"probabilities": probs, "class_index": index, "class_name": tf.gather(names, index)}

    return serve


def write_savedmodel(out: Path, model, classes: list[str], preprocess: dict[str, Any] | None) -> Path:
    """A SavedModel at ``out`` whose serving signature is ``serving_function``."""
    import tensorflow as tf
    from keras.export import ExportArchive

    pre = preprocess or {}
    shape = [None, *(int(d) for d in model.input_shape[1:])]
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serving_function(model, classes, pre.get("mean"), pre.get("std")),
                         input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT)])
    archive.write_out(str(out), verbose=False)
    return out


def _layers(model) -> list:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out += _layers(layer)
    return out


def float32_model(model):
    """``model`` when every layer computes in float32, else a float32 copy with the same
    weights: LiteRT's CPU kernels have no float16/bfloat16 convolutions, so a model trained in
    mixed precision (a GPU run) converts only in float32. Its variables are float32 already."""
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" for layer in _layers(model)):
        return model

    def in_float32(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=in_float32, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def write_tflite(savedmodel: Path, dest: Path) -> Path:
    """``dest``: the SavedModel's serving signature converted for LiteRT."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=[SIGNATURE])
    with _collecting_only_new_objects():
        flatbuffer = converter.convert()
    return atomic_write_bytes(dest, flatbuffer)


@contextlib.contextmanager
def _collecting_only_new_objects():
    """The converter runs a full ``gc.collect()`` on every conversion, to drop the SavedModel it
    loaded. In a process with a large heap (a Prefect worker, `cifar serve`, a test session) that
    collection took 0.33 s of each ~0.5 s export. The objects alive before are set aside
    (``gc.freeze``), so it looks only at what the conversion made; they go back after."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _interpreter(path: Path):
    """LiteRT's interpreter, as ``cifar predict`` loads it; TensorFlow's deprecated copy where
    LiteRT is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "deprecated, use ai_edge_litert"
            return tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count())
    return Interpreter(model_path=str(path), num_threads=os.cpu_count())


def tflite_probs(path: Path, x: np.ndarray, batch_size: int = AGREEMENT_BATCH) -> np.ndarray:
    """The flatbuffer's probabilities for uint8 images ``x``, a batch at a time."""
    runner = _interpreter(path).get_signature_runner(SIGNATURE)
    out = [runner(**{INPUT: np.ascontiguousarray(x[i:i + batch_size])})["probabilities"]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def agreement(reference: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """How closely exported probabilities follow the evaluated model's: images, same top
    class, largest absolute difference."""
    n = len(reference)
    same = int((reference.argmax(axis=1) == probs.argmax(axis=1)).sum()) if n else 0
    return {"images": n, "same_class": same,
            "max_abs_diff": float(np.abs(reference - probs).max()) if n else 0.0}


def export_serving(folder: Path, model, classes: list[str], preprocess: dict[str, Any] | None,
                   x_test: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Write classes.json, the SavedModel (the evaluated model itself, so it reproduces the
    recorded predictions) and model.tflite (from a float32 copy when the model computes in
    mixed precision) into ``folder``; check the flatbuffer against the evaluated probabilities
    over the test split. Returns metadata.json's ``serving`` section (what the signature takes
    and gives, and that agreement)."""
    atomic_write_json(folder / CLASSES, list(classes))
    savedmodel = write_savedmodel(folder / SAVEDMODEL, model, classes, preprocess)
    lite = float32_model(model)
    if lite is not model:
        savedmodel = write_savedmodel(folder / ".float32-savedmodel", lite, classes, preprocess)
    try:
        tflite = write_tflite(savedmodel, folder / TFLITE)
    finally:
        if lite is not model:
            shutil.rmtree(savedmodel, ignore_errors=True)
    pre = preprocess or {}
    return {
        "signature": SIGNATURE,
        "input": {"name": INPUT, "dtype": "uint8", "shape": [None, *(int(d) for d in model.input_shape[1:])]},
        "outputs": {"probabilities": "float32 [batch, classes]", "class_index": "int64 [batch]",
                    "class_name": "string [batch]"},
        "preprocess": {"scale": "x / 255", "mean": pre.get("mean"), "std": pre.get("std")},
        "classes": list(classes),
        "tflite_precision": "float32" if lite is model else f"float32 copy of the {_policy(model)} model",
        "tflite_agreement": agreement(probs, tflite_probs(tflite, x_test)),
    }


def _policy(model) -> str:
    names = {layer.dtype_policy.name for layer in _layers(model)} - {"float32"}
    return ", ".join(sorted(names)) or "float32"
