"""The index's charts for 1, 2 and 100 runs (tasks/report/index_plots.py): the axes read right
(no offset text, accuracy limits padded around the data in percent, a date axis spanning the
runs with a margin, not years around one date), runs drawn as points, never joined; the index
page rendered with those counts; and `cifar compare` of any two runs."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from runfolders import T0, make_dataset, make_run

from tasks.report.index_plots import (
    accuracy_limits, accuracy_vs_time_figure, index_accuracy_figure, pair_figure, time_limits,
)

START = datetime(2026, 12, 1, 10, 0, 0)


def _rows(n: int, same_accuracy: bool = False) -> list[dict]:
    """``n`` runs of two pipelines, a day apart (an hour apart for n <= 2), accuracies near 0.2555."""
    step = timedelta(hours=1) if n <= 2 else timedelta(days=1)
    hist = [{"epoch": 1, "val_accuracy": 0.2555, "accuracy": 0.2, "loss": 2.0, "val_loss": 2.1, "seconds": 30.0}]
    return [{"pipeline": ("smoke", "train")[i % 2], "run_id": f"r{i}",
             "created_at": (START + i * step).isoformat(),
             "test_accuracy": 0.2555 if same_accuracy else 0.2555 + 0.004 * (i % 7),
             "train_seconds": 30.0 + i, "champion": i == n - 1, "history": hist}
            for i in range(n)]


def _drawn(fig):
    fig.canvas.draw()  # tick labels and offset texts exist only once drawn
    return fig.axes


def _check_accuracy_axis(ax, values):
    lo, hi = ax.get_ylim()
    assert ax.yaxis.get_offset_text().get_text() == ""
    assert 0.0 <= lo < min(values) and max(values) < hi <= 1.0  # padded both sides, within [0, 1]
    assert 0.02 <= hi - lo <= 0.5  # not 0..1 around runs at 25-28%
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all(label.endswith("%") for label in labels), labels


def test_accuracy_limits_pad_and_stay_within_zero_and_one():
    assert accuracy_limits([0.2555]) == pytest.approx((0.2455, 0.2655))
    assert accuracy_limits([0.2, 0.4]) == pytest.approx((0.18, 0.42))
    assert accuracy_limits([1.0]) == pytest.approx((0.98, 1.0))
    assert accuracy_limits([0.0, None]) == pytest.approx((0.0, 0.02))
    assert accuracy_limits([]) == (0.0, 1.0)
    lo, hi = time_limits([START])
    assert (lo, hi) == (START - timedelta(hours=1), START + timedelta(hours=1))


@pytest.mark.parametrize("n", [1, 2, 100])
def test_index_accuracy_chart_reads_right(n):
    rows = _rows(n, same_accuracy=n == 1)
    ax, = _drawn(index_accuracy_figure(rows))
    _check_accuracy_axis(ax, [r["test_accuracy"] for r in rows])
    from matplotlib.dates import num2date

    lo, hi = (num2date(v).replace(tzinfo=None) for v in ax.get_xlim())
    first, last = START, datetime.fromisoformat(rows[-1]["created_at"])
    assert lo < first and last < hi  # the runs with a margin either side
    assert hi - lo <= (last - first) * 1.1 + timedelta(hours=2, minutes=1)  # not years around one run
    assert ax.xaxis.get_offset_text().get_text() == ""
    assert all(line.get_linestyle() in ("None", "none", "") for line in ax.get_lines())  # points, no lines
    assert sum(len(line.get_xdata()) for line in ax.get_lines() if line.get_markerfacecolor() != "none") == n


@pytest.mark.parametrize("n", [1, 2, 100])
def test_accuracy_against_training_time_reads_right(n):
    rows = _rows(n, same_accuracy=n == 1)
    latest = {r["pipeline"]: r for r in rows}  # the last of each pipeline
    ax, = _drawn(accuracy_vs_time_figure(rows, list(latest.values())))
    _check_accuracy_axis(ax, [r["test_accuracy"] for r in rows])
    lo, hi = ax.get_xlim()
    assert lo == 0 and max(r["train_seconds"] for r in rows) < hi < 1.2 * max(r["train_seconds"] for r in rows)
    assert ax.xaxis.get_offset_text().get_text() == ""
    # one-epoch histories draw no line; every run is one point
    assert all(line.get_linestyle() in ("None", "none", "") for line in ax.get_lines())


def test_pair_accuracy_axis_has_no_offset():
    a, b = _rows(2, same_accuracy=True)
    axes = _drawn(pair_figure({**a, "label": "a"}, {**b, "label": "b"}))
    assert all(ax.yaxis.get_offset_text().get_text() == "" for ax in axes)
    assert axes[0].get_yticklabels()[0].get_text().endswith("%")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("index-counts")
    ds = make_dataset(root / "data", n_test=20)
    return root, ds


@pytest.mark.parametrize("n", [1, 2, 100])
def test_the_index_renders_with_1_2_and_100_runs(folders, n):
    from tasks.report.rendering import render_index

    root, ds = folders
    art = root / f"art{n}"
    for i in range(n):
        make_run(art, ds, ("a", "b")[i % 2] if n > 1 else "a", T0 + timedelta(hours=6 * i),
                 epochs=1 if n == 1 else 2, seed=i)
    html = render_index(art).read_text()
    assert len(re.findall(r'<tr data-run="', html)) == n
    assert 'id="chart"' in html and 'id="time"' in html and "cifar compare" in html
    assert "notebook" not in html.lower()  # no course text on the index


@pytest.mark.subprocess
def test_cifar_compare_writes_a_page_for_any_two_runs(folders, tmp_path):
    root, ds = folders
    art = tmp_path / "artifacts"
    a = make_run(art, ds, "smoke", T0, skill=1.0, seed=1)
    b = make_run(art, ds, "smoke", T0 + timedelta(hours=1), skill=3.0, seed=2, epochs=4)
    (tmp_path / "pipelines.yaml").write_text("artifacts_dir: artifacts\npipelines: {smoke: {}}\n")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "compare", f"smoke/{a.name}", b.name,
                          "--config", str(tmp_path / "pipelines.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    page = art / "compare" / f"smoke-{a.name}--smoke-{b.name}.html"
    assert out.stdout.strip() == str(page)
    html = page.read_text()
    from tasks.core.files import read_json

    acc_a, acc_b = (read_json(d / "metrics.json")["test_accuracy"] for d in (a, b))
    assert f"{acc_a * 100:.2f}%" in html and f"{acc_b * 100:.2f}%" in html
    assert f"{(acc_b - acc_a) * 100:+.2f} pp" in html
    assert "training.epochs" in html  # the settings that differ (3 vs 4 epochs)
    assert f'href="../smoke/runs/{a.name}/report.html"' not in html  # no report yet: not a dead link
    assert 'href="../index.html"' in html
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "compare", a.name, "nope",
                          "--config", str(tmp_path / "pipelines.yaml")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no run 'nope'" in bad.stderr
