"""The report stage: pure pieces, the rendered HTML, a real browser, and the Prefect task.

The fixture writes tiny but complete run folders in the store stage's format (CONTRACT.md, 4)
with tests/runfolders.py: a real dataset cache of synthetic images, predictions from a seeded
fake classifier, and every metric computed from those predictions -- so the numbers the report
shows are checked against files, not against constants.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from datetime import timedelta
from pathlib import Path

from markupsafe import escape as html_escape

import numpy as np
import pytest

from runfolders import CLASSES, NOTEBOOK_LAYERS, T0, FakeRunRecord, make_dataset, make_run

from tasks.core.files import atomic_write_json, read_json

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two pipelines: `notebook` with three runs (the middle one worse), `wide` with one."""
    root = tmp_path_factory.mktemp("report")
    art, data = root / "artifacts", root / "data"
    ds = make_dataset(data, n_test=60)
    r1 = make_run(art, ds, "notebook", T0, skill=1.5, seed=1)
    r2 = make_run(art, ds, "notebook", T0 + timedelta(days=1), skill=1.0, seed=2)
    r3 = make_run(art, ds, "notebook", T0 + timedelta(days=2), skill=3.0, seed=3, description=XSS)
    w1 = make_run(art, ds, "wide", T0 + timedelta(hours=5), skill=2.5, seed=4, model="wide_cnn",
                  epochs=4, seconds_per_epoch=12.0)
    return {"art": art, "data": data, "dataset": ds, "notebook": [r1, r2, r3], "wide": [w1]}


SRC_HREF = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.I)


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


# --------------------------------------------------------------------------- pure pieces
def test_first_conv_example_is_derived_from_the_layer_params():
    from tasks.report.context import first_conv_example

    layers = [{"name": n, "class": c, "output_shape": s, "params": p} for n, c, s, p in NOTEBOOK_LAYERS]
    ex = first_conv_example(layers, [50000, 32, 32, 3])
    assert (ex["kh"], ex["kw"], ex["channels"], ex["filters"], ex["biases"], ex["params"]) == (3, 3, 3, 32, 32, 896)
    # another first layer: 5x5 over grey images, 16 filters -> 5*5*1*16 + 16 = 416
    other = [{"name": "inp", "class": "InputLayer", "output_shape": [None, 28, 28, 1], "params": 0},
             {"name": "c", "class": "Conv2D", "output_shape": [None, 24, 24, 16], "params": 416}]
    ex = first_conv_example(other, None)
    assert (ex["kh"], ex["channels"], ex["filters"], ex["weights"], ex["params"]) == (5, 1, 16, 400, 416)
    # numbers that fit no square kernel with bias: no made-up example
    assert first_conv_example([{"name": "c", "class": "Conv2D", "output_shape": [None, 8, 8, 4],
                                "params": 100}], [1, 8, 8, 3]) is None


def test_plots_are_pngs_of_the_expected_size():
    from PIL import Image

    from tasks.report.plots import plot_confusion, plot_history, plot_image_grid

    hist = [{"epoch": i, "loss": 2 - i / 5, "accuracy": i / 5, "val_loss": 2.1 - i / 5,
             "val_accuracy": i / 6, "seconds": 3.0} for i in range(1, 5)]
    img = Image.open(io.BytesIO(plot_history(hist)))
    assert img.format == "PNG" and img.size == (1000, 360)
    cm = np.arange(100).reshape(10, 10)
    assert Image.open(io.BytesIO(plot_confusion(cm.tolist(), list(CLASSES)))).format == "PNG"
    x = np.zeros((10, 32, 32, 3), np.uint8)
    grid = Image.open(io.BytesIO(plot_image_grid(x, np.arange(10) % 10, np.zeros(10, int),
                                                 np.full(10, 0.5), CLASSES, "t", cols=5)))
    assert grid.width > 5 * 96 and grid.height > 2 * 96  # 5 columns, 2 rows of 3x images


# --------------------------------------------------------------------------- rendered HTML
@pytest.fixture(scope="module")
def report(runs):
    """The third notebook run's report, rendered once: its path, HTML, metrics and metadata."""
    from tasks.report.config import ReportConfig
    from tasks.report.rendering import render_report

    run_dir = runs["notebook"][2]
    path = render_report(run_dir, ReportConfig(sample_images=16, confident_mistakes=6))
    return {"run_dir": run_dir, "path": path, "html": path.read_text(),
            "metrics": read_json(run_dir / "metrics.json"), "meta": read_json(run_dir / "metadata.json")}


def test_report_is_written_into_the_run_folder(report):
    assert report["path"] == report["run_dir"] / "report.html"


def test_report_headline_is_the_runs_test_accuracy(report):
    acc = report["metrics"]["test_accuracy"]
    m = re.search(r'id="headline-accuracy" data-value="([^"]+)">([^<]+)<', report["html"])
    assert float(m.group(1)) == acc and m.group(2) == f"{acc * 100:.2f}%"


