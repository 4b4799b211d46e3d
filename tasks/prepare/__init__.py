"""Stage 2: prove the prepared data right before training spends minutes on it.

The data is checked as the training input pipeline will see it (``tasks.core.pixels``: scaled
float32 pixels, one-hot labels), chunk by chunk over the uint8 cache, so no float copy of the
whole set is ever made. Each chunk is reduced to one row per image and per label
(``summaries``), those tables are checked against pandera contracts lazily, every failure at
once (``contracts``), and the dataset as a whole is checked too: sizes, every class present,
balance, train/test duplicates (``validation``). A failure names each broken check with a hint
(``hints``); a pass leaves a summary that training reads. This module holds the Prefect task.
"""

from pathlib import Path
from typing import Any

from prefect import task

from tasks.core.caching import VerifiedCache
from tasks.core.datacache import DatasetRecord
from tasks.prepare.config import PrepareConfig, ValidationRecord
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
