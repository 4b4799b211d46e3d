"""The prepare stage's Prefect task: ``validate_dataset``, never retried (a broken contract is
not transient), cached by dataset + settings + code while its summary is on disk."""

from pathlib import Path
from typing import Any

from prefect import task

from tasks.core.caching import VerifiedCache
from tasks.core.datacache import DatasetRecord
from tasks.core.records import ValidationRecord
from tasks.prepare.config import PrepareConfig
from tasks.prepare.validation import read_summary, validate_cached_dataset, validation_key, validation_path


def _key(inputs: dict[str, Any]) -> str:
    return validation_key(inputs["dataset"], inputs["cfg"])


def _valid(inputs: dict[str, Any], key: str) -> bool:
    dataset = inputs["dataset"]
    return (read_summary(validation_path(inputs["data_dir"], key)) is not None
            and (Path(dataset.path) / "manifest.json").is_file())


@task(
    name="validate-dataset",
    retries=0,  # a broken contract is never transient: retrying hits the same wall
    cache_policy=VerifiedCache(key_fn=_key, valid_fn=_valid),
    persist_result=True,
)
def validate_dataset(dataset: DatasetRecord, cfg: PrepareConfig, data_dir: str) -> ValidationRecord:
    """Scale, one-hot and validate the cached dataset (pandera); cached by dataset + settings + code."""
    return validate_cached_dataset(dataset, cfg, data_dir)
