"""tasks/core/classification.py against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.core.classification import (
    ECE_BINS, class_scores, confusion, reliability, row_normalised, summary, top_k_accuracy, top_k_table,
)

# true 0 0 0 1 1 2, predicted 0 0 1 1 0 0:
#   cm = [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
#   class 0: precision 2/4, recall 2/3, F1 = 2*(1/2)(2/3)/(1/2+2/3) = 4/7, support 3
#   class 1: precision 1/2, recall 1/2, F1 = 1/2, support 2
#   class 2: never predicted, precision 0, recall 0, F1 0, support 1
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 0, 0]


def test_per_class_precision_recall_f1_support_and_averages_by_hand():
    cm = confusion(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    s = class_scores(cm, ["a", "b", "c"])
    a, b, c = s["per_class"]
    assert a == pytest.approx({"class": "a", "precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert b == pytest.approx({"class": "b", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert c == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # macro: plain means; weighted: by support 3, 2, 1 of 6
    assert s["macro_avg"] == pytest.approx({"precision": 1 / 3, "recall": (2 / 3 + 1 / 2) / 3,
                                            "f1": (4 / 7 + 1 / 2) / 3, "support": 6})
    assert s["weighted_avg"] == pytest.approx({"precision": (3 * 0.5 + 2 * 0.5) / 6,
                                               "recall": (3 * 2 / 3 + 2 * 0.5) / 6,  # = accuracy 3/6
                                               "f1": (3 * 4 / 7 + 2 * 0.5) / 6, "support": 6})
    with pytest.raises(ValueError, match="outside"):
        confusion([0, 3], [0, 0], 3)


def test_row_normalised_confusion_matrix_by_hand():
    got = row_normalised([[2, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(got, [[2 / 3, 1 / 3, 0], [0.5, 0.5, 0], [0, 0, 0]])  # an empty row stays 0


def test_top_k_accuracy_by_hand():
    probs = np.array([[0.5, 0.3, 0.2, 0.0],   # true 1: 2nd
                      [0.1, 0.2, 0.3, 0.4],   # true 0: 4th
                      [0.7, 0.1, 0.1, 0.1],   # true 0: 1st
                      [0.2, 0.3, 0.4, 0.1]])  # true 0: 3rd
    y = [1, 0, 0, 0]
    assert top_k_accuracy(probs, y, 1) == 0.25
    assert top_k_accuracy(probs, y, 2) == 0.5
    assert top_k_accuracy(probs, y, 3) == 0.75
    assert top_k_accuracy(probs, y, 9) == 1.0  # capped at the number of classes
    assert top_k_table(probs, y) == {"1": 0.25, "3": 0.75}  # 5 > 4 classes: left out
    assert math.isnan(top_k_accuracy(probs[:0], [], 1))


def test_reliability_bins_and_expected_calibration_error_by_hand():
    # 4 images, 2 classes. Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 1.0 (right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.0, 1.0]])
    y = [0, 1, 1, 1]
    r = reliability(probs, y)
    assert r["n_bins"] == ECE_BINS == 15 and len(r["bins"]) == 15
    full = {i: b for i, b in enumerate(r["bins"]) if b["count"]}
    # 0.6 -> bin (8/15, 9/15] = index 8; 0.9 -> (13/15, 14/15] = 13; 1.0 -> the last, 14
    assert sorted(full) == [8, 13, 14]
    assert full[13] == pytest.approx({"lo": 13 / 15, "hi": 14 / 15, "count": 2, "confidence": 0.9, "accuracy": 0.5})
    assert full[8]["accuracy"] == 1.0 and full[14]["confidence"] == 1.0
    # ECE = 1/4*|1-0.6| + 2/4*|0.5-0.9| + 1/4*|1-1| = 0.1 + 0.2 = 0.3
    assert r["ece"] == pytest.approx(0.3)
    assert r["bins"][0] == {"lo": 0.0, "hi": 1 / 15, "count": 0, "confidence": None, "accuracy": None}
    perfect = reliability(np.eye(3), [0, 1, 2])
    assert perfect["ece"] == 0.0
    assert math.isnan(reliability(np.zeros((0, 3)), [])["ece"])


def test_summary_holds_every_part():
    probs = np.eye(3)[Y_PRED] * 0.8 + 0.2 / 3
    s = summary(Y_TRUE, probs, ["a", "b", "c"])
    assert s["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert s["confusion_normalised"][0] == pytest.approx([2 / 3, 1 / 3, 0])
    assert s["top_k_accuracy"]["1"] == 0.5 and s["top_k_accuracy"]["3"] == 1.0
    assert s["calibration"]["ece"] == pytest.approx(abs(0.5 - (0.8 + 0.2 / 3)))
    assert set(s) >= {"per_class", "macro_avg", "weighted_avg"}