def test_report_deltas_are_against_the_champion_before_and_the_previous_run(report, runs):
    html, meta, acc = report["html"], report["meta"], report["metrics"]["test_accuracy"]
    # champion before = run 1 (run 2 was worse), previous = run 2; deltas from their metrics.json
    champ = read_json(runs["notebook"][0] / "metrics.json")["test_accuracy"]
    prev = read_json(runs["notebook"][1] / "metrics.json")["test_accuracy"]
    assert meta["promotion"]["champion_before"] == runs["notebook"][0].name
    assert f"{(acc - champ) * 100:+.2f} pp" in html and f"{(acc - prev) * 100:+.2f} pp" in html
    assert "promoted to champion" in html and html_escape(meta["promotion"]["reason"]) in html


def test_report_layer_table_totals_keras_count(report):
    html = report["html"]
    total = re.search(r'id="layers-total">([^<]+)<', html).group(1)
    assert int(total.replace(",", "")) == report["meta"]["model"]["params"] == 624_106
    assert "equals Keras's count" in html


def test_teaching_text_only_where_the_pipeline_asks(report, runs, tmp_path):
    from tasks.report.config import ReportConfig
    from tasks.report.rendering import render_report

    assert "Worked example" not in report["html"] and "worked-example" not in report["html"]
    run_dir = tmp_path / "art" / "notebook" / "runs" / runs["notebook"][0].name
    shutil.copytree(runs["notebook"][0], run_dir)
    html = render_report(run_dir, ReportConfig(sample_images=0, confident_mistakes=0, teaching=True)).read_text()
    # the worked example, derived from conv2d
    example = " ".join(re.sub(r"<[^>]+>", "", re.search(r'id="worked-example">(.*?)</p>', html, re.S).group(1)).split())
    assert "3×3 kernel × 3 channels × 32 filters + 32 biases = 864 + 32 = 896" in example


def test_report_per_class_table_and_stage_timings_come_from_the_files(report):
    from tasks.core.classification import class_scores

    html = report["html"]
    table = re.search(r'<table id="per-class">(.*?)</table>', html, re.S).group(1)
    cells = lambda row: re.sub(r"<[^>]+>", " ", row).split()  # noqa: E731
    rows = [cells(r) for r in re.findall(r"<tr>(.*?)</tr>", table, re.S)][1:]
    expected = class_scores(report["metrics"]["confusion_matrix"], report["metrics"]["classes"])
    for got, want in zip(rows, expected["per_class"]):
        assert got == [want["class"], f"{want['precision'] * 100:.2f}%", f"{want['recall'] * 100:.2f}%",
                       f"{want['f1'] * 100:.2f}%", str(want["support"])]
    avg = [cells(r) for r in re.findall(r'<tr class="avg">(.*?)</tr>', table, re.S)]
    for got, label, want in zip(avg, ("macro", "weighted"), (expected["macro_avg"], expected["weighted_avg"])):
        assert got == [label, "avg", f"{want['precision'] * 100:.2f}%", f"{want['recall'] * 100:.2f}%",
                       f"{want['f1'] * 100:.2f}%", str(want["support"])]
    # weighted recall is the accuracy
    assert expected["weighted_avg"]["recall"] == pytest.approx(report["metrics"]["test_accuracy"])
    assert html.count("cache hit") == 2  # download and prepare were cache hits, train ran


def test_report_states_top_k_and_the_calibration_error(report):
    from tasks.core.classification import reliability, top_k_accuracy

    html, run = report["html"], __import__("tasks.core.runs", fromlist=["load_run"]).load_run(report["run_dir"])
    pred = run["predictions"]
    for k in (1, 3, 5):
        assert f"top-{k} accuracy {top_k_accuracy(pred['probs'], pred['y_true'], k) * 100:.2f}%" in html
    ece = reliability(pred["probs"], pred["y_true"])["ece"]
    assert f'id="ece">ECE {ece * 100:.2f}%' in html and "15 equal-width bins" in html
    assert 'alt="Reliability diagram"' in html and 'alt="Confusion matrix heat map, row-normalised"' in html


def test_report_pictures_are_embedded_decodable_pngs(report):
    from PIL import Image

    # every picture is an embedded, decodable PNG: history, comparison, confusion (counts and
    # row-normalised), reliability, grid, mistakes
    pngs = _images(report["html"])
    assert len(pngs) == 7
    for png in pngs:
        assert Image.open(io.BytesIO(png)).size[0] > 100


def test_report_loads_nothing_from_the_network(report):
    assert [u for u in SRC_HREF.findall(report["html"]) if re.match(r"\s*(https?:)?//", u, re.I)] == []


