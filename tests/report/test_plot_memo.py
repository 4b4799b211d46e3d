"""The report's pictures are drawn once per data in a process (tasks/report/plots.py: _drawings):
the same data again returns the same PNG without drawing; other data is drawn; the memo is
bounded; inputs that cannot be pickled are simply drawn every time."""

from __future__ import annotations

import threading

from tasks.report import plots

HISTORY = [{"epoch": 1, "loss": 2.0, "accuracy": 0.2, "val_loss": 2.1, "val_accuracy": 0.19},
           {"epoch": 2, "loss": 1.5, "accuracy": 0.4, "val_loss": 1.7, "val_accuracy": 0.35}]


def test_the_same_data_is_drawn_once(monkeypatch):
    plots._drawings.clear()
    drawn = []
    real = plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: drawn.append(1) or real(fig))
    first = plots.plot_history(HISTORY)
    again = plots.plot_history([dict(h) for h in HISTORY])  # equal, not the same objects
    assert again == first and len(drawn) == 1
    other = plots.plot_history(HISTORY[:1])
    assert other != first and len(drawn) == 2


def test_the_memo_keeps_only_the_last_pictures():
    memo = plots._Drawings(size=2)
    keys = [memo.key("f", (i,), {}) for i in range(3)]
    for i, key in enumerate(keys):
        memo.put(key, b"png%d" % i)
    assert memo.get(keys[0]) is None and memo.get(keys[1]) == b"png1" and memo.get(keys[2]) == b"png2"


def test_inputs_that_cannot_be_pickled_are_drawn_every_time():
    memo = plots._Drawings()
    key = memo.key("f", (threading.Lock(),), {})
    assert key is None
    memo.put(key, b"png")
    assert memo.get(key) is None
