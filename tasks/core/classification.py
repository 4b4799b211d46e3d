"""How a classifier is scored, as an ML engineer reads it: per-class precision, recall, F1 and
support with macro and weighted averages, the confusion matrix normalised by row, top-k accuracy,
and calibration (a reliability diagram's bins and the expected calibration error). Pure NumPy:
the store stage writes these into metrics.json, the report recomputes them from a run's
predictions (so runs saved before they existed show them too).

Conventions (scikit-learn's, ``zero_division=0``): the precision of a class never predicted is
0.0, the recall of a class with no images is 0.0, and F1 is 0.0 where precision + recall is 0.
Macro averages every class equally; weighted averages by support (images of the class).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15  # equal-width confidence bins over [0, 1], as in Guo et al. 2017 ("On Calibration ...")
TOP_K = (1, 3, 5)


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``cm[i, j]``: images of true class i predicted as j (int64, C x C)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    c = int(num_classes)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= c):
            raise ValueError(f"{name} holds labels outside [0, {c}): min {y.min()}, max {y.max()}")
    return np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)


def class_scores(cm, classes: list[str] | None = None) -> dict[str, Any]:
    """From a confusion matrix: ``per_class`` rows {class, precision, recall, f1, support} and the
    ``macro_avg`` and ``weighted_avg`` rows {precision, recall, f1, support} (support: all images)."""
    cm = np.asarray(cm, dtype=np.int64)
    c = cm.shape[0] if cm.ndim == 2 else 0
    tp = np.diag(cm).astype(np.float64) if c else np.zeros(0)
    support = cm.sum(axis=1) if c else np.zeros(0, np.int64)
    predicted = cm.sum(axis=0) if c else np.zeros(0, np.int64)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(c), where=both > 0)
    names = list(classes) if classes is not None else list(range(c))
    rows = [{"class": names[i], "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(support[i])} for i in range(c)]
    total = int(support.sum())

    def avg(weights) -> dict[str, Any]:
        w = np.asarray(weights, dtype=np.float64)
        s = w.sum()
        mean = (lambda v: float((v * w).sum() / s)) if s > 0 else (lambda v: 0.0)
        return {"precision": mean(precision), "recall": mean(recall), "f1": mean(f1), "support": total}

    return {"per_class": rows, "macro_avg": avg(np.ones(c)), "weighted_avg": avg(support)}


def row_normalised(cm) -> np.ndarray:
    """Each row of the confusion matrix divided by its total (the class's recall on the
    diagonal); a row with no images stays all zeros."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def top_k_accuracy(probs, y_true, k: int) -> float:
    """Share of images whose true class is among the ``k`` most probable (ties: the lower class
    index first, as a stable sort gives). NaN for no images; k is capped at the number of classes."""
    probs = np.asarray(probs)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    if len(y) == 0:
        return float("nan")
    k = max(1, min(int(k), probs.shape[1]))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def top_k_table(probs, y_true, ks=TOP_K) -> dict[str, float]:
    """{"1": ..., "3": ..., "5": ...}: top-k accuracy for each k up to the number of classes."""
    n_classes = np.asarray(probs).shape[1] if np.asarray(probs).ndim == 2 else 0
    return {str(k): top_k_accuracy(probs, y_true, k) for k in ks if k <= max(n_classes, 1)}


def reliability(probs, y_true, bins: int = ECE_BINS) -> dict[str, Any]:
    """Calibration of the top-1 confidence: ``bins`` equal-width bins over [0, 1] (a confidence
    of exactly 0 falls in the first, of 1 in the last; each other bin is (lo, hi]), each with its
    count, mean confidence and accuracy (None when empty), and the expected calibration error
    ECE = sum over bins of count/N * |accuracy - confidence|. ``ece`` is NaN for no images."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    n = len(y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out_bins = []
    if n:
        conf = probs.max(axis=1)
        right = (probs.argmax(axis=1) == y).astype(np.float64)
        which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b if n else np.zeros(0, bool)
        count = int(members.sum())
        confidence = float(conf[members].mean()) if count else None
        accuracy = float(right[members].mean()) if count else None
        if count:
            ece += count / n * abs(accuracy - confidence)
        out_bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                         "confidence": confidence, "accuracy": accuracy})
    return {"bins": out_bins, "n_bins": bins, "ece": float(ece) if n else float("nan")}


def summary(y_true, probs, classes: list[str]) -> dict[str, Any]:
    """Everything above for metrics.json or a report: per_class, macro_avg, weighted_avg,
    confusion_matrix, confusion_normalised, top_k_accuracy and calibration (bins and ECE)."""
    probs = np.asarray(probs)
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = probs.argmax(axis=1) if len(y_true) else np.zeros(0, np.int64)
    cm = confusion(y_true, y_pred, len(classes))
    return {**class_scores(cm, classes), "confusion_matrix": cm.astype(int).tolist(),
            "confusion_normalised": row_normalised(cm).round(6).tolist(),
            "top_k_accuracy": top_k_table(probs, y_true), "calibration": reliability(probs, y_true)}