def test_report_shows_the_description_as_text_not_markup(report):
    html = report["html"]
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()


def test_report_without_the_dataset_cache_says_so(runs, tmp_path):
    from tasks.report.rendering import render_report

    run_dir = tmp_path / "art" / "notebook" / "runs" / runs["notebook"][0].name
    shutil.copytree(runs["notebook"][0], run_dir)
    meta = read_json(run_dir / "metadata.json")
    meta["dataset"]["path"] = str(tmp_path / "gone")
    atomic_write_json(run_dir / "metadata.json", meta)
    html = render_report(run_dir).read_text()
    assert "is not on this machine" in html and len(_images(html)) == 4  # history, confusion x2, reliability


def test_incomplete_run_folder_names_the_missing_file(runs, tmp_path):
    from tasks.core.errors import CifarError
    from tasks.report.rendering import render_report

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metadata.json").write_text("{}")
    with pytest.raises(CifarError) as e:
        render_report(tmp_path / "r")
    assert "metrics.json" in str(e.value) and "run the pipeline again" in str(e.value)


@pytest.fixture(scope="module")
def index_html(runs):
    from tasks.report.rendering import render_index

    return render_index(runs["art"]).read_text()


def test_index_lists_every_run_newest_first(runs, index_html):
    order = re.findall(r'<tr data-run="([^"]+)">', index_html)
    all_dirs = runs["notebook"] + runs["wide"]
    expected = [d.name for d in sorted(all_dirs, key=lambda d: read_json(d / "metadata.json")["created_at"],
                                       reverse=True)]
    assert order == expected


def test_index_marks_each_pipelines_champion(runs, index_html):
    champs = {p: read_json(runs["art"] / p / "registry.json")["champion"]["run_id"] for p in ("notebook", "wide")}
    assert champs["notebook"] == runs["notebook"][2].name
    for row in re.findall(r'<tr data-run="([^"]+)">(.*?)</tr>', index_html, re.S):
        assert ("★ champion" in row[1]) == (row[0] in champs.values())


def test_index_links_are_relative(index_html):
    # links are relative and resolve to the run folders; no network URLs
    for url in SRC_HREF.findall(index_html):
        assert not re.match(r"\s*(https?:)?//", url, re.I)


def test_index_compares_the_pipelines_in_pairs_and_charts_them_over_time(index_html):
    # one pair (notebook vs wide) with its plot; charts of accuracy over dates and over training time
    assert index_html.count('class="pair"') == 1 and len(_images(index_html)) == 3 and 'id="time"' in index_html


def test_index_shows_the_time_per_epoch_from_the_training_record(runs, index_html):
    wide = read_json(runs["wide"][0] / "metadata.json")["training"]["seconds_per_epoch"]
    assert f"{wide:.1f} s" in index_html  # time per epoch, from the run's training record


# --------------------------------------------------------------------------- in a browser
@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_report_in_headless_chromium(runs, tmp_path):
    from browser import BrowserMissing, Chromium, find_chromium

    from tasks.report.rendering import regenerate

    try:
        find_chromium()
    except BrowserMissing as exc:
        pytest.fail(str(exc))
    run_dir = runs["notebook"][2]
    report, index = regenerate(run_dir)
    acc = read_json(run_dir / "metrics.json")["test_accuracy"]
    with Chromium() as browser:
        page = browser.open(report.as_uri())
        sizes = page.evaluate("Promise.all([...document.images].map(i => i.decode()"
                              ".then(() => [i.naturalWidth, i.naturalHeight], () => [0, 0])))")
        assert len(sizes) == 7 and all(w > 0 and h > 0 for w, h in sizes), sizes
        assert float(page.evaluate("document.getElementById('headline-accuracy').dataset.value")) == acc
        assert page.evaluate("document.getElementById('headline-accuracy').textContent") == f"{acc * 100:.2f}%"
        assert page.evaluate("document.getElementById('pipeline-description').textContent") == XSS
        assert page.evaluate("document.querySelectorAll('script').length") == 0
        shot = page.screenshot(tmp_path / "report.png")
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert page.console_errors() == [] and page.dialogs() == []
        assert all(u.startswith(("file:", "data:")) for u in page.requests()), page.requests()

        idx = browser.open(index.as_uri())
        assert idx.console_errors() == []
        hrefs = idx.evaluate("[...document.querySelectorAll('#runs-table a')].map(a => a.href)")
        assert report.as_uri() in hrefs
        visible = idx.evaluate("[...document.querySelectorAll('.pair')].map(p => p.offsetHeight > 0)")
        assert visible == [True]  # the first pair shows without a click
        idx.screenshot(tmp_path / "index.png")

        # the checks above can fail: a broken page is caught
        bad = tmp_path / "bad.html"
        bad.write_text('<img src="missing.png"><script>console.error("boom")</script>')
        errors = browser.open(bad.as_uri()).console_errors()
        assert any("boom" in e for e in errors) and any("missing.png" in e or "ERR_FILE" in e for e in errors), errors


