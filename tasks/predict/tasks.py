"""The predict stage's Prefect tasks: ``fetch_input`` fetches a URL input (retried on network
faults) and ``score_images`` scores an input (cached by content, verified on disk). Only the
``cifar-predict`` flow imports them; ``cifar predict`` scores without Prefect."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.core.caching import VerifiedCache, retry_only_on, retry_unless, same_path
from tasks.core.errors import CifarError
from tasks.predict.fetch import TransientFetchError, fetch_url
from tasks.predict.inputs import InputRecord
from tasks.predict.jobs import ScoreRecord, existing_scores, score_input, scores_dir, scoring_key
from tasks.predict.resolve import ModelRef


@task(name="fetch-input", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(2),
      retry_jitter_factor=0.5, retry_condition_fn=retry_only_on(TransientFetchError))
def fetch_input(url: str, data_dir: str) -> str:
    """Download an http(s) input into ``<data_dir>/predict-inputs/``; returns its path."""
    from pathlib import Path

    return str(fetch_url(url, Path(data_dir) / "predict-inputs"))


def _key_fn(inputs: dict[str, Any]) -> str:
    return scoring_key(inputs["model"], inputs["source"], inputs["top_k"])


def _valid_fn(inputs: dict[str, Any], key: str) -> bool:
    return existing_scores(inputs["data_dir"], key) is not None


def _record_fn(inputs: dict[str, Any], key: str, record: ScoreRecord) -> bool:
    return same_path(record.path, scores_dir(inputs["data_dir"], key))


@task(name="score-images", cache_policy=VerifiedCache(key_fn=_key_fn, valid_fn=_valid_fn, record_fn=_record_fn),
      persist_result=True, retries=1, retry_condition_fn=retry_unless(CifarError))
def score_images(model: ModelRef, source: InputRecord, top_k: int, data_dir: str,
                 label: str | None = None) -> ScoreRecord:
    """Score every image of ``source`` with ``model`` (see ``tasks.predict.jobs.score_input``)."""
    return score_input(model, source, top_k, data_dir, label)
