"""The report's "what changed" section (tasks/report/changes.py): per-class counts before and
now, and the settings that differ."""

from __future__ import annotations


def test_what_changed_rows():
    from tasks.report.changes import class_rows, diff_settings

    rows = class_rows({"train": {"cat": 3, "dog": 3}, "test": {"cat": 2, "dog": 2}},
                      {"train": {"cat": 5, "dog": 2, "emu": 1}, "test": {"cat": 3, "dog": 2, "emu": 1}})
    assert rows[0] == {"class": "cat", "train": {"before": 3, "now": 5, "delta": 2},
                       "test": {"before": 2, "now": 3, "delta": 1}}
    assert rows[1]["train"]["delta"] == -1 and rows[2]["train"] == {"before": None, "now": 1, "delta": 1}
    assert diff_settings({"training": {"seed": 1, "epochs": 2}, "x": 1},
                         {"training": {"seed": 9, "epochs": 2}, "y": [1]}) == [
        {"key": "training.seed", "before": 1, "now": 9},
        {"key": "x", "before": 1, "now": None},
        {"key": "y", "before": None, "now": [1]},
    ]