# --------------------------------------------------------------------------- the Prefect task
@pytest.mark.engine
def test_build_report_task_publishes_artifacts_and_caches(runs, prefect_engine):
    from prefect import flow

    from tasks.core.caching import bind_local as _local  # what the flow does
    from tasks.report.tasks import build_report
    from tasks.report.config import ReportConfig
    from tasks.report.rendering import ReportRecord

    run_dir = runs["wide"][0]
    meta = read_json(run_dir / "metadata.json")
    record = FakeRunRecord("wide", meta["run_id"], str(run_dir), 0.5, True, "first run")
    cfg = ReportConfig(sample_images=8, confident_mistakes=4)

    @flow
    def report_flow():
        return _local(build_report, str(runs["data"]))(record, cfg, str(runs["art"]), return_state=True)

    (run_dir / "report.html").unlink(missing_ok=True)
    first = report_flow()
    assert first.name != "Cached"
    rec = first.result()
    assert isinstance(rec, ReportRecord) and Path(rec.report) == run_dir / "report.html"
    assert Path(rec.index) == runs["art"] / "index.html"
    second = report_flow()
    assert second.name == "Cached" and second.result() == rec
    (run_dir / "report.html").unlink()
    third = report_flow()
    assert third.name != "Cached" and (run_dir / "report.html").is_file()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["report-wide", "report-link-wide"])))
    kinds = {a.key: a for a in arts}
    assert set(kinds) == {"report-wide", "report-link-wide"}
    acc = read_json(run_dir / "metrics.json")["test_accuracy"]
    assert f"{acc * 100:.2f}%" in kinds["report-wide"].data
    assert (run_dir / "report.html").as_uri() in kinds["report-link-wide"].data

    # a broken run folder fails once with the message, without retrying into the same wall
    broken = runs["art"] / "wide" / "runs" / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text((run_dir / "metadata.json").read_text())
    (broken / "metrics.json").write_text((run_dir / "metrics.json").read_text())
    bad = FakeRunRecord("wide", "broken", str(broken), 0.5, False, "")

    @flow
    def broken_flow():
        state = _local(build_report, str(runs["data"]))(bad, cfg, str(runs["art"]), return_state=True)
        return state.is_failed(), state.message, state.state_details.task_run_id

    failed, message, task_run_id = broken_flow()
    assert failed and "history.json" in message
    with get_client(sync_client=True) as client:
        assert client.read_task_run(task_run_id).run_count == 1
    shutil.rmtree(broken)


def test_report_says_what_the_run_was_validated_on(report):
    """A run saved before validation splits validated on the test split, and the report says the
    champion was chosen there; a held-out split is named with its size and seed."""
    from tasks.report.context import holdout_section

    row = re.search(r'id="validation-accuracy">(.*?)</dd>', report["html"], re.S).group(1)
    assert "on the test split" in row and "saved before validation splits existed" in row
    assert "the choice of champion among runs is made on the test images" in " ".join(row.split())
    held = holdout_section({"validation_accuracy": 0.8125, "validation_loss": 0.5, "validation_size": 5000,
                            "validation": {"protocol": "held-out",
                                           "described": "5,000 held-out training images (10% per class, seed 0)"}})
    assert held == {"protocol": "held-out", "described": "5,000 held-out training images (10% per class, seed 0)",
                    "accuracy": 0.8125, "loss": 0.5, "images": 5000}


@pytest.mark.parametrize("budget, shown", [
    ({"epochs": 7, "most_epochs": 17, "budget_notebook_epochs": 20, "notebook_epoch_seconds": 71.25,
      "recipe_epoch_seconds": 205.0}, True),
    ({"epochs": "7; <script>", "most_epochs": 17}, False),  # a hand-edited file: no note, no failure
])
def test_a_budgeted_run_says_how_its_epochs_were_chosen(runs, tmp_path, budget, shown):
    from tasks.report.config import ReportConfig
    from tasks.report.rendering import render_report

    run_dir = tmp_path / "art" / "notebook" / "runs" / runs["notebook"][0].name
    shutil.copytree(runs["notebook"][0], run_dir)
    meta = read_json(run_dir / "metadata.json")
    meta["training"]["budget"] = budget
    atomic_write_json(run_dir / "metadata.json", meta)
    html = render_report(run_dir, ReportConfig(sample_images=0, confident_mistakes=0)).read_text()
    note = re.search(r'id="budget">(.*?)</p>', html, re.S)
    assert bool(note) == shown and "7; <script>" not in html
    if shown:
        text = " ".join(note.group(1).split())
        assert "7 of at most 17, the most that fit 20 of the notebook's epochs" in text and "71.2 s" in text
