"""The index's pictures, and the comparison of two runs: right for one run, for two and for a
hundred. Runs are independent experiments, so they are points, never joined by a line (a line
joins only the epochs of one run). Accuracy axes are in percent, padded around the data and
never offset ("1e-8+2.55e-1"); the date axis spans the runs with a margin, not matplotlib's
default years around a single date.

Each picture is a ``*_figure`` function (tests read its axes) and a ``plot_*`` one (PNG bytes).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from tasks.report.plots import _drawn, _epoch_ticks, _epochs, _figure, _png, parse_time

MIN_ACCURACY_SPAN = 0.02  # an accuracy axis shows at least 2 percentage points
MIN_TIME_MARGIN = timedelta(hours=1)  # a date axis reaches at least an hour either side of its runs


def accuracy_limits(values) -> tuple[float, float]:
    """Y limits for accuracies: the data's range padded by a tenth of it, at least
    ``MIN_ACCURACY_SPAN`` wide, within [0, 1]; (0, 1) for no data."""
    vals = [float(v) for v in values if v is not None and v == v]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    pad = max((hi - lo) * 0.1, (MIN_ACCURACY_SPAN - (hi - lo)) / 2, 0.0)
    lo, hi = lo - pad, hi + pad
    if lo < 0:
        lo, hi = 0.0, min(1.0, hi - lo)
    if hi > 1:
        lo, hi = max(0.0, lo - (hi - 1)), 1.0
    return lo, hi


def time_limits(times: list[datetime]) -> tuple[datetime, datetime]:
    """X limits for run dates: the runs' span with 5% of it either side, at least an hour."""
    lo, hi = min(times), max(times)
    pad = max((hi - lo) * 0.05, MIN_TIME_MARGIN)
    return lo - pad, hi + pad


def _utc(t: datetime | None) -> datetime | None:
    """A run date as naive UTC (a date without a zone is taken as UTC, as the store writes them)."""
    if t is None:
        return None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def _percent_axis(ax, values) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.set_ylim(*accuracy_limits(values))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def _date_axis(ax, times: list[datetime]) -> None:
    from matplotlib.dates import AutoDateLocator, DateFormatter

    lo, hi = time_limits(times)
    ax.set_xlim(lo, hi)
    span = hi - lo
    fmt = "%m-%d %H:%M" if span <= timedelta(days=2) else "%Y-%m-%d" if span <= timedelta(days=400) else "%Y-%m"
    ax.xaxis.set_major_locator(AutoDateLocator(minticks=3, maxticks=7))
    ax.xaxis.set_major_formatter(DateFormatter(fmt))


def _colors(names) -> dict[str, str]:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(set(names)))}


