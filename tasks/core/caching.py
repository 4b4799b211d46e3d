"""How stages cache with Prefect: keys by content, verified against the files behind them,
records kept in the project's data folder, and retries only for faults that can pass."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from tasks.core.logs import get_logger


@dataclasses.dataclass
class VerifiedCache(CachePolicy):
    """Cache by content, and only while the stage's outputs on disk are intact.

    ``key_fn(inputs) -> str`` gives the content key (checksums and settings, never a run id or
    a path string). ``valid_fn(inputs, key) -> bool`` checks the files behind that key. A Prefect
    cache record only proves the task ran once; when the files are gone or altered, this returns
    a cache miss instead: the stale cache record is dropped (when the records live in a local
    ``key_storage`` folder, as ``bind_local`` sets up), or else a never-seen key is returned.
    Either way Prefect runs the task again and it rebuilds the files.
    """

    key_fn: Callable[[dict[str, Any]], str] | None = None
    valid_fn: Callable[[dict[str, Any], str], bool] | None = None

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        assert self.key_fn is not None, "VerifiedCache needs a key_fn"
        key = self.key_fn(inputs)
        if self.valid_fn is None or self.valid_fn(inputs, key):
            return key
        if isinstance(self.key_storage, (str, Path)) and len(str(self.key_storage).split("/")) != 2:
            record = Path(self.key_storage) / key
            if record.exists():
                get_logger().warning(
                    "cache record %s exists but the files behind it are missing or altered: rebuilding",
                    key,
                )
                record.unlink(missing_ok=True)
            return key
        return f"{key}-rebuild-{uuid.uuid4().hex[:12]}"


def local_result_dirs(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Where Prefect keeps results, cache records and cache locks: inside the project's data
    dir, not ~/.prefect, so a fresh PREFECT_HOME (or another server) still finds the caches."""
    root = Path(data_dir) / "prefect"
    return {"results": root / "results", "keys": root / "cache-keys", "locks": root / "locks"}


def bind_local(task, data_dir: str | os.PathLike, **options):
    """The task with its results and cache records in ``<data_dir>/prefect/``, not ~/.prefect
    (what the flow runs, and what the tests run)."""
    dirs = local_result_dirs(data_dir)
    return task.with_options(
        result_storage=dirs["results"],  # a Path: Prefect wraps it in a LocalFileSystem
        cache_policy=task.cache_policy.configure(key_storage=dirs["keys"]),
        **options,
    )


# --------------------------------------------------------------------------- retries
def failure_of(state) -> BaseException | None:
    """The exception a failed task run raised, or None when it cannot be read."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable result is no exception we could judge
        return None
    return exc if isinstance(exc, BaseException) else None


def retry_only_on(*kinds: type[BaseException]) -> Callable[..., bool]:
    """A ``retry_condition_fn``: retry when the failure is one of ``kinds``, never otherwise."""
    def condition(task, task_run, state) -> bool:
        return isinstance(failure_of(state), kinds)
    return condition


def retry_unless(*kinds: type[BaseException]) -> Callable[..., bool]:
    """A ``retry_condition_fn``: retry any failure except ``kinds`` (faults that would repeat)."""
    def condition(task, task_run, state) -> bool:
        exc = failure_of(state)
        return exc is not None and not isinstance(exc, kinds)
    return condition
