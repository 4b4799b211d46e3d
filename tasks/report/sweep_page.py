"""A sweep's page: ``<artifacts_dir>/sweeps/<pipeline>-<timestamp>.html``, beside the index.

The table the sweep computed (``flows/sweep_plan.py``: one row per point, mean ± sd over seeds)
and one plot: validation and test accuracy per point with sd error bars. Self-contained (the plot
is embedded as a data: URI), written atomically. Every text from outside (point labels from the
command line, run ids, failure messages) is escaped twice: control characters made visible
(``tasks.core.guards_text.escape``), then HTML-escaped.
"""

from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.core.files import atomic_write_text
from tasks.core.guards_text import escape

SWEEPS = "sweeps"


def page_path(artifacts_dir: str | os.PathLike, pipeline: str, when: datetime | None = None) -> Path:
    when = when or datetime.now(timezone.utc)
    return Path(artifacts_dir) / SWEEPS / f"{pipeline}-{when:%Y%m%d-%H%M%S}.html"


def _h(text: Any) -> str:
    return html.escape(escape(text), quote=True)


def plot_png(rows: list[dict[str, Any]]) -> bytes:
    """Validation and test accuracy per point (mean, sd error bars); a missing mean is no marker."""
    from matplotlib.ticker import PercentFormatter

    from tasks.report.index_plots import accuracy_limits
    from tasks.report.plots import _figure, _png

    n = len(rows)
    fig = _figure(max(6.0, 1.2 * n + 2), 3.6, bottom=1.0)
    ax = fig.subplots()
    values = []
    for offset, key, label in ((-0.12, "validation_accuracy", "validation"), (0.12, "test_accuracy", "test")):
        xs, ys, errs = [], [], []
        for i, r in enumerate(rows):
            s = r[key]
            if s.get("mean") is None:
                continue
            xs.append(i + offset)
            ys.append(s["mean"])
            errs.append(s.get("sd") or 0.0)
            values += [s["mean"] - (s.get("sd") or 0.0), s["mean"] + (s.get("sd") or 0.0)]
        ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=4, label=label if xs else f"{label} (no values)")
    ax.set_xticks(range(n))
    ax.set_xticklabels([escape(r["point"])[:40] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(*accuracy_limits(values))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("accuracy (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def render_page(rows: list[dict[str, Any]], cells: list[dict[str, str]], *, pipeline: str, sweep: str,
                notes: list[str] | None = None) -> str:
    """The page's HTML: ``rows`` the aggregate (numbers, for the plot), ``cells`` its text table."""
    from tasks.report.plots import data_uri

    head = list(cells[0]) if cells else []
    table = "".join(f"<th>{_h(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_h(r[c])}</td>" for c in head) + "</tr>\n" for r in cells)
    plot = f'<img alt="accuracy per point" src="{data_uri(plot_png(rows))}">' if rows else ""
    extra = "".join(f"<li>{_h(n)}</li>" for n in notes or [])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>sweep {_h(sweep)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>Sweep {_h(sweep)} of pipeline {_h(pipeline)}</h1>
<p><a href="../index.html">all runs</a>. Accuracies: mean ± sample sd over the seeds whose run
completed and verifies; n = those runs / seeds. No child was promoted by the rule.</p>
<table><thead><tr>{table}</tr></thead><tbody>
{body}</tbody></table>
<ul>{extra}</ul>
{plot}
</body></html>
"""


def write_page(artifacts_dir: str | os.PathLike, rows: list[dict[str, Any]], cells: list[dict[str, str]], *,
               pipeline: str, sweep: str, notes: list[str] | None = None, when: datetime | None = None) -> Path:
    """Write the page atomically; its path."""
    return atomic_write_text(page_path(artifacts_dir, pipeline, when),
                             render_page(rows, cells, pipeline=pipeline, sweep=sweep, notes=notes))
