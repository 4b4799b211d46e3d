"""The report stage's Prefect task: ``build_report`` renders the run's page and the index and
publishes the Prefect artifacts; cached by the run's metadata and metrics checksums."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.core import runs
from tasks.core.caching import VerifiedCache, retry_unless, same_path
from tasks.core.errors import CifarError
from tasks.core.files import read_json
from tasks.core.hashing import hash_file, stable_hash
from tasks.core.logs import get_logger
from tasks.core.records import RunRecord
from tasks.report.config import ReportConfig
from tasks.report.publishing import publish_artifacts
from tasks.report.rendering import ReportRecord, render_index, render_report, template_version


def _report_key(inputs: dict[str, Any]) -> str:
    run_dir = Path(inputs["run"].path)
    return stable_hash("report", hash_file(run_dir / runs.METADATA).sha256,
                       hash_file(run_dir / runs.METRICS).sha256, inputs["cfg"], template_version())


def _report_valid(inputs: dict[str, Any], key: str) -> bool:
    return ((Path(inputs["run"].path) / runs.REPORT).is_file()
            and runs.index_path(inputs["artifacts_dir"]).is_file())


def _report_record(inputs: dict[str, Any], key: str, record: ReportRecord) -> bool:
    """The cached record names this run's report and this ``artifacts_dir``'s index."""
    return (same_path(record.report, Path(inputs["run"].path) / runs.REPORT)
            and same_path(record.index, runs.index_path(inputs["artifacts_dir"])))


# Retries I/O hiccups, never a CifarError (a broken run folder stays broken).
@task(name="build-report", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_unless(CifarError),
      persist_result=True, cache_policy=VerifiedCache(key_fn=_report_key, valid_fn=_report_valid,
                                                      record_fn=_report_record))
def build_report(run: RunRecord, cfg: ReportConfig, artifacts_dir: str) -> ReportRecord:
    """Render the run's report.html and artifacts/index.html; publish Prefect artifacts."""
    log = get_logger()
    run_dir = Path(run.path)
    report = render_report(run_dir, cfg, artifacts_dir)
    index = render_index(artifacts_dir)
    meta = read_json(run_dir / runs.METADATA)
    publish_artifacts(meta, read_json(run_dir / runs.METRICS), report, Path(artifacts_dir))
    log.info("report for %s run %s: %s", run.pipeline, run.run_id, report)
    return ReportRecord(report=str(report), index=str(index))
