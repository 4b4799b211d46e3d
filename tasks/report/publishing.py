"""The report in Prefect's UI, published only inside a flow or task run: a markdown artifact
with the headline numbers; table artifacts of the per-class metrics, the validation checks and
the pipeline's runs (the champion marked); and link artifacts to the report and the index
(Prefect has no HTML artifact). The links are ``file://`` ones unless ``CIFAR_REPORTS_URL``
names a `cifar reports` server (browsers block ``file://`` links on the UI's ``http://`` page).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from tasks.core import runs
from tasks.core.errors import CifarError
from tasks.core.logs import in_prefect_run
from tasks.core.numbers import pct
from tasks.report.context import headline

REPORTS_URL = "CIFAR_REPORTS_URL"  # e.g. http://127.0.0.1:8765, where `cifar reports` serves artifacts_dir


class ReportsUrlError(CifarError):
    pass


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "report"


def _loss(value: Any) -> str:
    return "— (not a finite number)" if value is None else f"{float(value):.4f}"


def headline_markdown(meta: dict[str, Any], metrics: dict[str, Any], head: dict[str, Any],
                      report: str) -> str:
    """The headline as a markdown table: accuracy, loss, the deltas, the promotion, and a link
    to the report (``report``: its address, ``report_link``)."""

    def esc(s: Any) -> str:  # markdown table cells: no pipes or newlines from config text
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = [f"### {esc(meta.get('pipeline'))} · run {esc(meta.get('run_id'))}", "",
             "| metric | value |", "|---|---|",
             f"| Test accuracy | **{pct(head['accuracy'])}** |",
             f"| Test loss | {_loss(metrics.get('test_loss'))} |"]
    topk = metrics.get("top_k_accuracy") or {}
    if topk:
        lines.append(f"| Top-k accuracy | {', '.join(f'top-{k} {pct(v)}' for k, v in topk.items())} |")
    ece = (metrics.get("calibration") or {}).get("ece")
    if ece is not None:
        lines.append(f"| Calibration error (ECE, 15 bins) | {pct(ece)} |")
    for name in ("champion", "previous"):
        o = head[name]
        if o and o["delta_pp"] is not None:
            lines.append(f"| vs {name} {esc(o['run_id'])} | {o['delta_pp']:+.2f} pp |")
    if head.get("images") is not None:
        lines.insert(5, f"| Test images | {head['images']:,} |")
    lines += [f"| Promoted | {'yes' if head['promoted'] else 'no'}: {esc(head['reason'])} |",
              f"| Report | {markdown_link('report.html', report)} |"]
    return "\n".join(lines) + "\n"


def markdown_link(text: str, address: str) -> str:
    """A link for Prefect's markdown; a ``file://`` address is shown as text with what to do,
    since the UI's http page cannot open it."""
    if address.startswith(("http://", "https://")):
        return f"[{text}]({address})"
    return f"{address} (a local file: `cifar reports` serves it, then set {REPORTS_URL})"


def reports_url(environ: dict[str, str] | None = None) -> str | None:
    """The `cifar reports` server the links point at (``CIFAR_REPORTS_URL``), without a trailing
    slash; None when unset. Anything but an http(s) address with a host is refused by name."""
    raw = (os.environ if environ is None else environ).get(REPORTS_URL, "").strip()
    if not raw:
        return None
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ReportsUrlError(f"{REPORTS_URL}={raw!r} is not the address of a reports server; set it to "
                              "what `cifar reports` prints, e.g. http://127.0.0.1:8765, or unset it for "
                              "file:// links")
    return raw.rstrip("/")


def report_link(report: Path, artifacts_dir: Path, meta: dict[str, Any], base: str | None) -> str:
    """The report's address: on the reports server when ``base`` is set, else its file URI."""
    if base is None:
        return report.as_uri()
    return f"{base}/{runs.report_href(meta.get('pipeline', ''), meta.get('run_id', ''))}"


def per_class_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class, then the macro and weighted averages: precision, recall, F1 (as
    percent with two decimals) and support."""
    rows = [("class", r) for r in metrics.get("per_class") or []]
    rows += [(name, metrics[key]) for name, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg"))
             if isinstance(metrics.get(key), dict)]
    return [{"class": row.get("class", label) if label == "class" else label,
             "precision": pct(row.get("precision")), "recall": pct(row.get("recall")),
             "f1": pct(row.get("f1")), "support": row.get("support")}
            for label, row in rows]


def checks_table(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The validation checks the run's data passed (or not), as the prepare stage wrote them."""
    return [{"check": c.get("name"), "passed": bool(c.get("passed")), "detail": c.get("detail", "")}
            for c in ((meta.get("validation") or {}).get("checks") or [])]


def runs_table(artifacts_dir: Path, pipeline: str, current: str | None = None,
               base: str | None = None) -> list[dict[str, Any]]:
    """The pipeline's runs, newest first: the champion marked, a damaged run marked (its value
    left out when metrics.json is what fails), the test-set size beside each accuracy, this run
    marked, the report's address on the reports server when there is one."""
    rows = []
    for run in reversed(runs.pipeline_runs(runs.pipeline_dir(artifacts_dir, pipeline))):
        acc = run.metrics.get("test_accuracy") if run.value_verified else None
        row = {"run": run.run_id, "created": str(run.metadata.get("created_at") or "")[:19],
               "test_accuracy": pct(acc),
               "test_images": run.test_images if run.value_verified else None,
               "champion": "damaged" if run.damage else "★ champion" if run.champion else "",
               "this run": "◀" if run.run_id == current else ""}
        if base:
            row["report"] = f"{base}/{runs.report_href(pipeline, run.run_id)}"
        rows.append(row)
    return rows


def publish_artifacts(meta: dict[str, Any], metrics: dict[str, Any], report: Path,
                      artifacts_dir: Path) -> None:
    """Markdown (headline), tables (per class, checks, runs) and links (report, index), when
    inside a Prefect run."""
    if not in_prefect_run():
        return
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    pipeline, run_id = meta.get("pipeline", ""), meta.get("run_id")
    base = reports_url()
    head = headline(meta, metrics, artifacts_dir)
    link = report_link(report, artifacts_dir, meta, base)
    create_markdown_artifact(key=artifact_key("report", pipeline),
                             markdown=headline_markdown(meta, metrics, head, link),
                             description=f"Headline metrics of run {run_id}")
    create_table_artifact(key=artifact_key("per-class", pipeline), table=per_class_table(metrics),
                          description=f"Per-class test metrics of run {run_id}")
    create_table_artifact(key=artifact_key("validation", pipeline), table=checks_table(meta),
                          description=f"The data checks of run {run_id}")
    create_table_artifact(key=artifact_key("runs", pipeline), table=runs_table(artifacts_dir, pipeline, run_id, base),
                          description=f"Every run of {pipeline}, newest first, the champion marked")
    create_link_artifact(key=artifact_key("report-link", pipeline), link=link,
                         link_text=f"report {pipeline} {run_id}",
                         description=("The run's HTML report, on the reports server" if base
                                      else "The run's HTML report (a local file; `cifar reports` serves it over HTTP)"))
    if base:
        create_link_artifact(key=artifact_key("index-link"), link=f"{base}/{runs.INDEX}",
                             link_text="every run of every pipeline", description="artifacts/index.html")
