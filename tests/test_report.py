"""The report stage: pure pieces, the rendered HTML, a real browser, and the Prefect task.

The fixture writes tiny but complete run folders in the store stage's format (CONTRACT.md, 4):
a real dataset cache of synthetic images, predictions from a seeded fake classifier, and every
metric computed from those predictions -- so the numbers the report shows are checked against
files, not against constants. ``make_run`` is also used by bench/bench_report.py at full size.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from markupsafe import escape as html_escape
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from tasks.core.datacache import DatasetRecord, write_dataset_cache
from tasks.core.files import atomic_write_json, read_json
from tasks.core.hashing import stable_hash

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
XSS = "<script>alert(1)</script>"

# The notebook's CNN as Keras 3 reports it (output shapes with the batch dim, params per layer).
NOTEBOOK_LAYERS = [
    ("conv2d", "Conv2D", [None, 32, 32, 32], 896), ("activation", "Activation", [None, 32, 32, 32], 0),
    ("conv2d_1", "Conv2D", [None, 30, 30, 32], 9248), ("activation_1", "Activation", [None, 30, 30, 32], 0),
    ("max_pooling2d", "MaxPooling2D", [None, 15, 15, 32], 0), ("dropout", "Dropout", [None, 15, 15, 32], 0),
    ("conv2d_2", "Conv2D", [None, 15, 15, 32], 9248), ("activation_2", "Activation", [None, 15, 15, 32], 0),
    ("conv2d_3", "Conv2D", [None, 13, 13, 32], 9248), ("activation_3", "Activation", [None, 13, 13, 32], 0),
    ("max_pooling2d_1", "MaxPooling2D", [None, 6, 6, 32], 0), ("dropout_1", "Dropout", [None, 6, 6, 32], 0),
    ("flatten", "Flatten", [None, 1152], 0), ("dense", "Dense", [None, 512], 590336),
    ("activation_4", "Activation", [None, 512], 0), ("dropout_2", "Dropout", [None, 512], 0),
    ("dense_1", "Dense", [None, 10], 5130), ("activation_5", "Activation", [None, 10], 0),
]


@dataclass(frozen=True)
class FakeRunRecord:  # the fields of store's RunRecord that the report task reads
    pipeline: str
    run_id: str
    path: str
    test_accuracy: float
    promoted: bool
    reason: str


# --------------------------------------------------------------------------- fixture builders
def make_dataset(data_dir: Path, n_test: int, n_train: int = 20, seed: int = 0,
                 x_test: np.ndarray | None = None, y_test: np.ndarray | None = None) -> DatasetRecord:
    """A real dataset cache. Synthetic images: a class-tinted gradient plus noise."""
    rng = np.random.default_rng(seed)

    def images(n):
        y = np.arange(n) % len(CLASSES)
        rng.shuffle(y)
        base = np.linspace(0, 1, 32)[None, :, None, None] * np.linspace(1, 0, 32)[None, None, :, None]
        tint = rng.uniform(0.2, 1.0, size=(len(CLASSES), 1, 1, 3))[y]
        x = 40 + 180 * base * tint + rng.normal(0, 18, size=(n, 32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)

    x_train, y_train = images(n_train)
    if x_test is None:
        x_test, y_test = images(n_test)
    fp = stable_hash("fake-dataset", n_train, len(x_test), seed)
    return write_dataset_cache(data_dir / "datasets" / fp, x_train, y_train, x_test, y_test, CLASSES,
                               {"source": str(data_dir / "fake.tar.gz"), "archive_sha256": "ab" * 32,
                                "format": "image-folder"})


def fake_predictions(y_true: np.ndarray, skill: float, seed: int):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, size=(len(y_true), len(CLASSES)))
    logits[np.arange(len(y_true)), y_true] += skill
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    return probs.argmax(1).astype(np.int64), probs


def metrics_from(y_true, y_pred, probs) -> dict:
    n = len(CLASSES)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = []
    for i, c in enumerate(CLASSES):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        per_class.append({"class": c, "precision": float(tp / predicted) if predicted else 0.0,
                          "recall": float(tp / support) if support else 0.0,
                          "accuracy": float(tp / support) if support else 0.0,
                          "support": int(support)})
    loss = float(-np.mean(np.log(probs[np.arange(len(y_true)), y_true] + 1e-7)))
    return {"test_loss": loss, "test_accuracy": float(np.mean(y_true == y_pred)),
            "classes": list(CLASSES), "per_class": per_class, "confusion_matrix": cm.tolist()}


def make_run(artifacts_dir: Path, dataset: DatasetRecord, pipeline: str, created_at: datetime,
             skill: float = 2.0, epochs: int = 3, description: str = "", model: str = "seed_cnn",
             seconds_per_epoch: float = 40.0, seed: int = 0) -> Path:
    """A complete run folder exactly in the store stage's format; promotion and the registry are
    decided like store does (accuracy beats the champion's), from the runs already on disk."""
    from tasks.core.datacache import load_dataset

    y_true = np.asarray(load_dataset(dataset.path).y_test, dtype=np.int64)
    y_pred, probs = fake_predictions(y_true, skill, seed)
    metrics = metrics_from(y_true, y_pred, probs)
    acc, loss = metrics["test_accuracy"], metrics["test_loss"]
    run_id = created_at.strftime("%Y%m%d-%H%M%S-") + stable_hash(pipeline, seed, length=6)
    run_dir = artifacts_dir / pipeline / "runs" / run_id
    run_dir.mkdir(parents=True)

    rng = np.random.default_rng(seed + 1)
    history = []
    for e in range(1, epochs + 1):
        f = e / epochs
        history.append({"epoch": e, "loss": 2.3 - 1.5 * f * (loss < 2.3), "accuracy": min(0.995, acc * (0.4 + 0.7 * f)),
                        "val_loss": loss + (1 - f) * 0.8, "val_accuracy": acc * (0.55 + 0.45 * f),
                        "seconds": seconds_per_epoch * float(rng.uniform(0.9, 1.1))})
    history[-1].update(val_accuracy=acc, val_loss=loss)  # validation data = the test split
    atomic_write_json(run_dir / "history.json", {"epochs": history})
    (run_dir / "history.csv").write_text("epoch,loss,accuracy,val_loss,val_accuracy,seconds\n" + "".join(
        f"{h['epoch']},{h['loss']},{h['accuracy']},{h['val_loss']},{h['val_accuracy']},{h['seconds']}\n"
        for h in history))
    atomic_write_json(run_dir / "metrics.json", metrics)
    np.savez(run_dir / "predictions.npz", y_true=y_true, y_pred=y_pred, probs=probs)

    registry_path = artifacts_dir / pipeline / "registry.json"
    champ = (read_json(registry_path)["champion"] if registry_path.is_file() else None)
    runs = sorted((artifacts_dir / pipeline / "runs").glob("*/metadata.json"))
    previous = read_json(runs[-1])["run_id"] if runs else None
    prev_value = read_json(runs[-1].parent / "metrics.json")["test_accuracy"] if runs else None
    promoted = champ is None or acc > champ["value"]
    reason = ("first run of the pipeline" if champ is None else
              f"test_accuracy {acc:.4f} {'>' if promoted else '<='} champion's {champ['value']:.4f}")
    params = sum(p for *_, p in NOTEBOOK_LAYERS)
    config = {"name": pipeline, "description": description, "expect": "~0.70 in 20 epochs",
              "dataset": {"format": "image-folder"}, "prepare": {"standardize": False},
              "model": model, "training": {"epochs": epochs, "batch_size": 32},
              "promote": {"metric": "test_accuracy", "direction": "max", "min_delta": 0.0},
              "keep_last": None, "report": {"sample_images": 16, "confident_mistakes": 6},
              "schedule": None}
    training = {"key": "k" * 16, "model": model, "model_sha256": "cd" * 32, "epochs": epochs,
                "seconds": sum(h["seconds"] for h in history),
                "seconds_per_epoch": sum(h["seconds"] for h in history) / epochs,
                "devices": ["/physical_device:CPU:0"], "strategy": "one_device",
                "precision": "float32", "xla": False, "resumed_from_epoch": None,
                "preprocess": {"mean": None, "std": None}, "params": params,
                "config": config["training"], "completed_at": created_at.isoformat()}
    meta = {
        "pipeline": pipeline, "run_id": run_id, "created_at": created_at.isoformat(),
        "config": config,
        "dataset": {"fingerprint": dataset.fingerprint, "path": dataset.path,
                    "source": str(Path(dataset.path).parent / "fake.tar.gz"),
                    "archive_sha256": "ab" * 32, "format": "image-folder", "classes": list(CLASSES),
                    "counts": read_json(Path(dataset.path) / "manifest.json")["counts"],
                    "shapes": read_json(Path(dataset.path) / "manifest.json")["shapes"]},
        "validation": {"checks": [{"name": "schema", "passed": True, "detail": "pandera: 0 failures"},
                                  {"name": "class balance", "passed": True, "detail": "within 10%"}],
                       "counts": read_json(Path(dataset.path) / "manifest.json")["counts"],
                       "channel_mean": [0.49, 0.48, 0.45], "channel_std": [0.25, 0.24, 0.26],
                       "train_test_duplicates": 0},
        "cache_keys": {"download": "a1" * 8, "train": "b2" * 8},
        "flow_run_id": None,
        "versions": {"python": "3.11", "tensorflow": "2.21.0", "keras": "3.15.0",
                     "prefect": "3.9.1", "numpy": np.__version__},
        "devices": ["/physical_device:CPU:0"],
        "stages": {"download": {"seconds": 0.4, "cache_hit": True},
                   "prepare": {"seconds": 1.2, "cache_hit": True},
                   "train": {"seconds": training["seconds"], "cache_hit": False}},
        "model": {"name": model, "params": params,
                  "layers": [{"name": n, "class": c, "output_shape": s, "params": p}
                             for n, c, s, p in NOTEBOOK_LAYERS]},
        "training": training,
        "promotion": {"promoted": promoted, "reason": reason, "metric": "test_accuracy", "value": acc,
                      "champion_before": champ["run_id"] if champ else None,
                      "champion_value": champ["value"] if champ else None,
                      "previous_run": previous, "previous_value": prev_value},
        "files": {"model.keras": "ef" * 32},
    }
    atomic_write_json(run_dir / "metadata.json", meta)
    if promoted:
        atomic_write_json(registry_path, {"champion": {
            "run_id": run_id, "metric": "test_accuracy", "value": acc,
            "promoted_at": created_at.isoformat(), "reason": reason}})
    return run_dir


T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


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
def test_report_shows_the_run_and_matches_its_files(runs):
    from PIL import Image

    from tasks.report.config import ReportConfig
    from tasks.report.rendering import render_report

    run_dir = runs["notebook"][2]
    path = render_report(run_dir, ReportConfig(sample_images=16, confident_mistakes=6))
    assert path == run_dir / "report.html"
    html = path.read_text()
    metrics, meta = read_json(run_dir / "metrics.json"), read_json(run_dir / "metadata.json")

    acc = metrics["test_accuracy"]
    m = re.search(r'id="headline-accuracy" data-value="([^"]+)">([^<]+)<', html)
    assert float(m.group(1)) == acc and m.group(2) == f"{acc * 100:.2f}%"
    # champion before = run 1 (run 2 was worse), previous = run 2; deltas from their metrics.json
    champ = read_json(runs["notebook"][0] / "metrics.json")["test_accuracy"]
    prev = read_json(runs["notebook"][1] / "metrics.json")["test_accuracy"]
    assert meta["promotion"]["champion_before"] == runs["notebook"][0].name
    assert f"{(acc - champ) * 100:+.2f} pp" in html and f"{(acc - prev) * 100:+.2f} pp" in html
    assert "promoted to champion" in html and html_escape(meta["promotion"]["reason"]) in html

    # layer table total == Keras's count, and the worked example derived from conv2d
    total = re.search(r'id="layers-total">([^<]+)<', html).group(1)
    assert int(total.replace(",", "")) == meta["model"]["params"] == 624_106
    assert "equals Keras's count" in html
    example = " ".join(re.sub(r"<[^>]+>", "", re.search(r'id="worked-example">(.*?)</p>', html, re.S).group(1)).split())
    assert "3×3 kernel × 3 channels × 32 filters + 32 biases = 864 + 32 = 896" in example

    # per-class table and stage timings come from the files
    for row in metrics["per_class"]:
        assert f"<td>{row['class']}</td><td class=\"n\">{row['precision'] * 100:.1f}%</td>" in html
    assert html.count("cache hit") == 2  # download and prepare were cache hits, train ran
    # every picture is an embedded, decodable PNG: history, comparison, confusion, grid, mistakes
    pngs = _images(html)
    assert len(pngs) == 5
    for png in pngs:
        assert Image.open(io.BytesIO(png)).size[0] > 100
    # nothing from the network; the description is text, not markup
    assert [u for u in SRC_HREF.findall(html) if re.match(r"\s*(https?:)?//", u, re.I)] == []
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
    assert "is not on this machine" in html and len(_images(html)) == 2  # history + confusion


def test_incomplete_run_folder_names_the_missing_file(runs, tmp_path):
    from tasks.core.errors import CifarError
    from tasks.report.rendering import render_report

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metadata.json").write_text("{}")
    with pytest.raises(CifarError) as e:
        render_report(tmp_path / "r")
    assert "metrics.json" in str(e.value) and "run the pipeline again" in str(e.value)


def test_index_lists_every_run_newest_first_with_champions_and_pairs(runs):
    from tasks.report.rendering import render_index

    html = render_index(runs["art"]).read_text()
    order = re.findall(r'<tr data-run="([^"]+)">', html)
    all_dirs = runs["notebook"] + runs["wide"]
    expected = [d.name for d in sorted(all_dirs, key=lambda d: read_json(d / "metadata.json")["created_at"],
                                       reverse=True)]
    assert order == expected
    champs = {p: read_json(runs["art"] / p / "registry.json")["champion"]["run_id"] for p in ("notebook", "wide")}
    assert champs["notebook"] == runs["notebook"][2].name
    for row in re.findall(r'<tr data-run="([^"]+)">(.*?)</tr>', html, re.S):
        assert ("★ champion" in row[1]) == (row[0] in champs.values())
    # links are relative and resolve to the run folders; no network URLs
    for url in SRC_HREF.findall(html):
        assert not re.match(r"\s*(https?:)?//", url, re.I)
    # one pair (notebook vs wide) with its plot; charts of accuracy over dates and over training time
    assert html.count('class="pair"') == 1 and len(_images(html)) == 3 and 'id="time"' in html
    wide = read_json(runs["wide"][0] / "metadata.json")["training"]["seconds_per_epoch"]
    assert f"{wide:.1f} s" in html  # time per epoch, from the run's training record


# --------------------------------------------------------------------------- in a browser
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
        assert len(sizes) == 5 and all(w > 0 and h > 0 for w, h in sizes), sizes
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
