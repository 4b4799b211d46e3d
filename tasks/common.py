"""Shared plumbing for every stage: errors, hashing, atomic writes, locks, logging, caching.

Nothing here knows about CIFAR-10; each stage module imports what it needs from here and
nothing imports the stage modules back (``flows/`` imports ``tasks/``, never the reverse).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy


# --------------------------------------------------------------------------- errors
class CifarError(Exception):
    """An expected failure with a message meant for a person (bad input, bad download, ...).

    The CLI prints the message without a traceback and exits with ``exit_code``.
    """

    exit_code = 1


class ConfigError(CifarError):
    """pipelines.yaml (or a --set override) is wrong. Carries every problem at once."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "pipelines.yaml"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


# --------------------------------------------------------------------------- hashing
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples to plain JSON types (for metadata and cache keys)."""
    return _jsonable(obj)


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short, stable content hash of JSON-able parts (dataclasses allowed)."""
    blob = json.dumps(_jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def source_version(*paths: str | os.PathLike) -> str:
    """Hash of source files: part of a cache key, so a code change invalidates the cache."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- atomic files
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- locks
@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str = "this step") -> Iterator[None]:
    """An exclusive OS-level lock (flock). The kernel drops it when the holder dies, even by
    kill -9, so a crashed run never blocks the next one. A second caller waits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            get_logger().info("waiting for %s: locked by %s (%s)", what, holder, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- logging
def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow/task run, else the plain ``cifar`` logger."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:  # pragma: no cover - prefect is a hard dependency
        pass
    return logging.getLogger("cifar")


# --------------------------------------------------------------------------- caching
@dataclasses.dataclass
class VerifiedCache(CachePolicy):
    """Cache by content, and only while the stage's outputs on disk are intact.

    ``key_fn(inputs) -> str`` gives the content key (checksums and settings, never a run id or
    a path string). ``valid_fn(inputs, key) -> bool`` checks the files behind that key. A Prefect
    cache record only proves the task ran once; when the files are gone or altered, this returns
    a cache miss instead: the stale cache record is dropped (when the records live in a local
    ``key_storage`` folder, as the flow sets up), or else a never-seen key is returned. Either way
    Prefect runs the task again and it rebuilds the files.
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
