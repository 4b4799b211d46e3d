"""What the report stage publishes as Prefect artifacts (tasks/report/publishing.py,
tasks/report/links.py): the per-class, checks and runs tables, and the links to a report and a
flow run. Tiny run folders written by tests/runfolders.py's ``stub_run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runfolders import stub_run

from tasks.core.files import atomic_write_json
from tasks.report.links import flow_run_url
from tasks.report.publishing import (
    ReportsUrlError,
    checks_table,
    per_class_table,
    report_link,
    reports_url,
    runs_table,
)


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Pipeline p: an earlier champion at 0.5 and this run at 0.25."""
    arts = tmp_path / "artifacts"
    stub_run(arts, "p", "20261201-100000-aaaaaa", 0.5, created="2026-12-01T10:00:00")
    run = stub_run(arts, "p", "20261201-110000-bbbbbb", 0.25, created="2026-12-01T11:00:00")
    atomic_write_json(arts / "p" / "registry.json", {"champion": {"run_id": "20261201-100000-aaaaaa"}})
    return arts, run


def test_the_per_class_table_rounds_to_four_places(tmp_path):
    _, run = _two_runs(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert per_class_table(metrics) == [
        {"class": "cat", "precision": 0.1235, "recall": 0.5, "accuracy": 0.5, "support": 4}]


def test_the_checks_table_lists_every_validation_check(tmp_path):
    _, run = _two_runs(tmp_path)
    meta = json.loads((run / "metadata.json").read_text())
    assert checks_table(meta) == [{"check": "labels in range", "passed": True, "detail": "0..9"},
                                  {"check": "no NaN", "passed": False, "detail": "3 rows"}]


def test_the_runs_table_marks_the_champion_and_this_run(tmp_path):
    arts, _ = _two_runs(tmp_path)
    rows = runs_table(arts, "p", "20261201-110000-bbbbbb", "http://127.0.0.1:9")
    assert [(r["run"], r["test_accuracy"], r["champion"], r["this run"]) for r in rows] == [
        ("20261201-110000-bbbbbb", 0.25, "", "◀"), ("20261201-100000-aaaaaa", 0.5, "★ champion", "")]
    assert rows[0]["report"] == "http://127.0.0.1:9/p/runs/20261201-110000-bbbbbb/report.html"


def test_report_links_point_at_the_reports_server_when_set(tmp_path):
    report = tmp_path / "artifacts" / "p" / "runs" / "r1" / "report.html"
    meta = {"pipeline": "p", "run_id": "r1"}
    assert reports_url({}) is None
    assert report_link(report, tmp_path / "artifacts", meta, None) == report.as_uri()
    base = reports_url({"CIFAR_REPORTS_URL": "http://127.0.0.1:8765/"})
    assert base == "http://127.0.0.1:8765"
    assert report_link(report, tmp_path / "artifacts", meta, base) == "http://127.0.0.1:8765/p/runs/r1/report.html"
    with pytest.raises(ReportsUrlError, match="CIFAR_REPORTS_URL='file:///x'.*cifar reports"):
        reports_url({"CIFAR_REPORTS_URL": "file:///x"})


def test_flow_run_links_need_the_ui_url():
    assert flow_run_url("abc", "http://127.0.0.1:4200/") == "http://127.0.0.1:4200/runs/flow-run/abc"
    assert flow_run_url(None, "http://127.0.0.1:4200") is None
    assert flow_run_url("abc", "") is None
