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


def test_the_per_class_table_is_in_percent_with_the_averages():
    metrics = {"per_class": [{"class": "cat", "precision": 0.123456, "recall": 0.5, "f1": 0.2, "support": 4}],
               "macro_avg": {"precision": 0.1, "recall": 0.2, "f1": 0.3, "support": 4},
               "weighted_avg": {"precision": 0.4, "recall": 0.5, "f1": 0.6, "support": 4}}
    assert per_class_table(metrics) == [
        {"class": "cat", "precision": "12.35%", "recall": "50.00%", "f1": "20.00%", "support": 4},
        {"class": "macro avg", "precision": "10.00%", "recall": "20.00%", "f1": "30.00%", "support": 4},
        {"class": "weighted avg", "precision": "40.00%", "recall": "50.00%", "f1": "60.00%", "support": 4}]
    # a run saved before F1 existed: shown as missing, not as an error
    assert per_class_table({"per_class": [{"class": "cat", "precision": 0.5, "recall": 0.5, "accuracy": 0.5,
                                           "support": 4}]})[0]["f1"] == "—"


def test_the_checks_table_lists_every_validation_check(tmp_path):
    _, run = _two_runs(tmp_path)
    meta = json.loads((run / "metadata.json").read_text())
    assert checks_table(meta) == [{"check": "labels in range", "passed": True, "detail": "0..9"},
                                  {"check": "no NaN", "passed": False, "detail": "3 rows"}]


def test_the_runs_table_marks_the_champion_and_this_run(tmp_path):
    arts, _ = _two_runs(tmp_path)
    rows = runs_table(arts, "p", "20261201-110000-bbbbbb", "http://127.0.0.1:9")
    assert [(r["run"], r["test_accuracy"], r["champion"], r["this run"]) for r in rows] == [
        ("20261201-110000-bbbbbb", "25.00%", "", "◀"), ("20261201-100000-aaaaaa", "50.00%", "★ champion", "")]
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


def test_the_headline_has_a_real_header_row_and_links_the_report_over_http():
    from tasks.report.publishing import headline_markdown

    head = {"accuracy": 0.25549, "promoted": True, "reason": "first run of this pipeline",
            "champion": None, "previous": {"run_id": "r0", "delta_pp": 1.2}}
    metrics = {"test_loss": 2.0, "top_k_accuracy": {"1": 0.25549, "3": 0.5}, "calibration": {"ece": 0.031}}
    md = headline_markdown({"pipeline": "p", "run_id": "r1"}, metrics, head,
                           "http://127.0.0.1:8765/p/runs/r1/report.html")
    lines = md.splitlines()
    assert lines[2] == "| metric | value |" and "| | |" not in md
    assert "| Test accuracy | **25.55%** |" in lines
    assert "| Top-k accuracy | top-1 25.55%, top-3 50.00% |" in lines
    assert "| Calibration error (ECE, 15 bins) | 3.10% |" in lines
    assert "| Report | [report.html](http://127.0.0.1:8765/p/runs/r1/report.html) |" in lines
    local = headline_markdown({"pipeline": "p", "run_id": "r1"}, metrics, head, "file:///a/report.html")
    assert "[report.html](file:" not in local and "CIFAR_REPORTS_URL" in local


def test_predictions_page_link_is_http_under_a_reports_server(tmp_path):
    from flows.predict import page_link

    page = tmp_path / "artifacts" / "p" / "predictions" / "in-abcd1234" / "predictions.html"
    assert page_link(page, tmp_path / "artifacts", "http://127.0.0.1:8765") == \
        "http://127.0.0.1:8765/p/predictions/in-abcd1234/predictions.html"
    assert page_link(page, tmp_path / "artifacts", None) == page.as_uri()
    assert page_link(tmp_path / "elsewhere.html", tmp_path / "artifacts", "http://x:1") == (tmp_path / "elsewhere.html").as_uri()


def test_flow_run_names_differ_within_a_second_and_describe_the_run_as_configured(tmp_path):
    from datetime import datetime

    from flows.cifar import describe, run_name
    from flows.config import load_settings

    now = datetime(2026, 12, 1, 10, 0, 5)
    a = run_name("smoke", "0b8f2c1e-1111-2222-3333-444455556666", now)
    b = run_name("smoke", "0b8f2c1e-1111-2222-3333-777788889999", now)
    assert a == "smoke · 2026-12-01 10:00:05 · 556666" and a != b
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text("pipelines:\n  smoke:\n    description: one epoch\n    training: {epochs: 1}\n")
    chosen = load_settings(cfg, {"training.epochs": 4}, "smoke").pipeline("smoke")
    line = describe(chosen, {"training.epochs": 4})
    assert "4 epoch(s)" in line and "overridden: training.epochs=4" in line and "one epoch" not in line


@pytest.mark.engine
def test_every_artifact_link_is_http_with_a_reports_server(prefect_engine, tmp_path, monkeypatch):
    """The report stage's artifacts, read back from the API: with CIFAR_REPORTS_URL set, every
    link a person clicks is http (the headline's too), no markdown table has an empty header,
    and shares of images read as percent with two decimals; flow-run names are unique."""
    import re

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from flows.cifar import _run_name
    from runfolders import T0, make_dataset, make_run
    from tasks.core.caching import bind_local
    from tasks.report.config import ReportConfig
    from tasks.report.tasks import build_report
    from runfolders import FakeRunRecord

    art, data = tmp_path / "artifacts", tmp_path / "data"
    run_dir = make_run(art, make_dataset(data, n_test=20), "linkpipe", T0)
    meta = json.loads((run_dir / "metadata.json").read_text())
    record = FakeRunRecord("linkpipe", meta["run_id"], str(run_dir), 0.5, True, "first run")
    monkeypatch.setenv("CIFAR_REPORTS_URL", "http://127.0.0.1:8765")

    @flow(flow_run_name=_run_name)
    def report_flow(pipeline: str = "linkpipe"):
        from prefect.runtime import flow_run

        bind_local(build_report, str(data))(record, ReportConfig(sample_images=0, confident_mistakes=0), str(art))
        return str(flow_run.id)

    ids = [report_flow(), report_flow()]  # within the same second or not: two names
    keys = ["report-linkpipe", "per-class-linkpipe", "runs-linkpipe", "report-link-linkpipe", "index-link"]
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))}
        names = [r.name for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))]
    assert set(arts) == set(keys)
    text = "\n".join(str(a.data) for a in arts.values())
    links = re.findall(r"(?:https?|file)://[^\s)\"',\]]+", text)
    assert links and all(u.startswith("http://127.0.0.1:8765/") for u in links), links
    md = arts["report-linkpipe"].data
    assert "| | |" not in md and "](http://127.0.0.1:8765/linkpipe/runs/" in md
    acc = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]
    assert f"**{acc * 100:.2f}%**" in md
    assert re.search(r'"precision": "\d+\.\d\d%"', arts["per-class-linkpipe"].data)
    assert len(set(names)) == 2 and all(re.fullmatch(r"linkpipe · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d · [0-9a-f]{6}", n)
                                        for n in names), names
