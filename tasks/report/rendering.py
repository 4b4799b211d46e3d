"""Turning a run folder into HTML: the Jinja2 environment and its filters, the report and index
pages written atomically, and ``cifar report RUN`` (find the run, rewrite both pages).

Every picture is embedded as a ``data:`` URI, so a report is one self-contained file that opens
from ``file://`` and mails as one attachment: no script, font or style from anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core import faults, runs
from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_text
from tasks.core.hashing import closure_fingerprint
from tasks.core.logs import get_logger
from tasks.core.numbers import pct
from tasks.report.config import ReportConfig
from tasks.report.context import build_report_context
from tasks.report.index_context import build_index_context
from tasks.report.plots import parse_time

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class ReportRecord:
    report: str  # path of the run's report.html
    index: str  # path of artifacts/index.html


class ReportError(CifarError):
    """A run named on the command line cannot be found."""


def _jinja_env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"),
                                            default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = pct  # the one number format for shares of images (tasks/core/numbers.py)
    env.filters["num"] = lambda v, d=3: "—" if v is None else f"{float(v):.{d}f}"
    env.filters["secs"] = _fmt_seconds
    env.filters["thousands"] = lambda v: "—" if v is None else f"{int(v):,}"
    env.filters["signed_pp"] = lambda v: "—" if v is None else f"{v:+.2f} pp"
    env.filters["when"] = _fmt_when
    return env


def _fmt_seconds(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    if v < 60:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _fmt_when(s: str) -> str:
    t = parse_time(s)
    return t.strftime("%Y-%m-%d %H:%M UTC") if t else (s or "—")


def template_version() -> str:
    """The code and templates that decide the pages: this module and every project module it
    imports (plots, context, changes, the run layout they read, ...) and every template byte;
    the code part of the report's cache key. The import closure replaced a hand-kept list in
    issue 27, changing every report key once."""
    return closure_fingerprint("tasks.report.rendering", *sorted(TEMPLATES.glob("*.j2")))


def _load_test_images(meta: dict[str, Any]):
    from tasks.core.datacache import load_dataset

    path = (meta.get("dataset") or {}).get("path")
    if not path or not (Path(path) / "manifest.json").is_file():
        return None
    try:
        return load_dataset(path, mmap=True).x_test
    except (OSError, ValueError, KeyError) as exc:
        get_logger().warning("cannot open the test images in %s: %s", path, exc)
        return None


def render_report(run_dir: str | Path, cfg: ReportConfig | None = None,
                  artifacts_dir: str | Path | None = None) -> Path:
    """Write ``<run_dir>/report.html`` (atomically) and return its path."""
    run_dir = Path(run_dir).resolve()
    run = runs.load_run(run_dir)
    meta = run["metadata"]
    if cfg is None:  # the settings the run was made with; the defaults where they are out of range
        cfg = ReportConfig(**{k: v for k, v in ((meta.get("config") or {}).get("report") or {}).items()
                              if k in ReportConfig.__dataclass_fields__})
        cfg = ReportConfig() if cfg.problems() else cfg
    artifacts_dir = Path(artifacts_dir) if artifacts_dir else runs.artifacts_dir_of(run_dir)
    ctx = build_report_context(run, cfg, artifacts_dir, _load_test_images(meta))
    html = _jinja_env().get_template("report.html.j2").render(**ctx)
    faults.reached("report.before-write")
    return atomic_write_text(run_dir / runs.REPORT, html)


def render_index(artifacts_dir: str | Path) -> Path:
    """Write ``<artifacts_dir>/index.html`` (atomically) listing every run; return its path."""
    artifacts_dir = Path(artifacts_dir).resolve()
    html = _jinja_env().get_template("index.html.j2").render(**build_index_context(artifacts_dir))
    return atomic_write_text(runs.index_path(artifacts_dir), html)


def render_compare(run_a: str | Path, run_b: str | Path, artifacts_dir: str | Path) -> Path:
    """`cifar compare RUN_A RUN_B`: write ``<artifacts_dir>/compare/<a>--<b>.html`` (atomically),
    the two runs side by side; each run a folder, PIPELINE/RUN_ID or a bare run id."""
    from tasks.report.compare import COMPARE_DIR, compare_context, compare_name

    ctx = compare_context(resolve_run_dir(run_a, artifacts_dir), resolve_run_dir(run_b, artifacts_dir))
    html = _jinja_env().get_template("compare.html.j2").render(**ctx)
    return atomic_write_text(Path(artifacts_dir).resolve() / COMPARE_DIR / compare_name(ctx["a"], ctx["b"]), html)


def resolve_run_dir(run: str | Path, artifacts_dir: str | Path) -> Path:
    """A run given as a folder path, ``pipeline/run_id`` or a bare run id -> its folder."""
    p = Path(run)
    if (p / runs.METADATA).is_file():
        return p
    root = Path(artifacts_dir)
    parts = str(run).strip("/").split("/")
    if len(parts) == 2 and (runs.run_dir(root, *parts) / runs.METADATA).is_file():
        return runs.run_dir(root, *parts)
    hits = [r.dir for r in runs.published_runs(root) if r.run_id == str(run)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ReportError(f"run id {run!r} exists in several pipelines "
                          f"({', '.join(runs.pipeline_dir_of(d).name for d in hits)}); "
                          "give it as PIPELINE/RUN_ID")
    raise ReportError(f"no run {run!r}: not a run folder and not a run id under {root}; "
                      "give a folder artifacts/<pipeline>/runs/<run_id> or PIPELINE/RUN_ID")


def regenerate(run_dir: str | Path, artifacts_dir: str | Path | None = None) -> tuple[Path, Path]:
    """`cifar report RUN`: rewrite a run's report and the index from its folder, no retraining."""
    run_dir = resolve_run_dir(run_dir, artifacts_dir or ".").resolve()
    artifacts_dir = Path(artifacts_dir).resolve() if artifacts_dir else runs.artifacts_dir_of(run_dir)
    report = render_report(run_dir, artifacts_dir=artifacts_dir)
    return report, render_index(artifacts_dir)


def refresh_pages(artifacts_dir: str | Path, pipeline: str, run_ids: list[str | None]) -> list[str]:
    """After a person's decision (``cifar promote``): rewrite the reports of ``run_ids`` that have
    one (they say who is champion and why) and the index. Returns lines saying what was written;
    a run whose report cannot be rebuilt is named, never fatal (the decision is already made)."""
    artifacts_dir = Path(artifacts_dir).resolve()
    lines = []
    for run_id in dict.fromkeys(r for r in run_ids if r):
        folder = runs.run_dir(artifacts_dir, pipeline, run_id)
        if not (folder / runs.REPORT).is_file():
            continue
        try:
            lines.append(f"report: {render_report(folder, artifacts_dir=artifacts_dir)}")
        except CifarError as exc:
            lines.append(f"warning: the report of {run_id} was not rewritten: {exc}")
    lines.append(f"index:  {render_index(artifacts_dir)}")
    return lines
