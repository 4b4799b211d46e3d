"""The store stage's Prefect task: ``save_run``, cached by the save key while the run folder is
registered; retried once on unexpected errors, never on a CifarError."""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.core import runs
from tasks.core.caching import VerifiedCache, retry_unless, same_path
from tasks.core.datacache import DatasetRecord
from tasks.core.errors import CifarError
from tasks.core.records import RunRecord, TrainRecord, ValidationRecord
from tasks.store.config import PipelineSettings
from tasks.store.saving import existing_run, store_key, store_run


def _key_fn(inputs: dict[str, Any]) -> str:
    return store_key(inputs["pipeline"], inputs["dataset"], inputs["trained"])


def _valid_fn(inputs: dict[str, Any], key: str) -> bool:
    return existing_run(runs.pipeline_dir(inputs["artifacts_dir"], inputs["pipeline"].name), key) is not None


def _record_fn(inputs: dict[str, Any], key: str, run: RunRecord) -> bool:
    """The cached record names the run folder in this run's ``artifacts_dir``."""
    return same_path(run.path, runs.run_dir(inputs["artifacts_dir"], inputs["pipeline"].name, run.run_id))


@task(
    name="save-run",
    cache_policy=VerifiedCache(key_fn=_key_fn, valid_fn=_valid_fn, record_fn=_record_fn),
    persist_result=True,
    retries=1,
    # Retry unexpected errors once; never a CifarError (a tampered file stays tampered).
    retry_condition_fn=retry_unless(CifarError),
)
def save_run(
    pipeline: PipelineSettings,
    dataset: DatasetRecord,
    validation: ValidationRecord,
    trained: TrainRecord,
    stages: dict[str, Any],
    flow_run_id: str | None,
    artifacts_dir: str,
    context: dict[str, Any] | None = None,
) -> RunRecord:
    """Stage 4: save the trained model as a run, register it, promote it or not (see store_run)."""
    return store_run(pipeline, dataset, validation, trained, stages, flow_run_id, artifacts_dir, context)
