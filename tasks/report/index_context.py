"""What the index shows: every run, each pipeline's latest run, the charts of every run, one
comparison per pair of pipelines (their latest runs), and the command that compares any two runs
(``cifar compare``, ``tasks.report.compare``)."""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.core import runs, verify
from tasks.core.hashing import stable_hash
from tasks.report.context import decision_of, glyph_note, index_rows, size_note
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
    sound: dict[str, dict[str, Any]] = {}  # each pipeline's latest run that verifies: compared
    for r in rows:  # newest first: the first seen is each pipeline's latest run
        if r["pipeline"] not in latest:
            latest[r["pipeline"]] = {**r, "history": runs.read_history(r["dir"]) or []}
        if r["pipeline"] not in sound and not r["damaged"]:
            sound[r["pipeline"]] = {**r, "history": runs.read_history(r["dir"]) or []}
    pipelines = sorted(latest)
    pairs = []
    for a, b in itertools.combinations(sorted(sound), 2):
        ra, rb = sound[a], sound[b]
        pairs.append({
            "id": "cmp-" + re.sub(r"[^a-z0-9-]+", "-", f"{a}--vs--{b}".lower()) + "-"
                  + stable_hash(a, b, length=6),
            "a": ra, "b": rb,
            "png": data_uri(plot_pair(ra, rb)),
            "size_note": size_note([ra["test_images"], rb["test_images"]], f"{a} and {b}"),
        })
    sound_rows = [r for r in rows if not r["damaged"]]  # a damaged run's value is not drawn
    return {
        "rows": rows,
        "pipelines": pipelines,
        "latest": [latest[p] for p in pipelines],
        "chart_png": data_uri(plot_index_accuracy(sound_rows)) if sound_rows else None,
        "time_png": data_uri(plot_accuracy_vs_time(sound_rows, [sound[p] for p in sorted(sound)]))
        if sound_rows else None,
        "glyph_note": glyph_note(pipelines),
        "skipped": skipped,  # damaged files, each left out with what is wrong
        "damaged": [r for r in rows if r["damaged"]],  # listed, never champion
        "what_to_do": verify.WHAT_TO_DO,
        "decisions": {p: decision_of(runs.pipeline_dir(artifacts_dir, p)) for p in pipelines},
        "size_note": size_note([r["test_images"] for r in rows], "the runs below"),
        "pairs": pairs,
        "generated_at": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
