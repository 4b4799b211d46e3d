"""What the pages and tables say about trust and sizes (issue 28): every table of runs shows the
test-set size beside the accuracy and says when runs were measured on different test sets; a run
that does not verify is shown as damaged, with no number from a file that fails, never as
champion; a person's decision is shown with who, when and why. Run folders from
tests/runfolders.py (no training), one module-scoped set: pipeline ``small`` measured on 30
images, ``big`` on 100, and a third run of ``small`` whose metrics.json was edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from runfolders import T0, make_dataset, make_run

from tasks.core import runs as layout
from tasks.core.files import read_json
from tasks.report.publishing import runs_table
from tasks.store.manual import promote_by_hand
from tasks.store.table import format_runs_table, size_note

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    root = tmp_path_factory.mktemp("sized")
    art, data = root / "artifacts", root / "data"
    small, big = make_dataset(data, n_test=30), make_dataset(data, n_test=100, seed=1)
    s = SimpleNamespace(root=root, art=art)
    s.small = [make_run(art, small, "small", T0, skill=3.0, seed=1),
               make_run(art, small, "small", T0 + timedelta(hours=1), skill=1.0, seed=2)]
    s.big = make_run(art, big, "big", T0 + timedelta(hours=2), skill=2.0, seed=3)
    s.edited = make_run(art, small, "small", T0 + timedelta(hours=3), skill=0.5, seed=4)
    metrics = s.edited / "metrics.json"
    metrics.write_text(json.dumps({**read_json(metrics), "test_accuracy": 0.99}))
    s.decision = promote_by_hand(art, "small", s.small[1].name, reason="fewer confident mistakes")
    (root / "pipelines.yaml").write_text("artifacts_dir: artifacts\npipelines: {small: {}, big: {}}\n")
    return s


@pytest.mark.subprocess
def test_cifar_runs_shows_the_test_images_and_says_the_sizes_differ(sized):
    rows = layout.list_runs(sized.art)
    assert {r["run_id"]: r["test_images"] for r in rows} == {
        sized.small[0].name: 30, sized.small[1].name: 30, sized.big.name: 100, sized.edited.name: None}
    text = format_runs_table(rows)
    assert "TEST IMAGES" in text.splitlines()[0]
    assert size_note(rows) == ("note: these accuracies were measured on test sets of different sizes (30, 100 "
                               "images): compare runs with the same TEST IMAGES only")
    env = {**os.environ, "PREFECT_API_URL": ""}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "runs", "--json", "--config", str(sized.root / "pipelines.yaml")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = {row["run_id"]: row for row in json.loads(r.stdout)}
    assert listed[sized.big.name]["test_images"] == 100
    edited = listed[sized.edited.name]
    assert edited["test_accuracy"] is None and "metrics.json: sha256" in edited["damaged"]
    assert f"warning: run {sized.edited.name} of small is damaged" in r.stderr and "Traceback" not in r.stderr


def test_the_runs_table_artifact_shows_sizes_and_damage(sized):
    rows = {r["run"]: r for r in runs_table(sized.art, "small", sized.edited.name)}
    assert rows[sized.small[0].name]["test_images"] == 30
    assert rows[sized.edited.name]["champion"] == "damaged" and rows[sized.edited.name]["test_accuracy"] == "—"  # pct(None): no value shown
    assert rows[sized.small[1].name]["champion"] == "★ champion"  # named by a person


def test_the_index_shows_sizes_damage_and_the_persons_decision(sized):
    from tasks.report.rendering import render_index

    html = render_index(sized.art).read_text()
    assert "<th class=\"n\">test images</th>" in html and 'id="size-note"' in html
    assert "measured on test sets of different sizes (30, 100 images)" in html
    assert 'id="damaged"' in html and f"<code>{sized.edited.name}</code>: " in html and "99.00%" not in html
    assert "a person (cifar promote)" in html and "fewer confident mistakes" in html
    assert "big and small were measured on test sets of different sizes" in html  # the pair's comparison


def test_a_report_shows_its_damage_and_the_persons_decision(sized):
    from tasks.report.rendering import render_report

    damaged = render_report(sized.edited).read_text()
    assert 'id="damaged"' in damaged and "metrics.json: sha256" in damaged and "To resolve this:" in damaged
    chosen = render_report(sized.small[1]).read_text()
    assert 'id="decided-by"' in chosen and "named by a person (cifar promote)" in chosen
    assert "fewer confident mistakes" in chosen and 'id="damaged"' not in chosen
