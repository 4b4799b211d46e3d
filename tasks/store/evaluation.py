"""Scoring a trained model on the cached test split: its probabilities, scaled exactly as in
training (optionally averaged over test-time views), and metrics.json (loss, accuracy,
per-class precision/recall/F1 with macro and weighted averages, confusion matrix, top-k
accuracy, calibration (15-bin ECE), and what test-time augmentation gained)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.core import classification
from tasks.core.kernels import fused_kernels
from tasks.core.pixels import scale_pixels

EVAL_BATCH = 128  # test images per predict call: at 1,000 the activations alone took ~300 MB more peak memory
_EPS = 1e-7  # probability clip in the cross-entropy, as Keras does


def predict_probs(model, x: np.ndarray, mean=None, std=None, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities (N, C) float32 for uint8 images ``x`` (a memory map is fine), scaled
    batch by batch with ``tasks.core.pixels.scale_pixels`` exactly as in training."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = scale_pixels(np.asarray(x[i : i + batch_size]), mean, std)
        out.append(np.asarray(model.predict_on_batch(xb), dtype=np.float32))
    probs = np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)
    if probs.size and (probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)):
        # logits (no softmax in the model): turn them into probabilities
        z = probs.astype(np.float64) - probs.max(axis=1, keepdims=True)
        probs = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


# Test-time augmentation (the airbench recipe's ``tta``): views of each image and their weights.
# "mirror": the image and its mirror; "multi": both of those, plus both shifted one pixel up-left
# and down-right (reflect-padded by 1, cropped at offsets 0 and 2).
TTA_LEVELS = ("off", "mirror", "multi")


def tta_views(x: np.ndarray, level: str) -> list[tuple[float, np.ndarray]]:
    """(weight, view) pairs of the (N, H, W, C) batch ``x`` for ``level``; the weights sum to 1.

    off: [(1, x)]; mirror: x and its mirror (width is axis 2) at 0.5 each; multi: x and its
    mirror at 0.25 each, and the 4 one-pixel shifts (of both) at 0.125 each."""
    if level not in TTA_LEVELS:
        raise ValueError(f"unknown test-time augmentation {level!r}; use one of {', '.join(TTA_LEVELS)}")
    if level == "off":
        return [(1.0, x)]
    mirror = x[:, :, ::-1, :]
    if level == "mirror":
        return [(0.5, x), (0.5, mirror)]
    h, w = x.shape[1], x.shape[2]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [padded[:, dy:dy + h, dx:dx + w, :] for dy, dx in ((0, 0), (2, 2))]
    return ([(0.25, x), (0.25, mirror)]
            + [(0.125, v) for s in shifted for v in (s, s[:, :, ::-1, :])])


def tta_of(train_json: dict[str, Any]) -> str:
    """The test-time augmentation the model's training asked for (train.json's recipe), "off"
    for a model trained without a recipe."""
    recipe = ((train_json or {}).get("config") or {}).get("recipe") or {}
    return str(recipe.get("tta", "off"))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def predict_views(model, x: np.ndarray, mean=None, std=None, level: str = "multi",
                  batch_size: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    """Probabilities (N, C) at every TTA level up to ``level`` ({"off": ..., "mirror": ...,
    "multi": ...}), from one pass over the views. The views' log-probabilities are averaged with
    their weights, then re-normalised: exactly the softmax of the weighted mean logits (each view's
    log-normaliser is a per-image constant), whether the model outputs probabilities or logits.
    Deterministic: the same model and images give the same numbers."""
    levels = TTA_LEVELS[:TTA_LEVELS.index(level) + 1]
    out: dict[str, list[np.ndarray]] = {lv: [] for lv in levels}
    for i in range(0, len(x), batch_size):
        xb = np.asarray(x[i:i + batch_size])
        logp = [np.log(np.maximum(predict_probs(model, view, mean, std, batch_size=len(view)), 1e-30))
                for _, view in tta_views(xb, level)]
        for lv in levels:
            weights = [wt for wt, _ in tta_views(xb[:1], lv)]
            out[lv].append(_softmax(sum(wt * lp.astype(np.float64) for wt, lp in zip(weights, logp))))
    return {lv: np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)
            for lv, parts in out.items()}


def score_test_split(model, x: np.ndarray, y_true: np.ndarray, classes: list[str],
                     preprocess: dict[str, Any] | None, tta: str = "off") -> tuple[np.ndarray, dict[str, Any]]:
    """(probs, metrics.json) on the test split: ``tta`` "off" is plain prediction; otherwise the
    probabilities are the ``tta`` level's and metrics["tta"] records the accuracy at every level
    up to it and the gain over plain prediction (in percentage points). GELUs run as one
    fused kernel each meanwhile (``tasks.core.kernels``: the same math)."""
    pre = preprocess or {}
    with fused_kernels(model):
        if tta == "off":
            probs = predict_probs(model, x, pre.get("mean"), pre.get("std"))
            return probs, evaluation_metrics(y_true, probs, classes)
        variants = predict_views(model, x, pre.get("mean"), pre.get("std"), tta)
    probs = variants[tta]
    metrics = evaluation_metrics(y_true, probs, classes)
    y = np.asarray(y_true, dtype=np.int64)
    accuracy = {lv: float((p.argmax(axis=1) == y).mean()) if len(y) else float("nan")
                for lv, p in variants.items()}
    metrics["tta"] = {"level": tta, "views": len(tta_views(np.zeros((1, 3, 3, 1)), tta)),
                      "accuracy": accuracy,
                      "gain_pp": round((accuracy[tta] - accuracy["off"]) * 100, 4)}
    return probs, metrics


def per_class_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, classes: list[str] | None = None
) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, their macro and weighted averages, and the
    confusion matrix (``tasks.core.classification``; ``confusion_matrix[i][j]`` counts test images
    of true class i predicted as j). A class never predicted has precision 0.0, as
    scikit-learn's ``zero_division=0``."""
    cm = classification.confusion(y_true, y_pred, num_classes)
    return {**classification.class_scores(cm, classes), "confusion_matrix": cm.astype(int).tolist()}