def index_accuracy_figure(rows: list[dict[str, Any]]):
    """Test accuracy of every run against its date, a point per run, a colour per pipeline;
    champions ringed."""
    fig = _figure(10, 3.8, bottom=0.6, left=1.0, right=0.45)
    ax = fig.subplots()
    by_pipe: dict[str, list] = {}
    for r in rows:
        t = _utc(parse_time(str(r.get("created_at") or "")))
        if t is not None and r.get("test_accuracy") is not None:
            by_pipe.setdefault(r["pipeline"], []).append((t, float(r["test_accuracy"]), r.get("champion")))
    colors = _colors(by_pipe)
    ms = 6 if sum(map(len, by_pipe.values())) <= 30 else 4
    for name, pts in sorted(by_pipe.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ls="none", ms=ms, alpha=0.85,
                color=colors[name], label=name)
        champ = [p for p in pts if p[2]]
        if champ:
            ax.plot([p[0] for p in champ], [p[1] for p in champ], "o", ls="none", ms=13, mfc="none",
                    mec=colors[name], mew=2)
    pts = [p for v in by_pipe.values() for p in v]
    if pts:
        _date_axis(ax, [p[0] for p in pts])
        ax.legend(loc="best", fontsize=8)
    _percent_axis(ax, [p[1] for p in pts])
    ax.set_title("Test accuracy of every run (a point per run; ringed: the pipeline's champion)")
    ax.set_xlabel("run date (UTC)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    return fig


def accuracy_vs_time_figure(rows: list[dict[str, Any]], curves: list[dict[str, Any]]):
    """Every run's test accuracy against its training seconds (a point each, champions ringed),
    and each pipeline's latest run's validation accuracy after every epoch against the
    cumulative seconds (``curves``: rows with their ``history``), as a thin line."""
    fig = _figure(10, 4.0, left=1.0)
    ax = fig.subplots()
    colors = _colors([r["pipeline"] for r in rows] + [c["pipeline"] for c in curves])
    ys: list[float] = []
    xs: list[float] = []
    for c in curves:
        t, pts = 0.0, []
        for h in c.get("history") or []:
            t += float(h.get("seconds") or 0.0)
            if h.get("val_accuracy") is not None:
                pts.append((t, float(h["val_accuracy"])))
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", lw=1, alpha=0.6, color=colors[c["pipeline"]])
            xs += [p[0] for p in pts]
            ys += [p[1] for p in pts]
    for name in sorted({r["pipeline"] for r in rows}):
        pts = [(float(r["train_seconds"]), float(r["test_accuracy"]), r.get("champion")) for r in rows
               if r["pipeline"] == name and r.get("train_seconds") is not None and r.get("test_accuracy") is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ls="none", color=colors[name], label=name)
        champ = [p for p in pts if p[2]]
        ax.plot([p[0] for p in champ], [p[1] for p in champ], "o", ls="none", ms=13, mfc="none",
                mec=colors[name], mew=2)
        xs += [p[0] for p in pts]
        ys += [p[1] for p in pts]
    ax.set_xlim(0, max(xs, default=1.0) * 1.08 or 1.0)
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    _percent_axis(ax, ys)
    ax.set_title("Test accuracy against training time (points: runs; lines: each pipeline's latest run, per epoch)")
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if ys:
        ax.legend(loc="lower right", fontsize=8)
    return fig


def pair_figure(a: dict[str, Any], b: dict[str, Any]):
    """Two runs side by side: accuracy, loss and seconds per epoch (validation solid, training
    dotted). Each run is labelled by its ``label`` (or its pipeline)."""
    fig = _figure(12, 3.4, wspace=0.35, left=0.95)
    ax_acc, ax_loss, ax_t = fig.subplots(1, 3)
    acc_values: list[float] = []
    for run, color in zip((a, b), ("#1f77b4", "#ff7f0e")):
        hist = run.get("history") or []
        ep = _epochs(hist)
        label = run.get("label") or run["pipeline"]
        ax_acc.plot(ep, [h.get("val_accuracy") for h in hist], "o-", color=color, label=label)
        ax_acc.plot(ep, [h.get("accuracy") for h in hist], ":", color=color, alpha=0.7, label=f"{label} (train)")
        acc_values += [h.get(k) for h in hist for k in ("accuracy", "val_accuracy")]
        ax_loss.plot(ep, [h.get("val_loss") for h in hist], "o-", color=color, label=label)
        ax_loss.plot(ep, [h.get("loss") for h in hist], ":", color=color, alpha=0.7, label=f"{label} (train)")
        ax_t.plot(ep, [h.get("seconds") for h in hist], "o-", color=color, label=label)
    for ax, title, ylabel in ((ax_acc, "Accuracy per epoch", "accuracy"), (ax_loss, "Loss per epoch", "loss"),
                              (ax_t, "Time per epoch", "seconds")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        _epoch_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _percent_axis(ax_acc, acc_values)
    for ax in (ax_loss, ax_t):
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax_t.set_ylim(bottom=0)
    return fig


# What each chart draws of a row: the picture memo (``plots._drawn``) is keyed by these alone, so
# a row's paths, links and other columns never make the same chart be drawn again.
_POINT = ("pipeline", "created_at", "test_accuracy", "train_seconds", "champion")
_CURVE = ("pipeline", "label", "history")


def _only(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in keys if k in r} for r in rows]


@_drawn(drawn_from=lambda rows: (_only(rows, _POINT),))
def plot_index_accuracy(rows: list[dict[str, Any]]) -> bytes:
    return _png(index_accuracy_figure(rows))


@_drawn(drawn_from=lambda rows, curves: (_only(rows, _POINT), _only(curves, _CURVE)))
def plot_accuracy_vs_time(rows: list[dict[str, Any]], curves: list[dict[str, Any]]) -> bytes:
    return _png(accuracy_vs_time_figure(rows, curves))


@_drawn(drawn_from=lambda a, b: tuple(_only([a, b], _CURVE)))
def plot_pair(a: dict[str, Any], b: dict[str, Any]) -> bytes:
    return _png(pair_figure(a, b))
