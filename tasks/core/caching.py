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

from tasks.core.files import atomic_write_bytes
from tasks.core.logs import get_logger


@dataclasses.dataclass
class VerifiedCache(CachePolicy):
    """Cache by content, and only while the stage's outputs on disk are intact and in place.

    ``key_fn(inputs) -> str`` gives the content key (checksums and settings, never a run id or
    a path string). ``valid_fn(inputs, key) -> bool`` checks the files behind that key. A Prefect
    cache record only proves the task ran once; when the files are gone or altered, this returns
    a cache miss instead: the stale cache record is dropped (when the records live in a local
    ``key_storage`` folder, as ``bind_local`` sets up), or else a never-seen key is returned.
    Either way Prefect runs the task again and it rebuilds the files.

    Folders move (issue 26): a cache record and the value it holds name absolute paths, those of
    the folders it was written in. With ``result_dir`` (set by ``bind_local``) a record written
    elsewhere is re-anchored in this ``result_dir`` (``anchor_record``): its value's paths are
    moved along with the folder when ``record_fn(inputs, key, value) -> bool`` then accepts it
    (the value names this run's files); else the record is dropped and the task runs again.
    Never Prefect's "outside of the base path" error. A cached result that no longer unpickles
    (a record class that moved) is a cache miss too, never an error (``anchor_record``); this needs
    the records in a local folder, as ``bind_local`` sets up.
    """

    key_fn: Callable[[dict[str, Any]], str] | None = None
    valid_fn: Callable[[dict[str, Any], str], bool] | None = None
    record_fn: Callable[[dict[str, Any], str, Any], bool] | None = None
    result_dir: str | Path | None = None

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        assert self.key_fn is not None, "VerifiedCache needs a key_fn"
        key = self.key_fn(inputs)
        records = self._local_records()
        if self.valid_fn is not None and not self.valid_fn(inputs, key):
            problem = "exists but the files behind it are missing or altered"
        elif records is not None and key is not None and self.result_dir is not None:
            fits = None if self.record_fn is None else (lambda value: self.record_fn(inputs, key, value))
            problem = anchor_record(records / key, Path(self.result_dir), fits)
        else:
            problem = None
        if problem is None:
            return key
        if records is not None:
            record = records / key
            if record.exists():
                get_logger().warning("cache record %s %s: rebuilding", key, problem)
                record.unlink(missing_ok=True)
            return key
        return f"{key}-rebuild-{uuid.uuid4().hex[:12]}"

    def _local_records(self) -> Path | None:
        """The local folder of the cache records, or None (a storage block, or Prefect's own)."""
        storage = self.key_storage
        if isinstance(storage, (str, Path)) and len(str(storage).split("/")) != 2:  # not "block-type/name"
            return Path(storage)
        return None


# --------------------------------------------------------------------------- folders that moved
def moved_roots(written: Path, here: Path) -> tuple[Path, Path]:
    """The folders that moved, from where a result was written and where it is now: their common
    trailing names stripped (``/a/data/prefect/results``, ``/b/data/prefect/results`` ->
    ``/a``, ``/b``), so a project folder moved as a whole carries every path inside it."""
    while written.name and written.name == here.name:
        written, here = written.parent, here.parent
    return written, here


def relocated(value: Any, old_root: Path, new_root: Path) -> Any:
    """A record (a dataclass) with each absolute path under ``old_root`` moved under
    ``new_root``; any other value, or a record with no such path, as it is."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type) or old_root == new_root:
        return value
    changes = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if isinstance(v, str) and os.path.isabs(v) and Path(v).is_relative_to(old_root):
            changes[f.name] = str(new_root / Path(v).relative_to(old_root))
    return dataclasses.replace(value, **changes) if changes else value


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same place (symlinks and ``..`` resolved)."""
    return Path(a).resolve() == Path(b).resolve()


def anchor_record(record: Path, result_dir: Path, fits: Callable[[Any], bool] | None) -> str | None:
    """None when the Prefect cache record at ``record`` can be read from ``result_dir`` (the
    results folder this run uses), else why not (the caller drops it: a cache miss).

    The result is unpickled here, before Prefect reads it: one that no longer loads (its record
    class moved or was renamed, its module is gone, the file is damaged) is such a miss, where
    Prefect's own read would fail the task run.

    A record written in another folder (``data_dir`` moved or copied) names its result by that
    folder's absolute path, which Prefect refuses ("outside of the base path"): it is rewritten
    to name the result in ``result_dir``. ``fits(value)`` (None: any value) says whether the
    cached value names this run's files; a value that does not is tried with its paths moved as
    the folder moved (``moved_roots``), and rewritten so when it then fits."""
    from prefect.results import ResultRecordMetadata

    try:
        raw = record.read_bytes()
    except FileNotFoundError:
        return None  # nothing cached under this key: Prefect runs the task
    except OSError as exc:
        return f"cannot be read ({exc})"
    try:
        meta = ResultRecordMetadata.load_bytes(raw)
    except ValueError as exc:
        return f"is not a Prefect cache record ({exc})"
    if meta.storage_block_id is not None or not meta.storage_key:
        return None  # its result is in a storage block, not a folder: Prefect reads it as it is
    written = Path(meta.storage_key)
    here = result_dir.expanduser().resolve() / written.name
    if not here.is_file():
        return f"names a result {written} that is not in {result_dir}"
    try:  # read it before Prefect does: a result that no longer unpickles is a miss, not an error
        value = meta.serializer.loads(here.read_bytes())
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything; the task rebuilds it
        return f"has a result {here} that cannot be read ({type(exc).__name__}: {exc})"
    if fits is not None and not fits(value):
        moved = relocated(value, *moved_roots(written.parent, here.parent))
        if moved is value or not fits(moved):
            return "names files outside this run's folders (moved or copied since it was written)"
        atomic_write_bytes(here, meta.serializer.dumps(moved))
    if written != here:
        meta.storage_key = str(here)
        atomic_write_bytes(record, meta.dump_bytes())
        get_logger().info("cache record %s re-anchored in %s (written in %s)", record.name, result_dir,
                          written.parent)
    return None


def local_result_dirs(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Where Prefect keeps results, cache records and cache locks: inside the project's data
    dir, not ~/.prefect, so a fresh PREFECT_HOME (or another server) still finds the caches."""
    root = Path(data_dir) / "prefect"
    return {"results": root / "results", "keys": root / "cache-keys", "locks": root / "locks"}


def bind_local(task, data_dir: str | os.PathLike, **options):
    """The task with its results and cache records in ``<data_dir>/prefect/``, not ~/.prefect
    (what the flow runs, and what the tests run). A ``VerifiedCache`` learns the results folder,
    so a record written before the folder moved is re-anchored or dropped, never an error."""
    dirs = local_result_dirs(data_dir)
    policy = task.cache_policy.configure(key_storage=dirs["keys"])
    if isinstance(policy, VerifiedCache):
        policy = dataclasses.replace(policy, result_dir=dirs["results"])
    return task.with_options(
        result_storage=dirs["results"],  # a Path: Prefect wraps it in a LocalFileSystem
        cache_policy=policy,
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