def evaluation_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """metrics.json from the predictions: loss = mean cross-entropy (probs clipped to [1e-7, 1])."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1).astype(np.int64)
    p_true = np.clip(probs[np.arange(len(y_true)), y_true].astype(np.float64), _EPS, 1.0)
    n = len(y_true)
    return {
        "test_loss": float(-np.log(p_true).mean()) if n else float("nan"),
        "test_accuracy": float((y_pred == y_true).sum() / n) if n else float("nan"),
        "test_size": n,
        "classes": list(classes),
        **per_class_metrics(y_true, y_pred, len(classes), classes),
        "top_k_accuracy": classification.top_k_table(probs, y_true),
        "calibration": classification.reliability(probs, y_true),
    }


def savedmodel_metrics(savedmodel_dir, x: np.ndarray, y_true: np.ndarray, classes: list[str],
                       tta: str = "off", batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """metrics.json of a published run's serving SavedModel (raw uint8 in, its own preprocessing
    inside) on other test images: how a champion is re-scored on a new test split, no retraining.
    ``tta``: the views the run was scored with (averaged as ``predict_views`` does)."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(savedmodel_dir)).signatures["serving_default"]
    out = []
    for i in range(0, len(x), batch_size):
        xb = np.asarray(x[i:i + batch_size])
        logp = sum(wt * np.log(np.maximum(serve(images=tf.constant(np.ascontiguousarray(view)))["probabilities"]
                                          .numpy().astype(np.float64), 1e-30))
                   for wt, view in tta_views(xb, tta))
        out.append(_softmax(logp))
    probs = np.concatenate(out) if out else np.zeros((0, len(classes)), np.float32)
    return evaluation_metrics(np.asarray(y_true, dtype=np.int64), probs, list(classes))
