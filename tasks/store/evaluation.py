"""Scoring a trained model on the cached test split: its probabilities, scaled exactly as in
training, and metrics.json (loss, accuracy, per-class precision/recall, confusion matrix)."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def per_class_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, classes: list[str] | None = None
) -> dict[str, Any]:
    """Per-class precision, recall and accuracy plus the confusion matrix (NumPy only).

    ``confusion_matrix[i][j]`` counts test images of true class i predicted as j. Per-class
    ``accuracy`` is the usual "accuracy of class i": the fraction of class-i images classified
    correctly, which equals its recall. ``precision`` of a class never predicted is 0.0 (and its
    recall 0.0 when it has no images), as scikit-learn's ``zero_division=0``.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    c = int(num_classes)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= c):
            raise ValueError(f"{name} holds labels outside [0, {c}): min {y.min()}, max {y.max()}")
    cm = np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    names = list(classes) if classes is not None else list(range(c))
    rows = [
        {
            "class": names[i],
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "accuracy": float(recall[i]),
            "support": int(support[i]),
        }
        for i in range(c)
    ]
    return {"per_class": rows, "confusion_matrix": cm.astype(int).tolist()}


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
    }
