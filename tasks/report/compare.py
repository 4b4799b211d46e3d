"""Any two runs side by side (``cifar compare RUN_A RUN_B``): of one pipeline or of two, not only
each pipeline's latest. Their headline numbers (accuracy, loss, macro F1, top-k, calibration),
per-class F1 with the change, the settings that differ, and their histories in one picture. The
page is written to ``<artifacts_dir>/compare/``; its links are relative (to the reports and the
index), so it opens from ``file://`` and from `cifar reports` alike."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tasks.core import classification, runs
from tasks.report.changes import diff_settings
from tasks.report.index_plots import plot_pair
from tasks.report.plots import data_uri

COMPARE_DIR = "compare"


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """One loaded run (``runs.load_run``) as the numbers a comparison shows."""
    meta, metrics, pred = run["metadata"], run["metrics"], run["predictions"]
    classes = list(metrics.get("classes") or (meta.get("dataset") or {}).get("classes") or [])
    cm = classification.confusion(pred["y_true"], pred["y_pred"], len(classes))
    scores = classification.class_scores(cm, classes)
    training = meta.get("training") or {}
    pipeline, run_id = meta.get("pipeline", ""), meta.get("run_id", "")
    return {
        "pipeline": pipeline, "run_id": run_id, "label": f"{pipeline} {run_id}",
        "href": "../" + runs.report_href(pipeline, run_id),
        "has_report": (Path(run["dir"]) / runs.REPORT).is_file(),
        "created_at": meta.get("created_at", ""),
        "model": (meta.get("model") or {}).get("name", ""),
        "epochs": len(run["history"].get("epochs") or []),
        "train_seconds": training.get("seconds"),
        "seconds_per_epoch": training.get("seconds_per_epoch"),
        "test_accuracy": metrics.get("test_accuracy"),
        "test_loss": metrics.get("test_loss"),
        "macro_f1": scores["macro_avg"]["f1"],
        "top_k": classification.top_k_table(pred["probs"], pred["y_true"]),
        "ece": classification.reliability(pred["probs"], pred["y_true"])["ece"],
        "per_class": scores["per_class"],
        "history": run["history"].get("epochs") or [],
        "config": meta.get("config") or {},
    }


def compare_context(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Everything the comparison page shows, for two run folders."""
    a, b = run_summary(runs.load_run(run_a)), run_summary(runs.load_run(run_b))
    f1_b = {r["class"]: r["f1"] for r in b["per_class"]}
    per_class = [{"class": r["class"], "a": r["f1"], "b": f1_b.get(r["class"]),
                  "delta_pp": None if f1_b.get(r["class"]) is None else (f1_b[r["class"]] - r["f1"]) * 100}
                 for r in a["per_class"]]
    ks = [k for k in a["top_k"] if k in b["top_k"]]
    return {"a": a, "b": b, "per_class": per_class, "top_k": ks,
            "settings": diff_settings(a["config"], b["config"]),
            "png": data_uri(plot_pair(a, b)), "index_href": "../" + runs.INDEX}


def compare_name(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The page's file name: both runs, filesystem-safe."""
    raw = f"{a['pipeline']}-{a['run_id']}--{b['pipeline']}-{b['run_id']}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:200] + ".html"
