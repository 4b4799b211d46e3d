"""The report in Prefect's UI: a markdown artifact with the headline numbers and a link artifact
to the report file (Prefect has no HTML artifact), published only inside a flow or task run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tasks.report.context import headline


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "report"


def _loss(value: Any) -> str:
    return "— (not a finite number)" if value is None else f"{float(value):.4f}"


def headline_markdown(meta: dict[str, Any], metrics: dict[str, Any], head: dict[str, Any],
                      report: Path) -> str:
    """The headline as a markdown table: accuracy, loss, the deltas, the promotion, the file."""

    def esc(s: Any) -> str:  # markdown table cells: no pipes or newlines from config text
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = [f"### {esc(meta.get('pipeline'))} · run {esc(meta.get('run_id'))}", "",
             "| | |", "|---|---|",
             f"| Test accuracy | **{head['accuracy_pct']}** |",
             f"| Test loss | {_loss(metrics.get('test_loss'))} |"]
    for name in ("champion", "previous"):
        o = head[name]
        if o and o["delta_pp"] is not None:
            lines.append(f"| vs {name} {esc(o['run_id'])} | {o['delta_pp']:+.2f} pp |")
    lines += [f"| Promoted | {'yes' if head['promoted'] else 'no'}: {esc(head['reason'])} |",
              f"| Report | `{report}` |"]
    return "\n".join(lines) + "\n"


def publish_artifacts(meta: dict[str, Any], metrics: dict[str, Any], report: Path,
                      artifacts_dir: Path) -> None:
    """Markdown (headline) and link (report file) artifacts, when inside a Prefect run."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    pipeline = meta.get("pipeline", "")
    head = headline(meta, metrics, artifacts_dir)
    create_markdown_artifact(key=artifact_key("report", pipeline),
                             markdown=headline_markdown(meta, metrics, head, report),
                             description=f"Headline metrics of run {meta.get('run_id')}")
    create_link_artifact(key=artifact_key("report-link", pipeline), link=report.as_uri(),
                         link_text=f"report {pipeline} {meta.get('run_id')}",
                         description="The run's HTML report (a local file)")
