"""The download stage's Prefect tasks: ``fetch_archive`` retries network faults with backoff
(``dataset.retries`` times, ``retry_options``; never a checksum mismatch or a 404) and is cached
by the archive's expected checksum (a local source without one is hashed afresh at every run,
uncached); ``follow_checksum`` reads ``dataset.sha256_url`` at every run; ``decode_dataset`` is
cached by the dataset's fingerprint. Both caches are trusted only while the files behind them
are intact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.core.caching import VerifiedCache, retry_only_on, same_path
from tasks.core.datacache import DatasetRecord, cache_problems
from tasks.core.hashing import stable_hash
from tasks.download import fetching, published
from tasks.download.config import DatasetConfig, expected_for, local_path, sources_for
from tasks.download.decode import dataset_dir, dataset_fingerprint, decode_and_cache
from tasks.download.errors import TransientDownloadError
from tasks.download.fetching import FETCH_CODE_VERSION, ArchiveRecord, cached_archive, final_path


def retry_options(cfg: DatasetConfig, backoff_factor: float = 2.0) -> dict[str, Any]:
    """How often and how long the network tasks retry: ``dataset.retries`` times, with exponential
    backoff and jitter. The one place that says so: the flow binds ``fetch_archive`` and
    ``follow_checksum`` with these options (``task.with_options(**retry_options(cfg))``); their
    decorators say only which faults are retried (``TransientDownloadError``), and without these
    options they do not retry."""
    return {"retries": cfg.retries,
            "retry_delay_seconds": exponential_backoff(backoff_factor)(max(cfg.retries, 1)),
            "retry_jitter_factor": 0.5}


def _fetch_key(inputs: dict[str, Any]) -> str | None:
    """The expected checksum (configured, published or built in); None -- no Prefect cache --
    for a local file or folder without one: it is hashed in full at every run anyway (the
    record is its hash), and the decode, keyed by that hash, is what a rerun skips."""
    cfg: DatasetConfig = inputs["cfg"]
    exp = expected_for(cfg)
    if not exp.known:
        return None
    return stable_hash("fetch", cfg.format, [exp.sha256, exp.md5, exp.size], FETCH_CODE_VERSION)


def _fetch_valid(inputs: dict[str, Any], key: str | None) -> bool:
    return key is None or cached_archive(inputs["cfg"], inputs["data_dir"]) is not None


def archive_places(cfg: DatasetConfig, data_dir: str) -> list[Path]:
    """Where this config's archive may be: a local source used in place, or the download in
    ``data_dir``."""
    places = [path for src in sources_for(cfg) if (path := local_path(src)) is not None]
    final = final_path(cfg, data_dir)
    return places + ([final] if final is not None else [])


def _fetch_record(inputs: dict[str, Any], key: str, archive: ArchiveRecord) -> bool:
    """A cached record names an archive this run would use (not one in a folder since moved)."""
    return any(same_path(archive.path, place) for place in archive_places(inputs["cfg"], inputs["data_dir"]))


def _decode_key(inputs: dict[str, Any]) -> str:
    return dataset_fingerprint(inputs["archive"], inputs["cfg"])


def _decode_valid(inputs: dict[str, Any], key: str) -> bool:
    return not cache_problems(dataset_dir(inputs["archive"], inputs["cfg"], inputs["data_dir"]))


def _decode_record(inputs: dict[str, Any], key: str, dataset: DatasetRecord) -> bool:
    return same_path(dataset.path, dataset_dir(inputs["archive"], inputs["cfg"], inputs["data_dir"]))


@task(
    name="fetch-archive",
    # how often and how long: retry_options(cfg); a checksum mismatch or a 404 would fail again
    retry_condition_fn=retry_only_on(TransientDownloadError),
    cache_policy=VerifiedCache(key_fn=_fetch_key, valid_fn=_fetch_valid, record_fn=_fetch_record),
    persist_result=True,
)
def fetch_archive(cfg: DatasetConfig, data_dir: str) -> ArchiveRecord:
    """Download (or find) and verify the archive; retried with backoff on network errors."""
    return fetching.fetch(cfg, data_dir)


@task(
    name="follow-checksum",
    retry_condition_fn=retry_only_on(TransientDownloadError),  # how often and how long: retry_options(cfg)
    cache_policy=NO_CACHE,  # the point is to read the published file at every run
)
def follow_checksum(cfg: DatasetConfig) -> DatasetConfig:
    """``dataset.sha256_url``: read the published checksum; the config pinned to it (see published)."""
    return published.follow(cfg)


@task(
    name="decode-dataset",
    cache_policy=VerifiedCache(key_fn=_decode_key, valid_fn=_decode_valid, record_fn=_decode_record),
    persist_result=True,
)
def decode_dataset(archive: ArchiveRecord, cfg: DatasetConfig, data_dir: str) -> DatasetRecord:
    """Decode the archive into the verified, memory-mappable ``.npy`` cache (once)."""
    return decode_and_cache(archive, cfg, data_dir)
