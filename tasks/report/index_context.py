"""What the index shows: every run, each pipeline's latest run, the charts of every run, one
comparison per pair of pipelines (their latest runs), and the command that compares any two runs
(``cifar compare``, ``tasks.report.compare``)."""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.core import runs
from tasks.core.hashing import stable_hash
from tasks.report.context import glyph_note, index_rows
from tasks.report.index_plots import plot_accuracy_vs_time, plot_index_accuracy, plot_pair
from tasks.report.plots import data_uri


def build_index_context(artifacts_dir: str | Path) -> dict[str, Any]:
    """Everything the index template shows: every run, each pipeline's latest run, the charts
    of every run, and one comparison plot per pair of pipelines."""
    skipped: list[str] = []
    rows = index_rows(artifacts_dir, skipped=skipped)
    for r in rows:
        r["href"] = runs.report_href(r["pipeline"], r["run_id"])
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:  # newest first: the first seen is each pipeline's latest run
        if r["pipeline"] not in latest:
            latest[r["pipeline"]] = {**r, "history": runs.read_history(r["dir"]) or []}
    pipelines = sorted(latest)
    pairs = []
    for a, b in itertools.combinations(pipelines, 2):
        ra, rb = latest[a], latest[b]
        pairs.append({
            "id": "cmp-" + re.sub(r"[^a-z0-9-]+", "-", f"{a}--vs--{b}".lower()) + "-"
                  + stable_hash(a, b, length=6),
            "a": ra, "b": rb,
            "png": data_uri(plot_pair(ra, rb)),
        })
    return {
        "rows": rows,
        "pipelines": pipelines,
        "latest": [latest[p] for p in pipelines],
        "chart_png": data_uri(plot_index_accuracy(rows)) if rows else None,
        "time_png": data_uri(plot_accuracy_vs_time(rows, [latest[p] for p in pipelines])) if rows else None,
        "glyph_note": glyph_note(pipelines),
        "skipped": skipped,  # damaged files, each left out with what is wrong
        "pairs": pairs,
        "generated_at": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
