"""The model a pipeline serves now, kept current while the service runs (hot swap).

``LiveModel.check()`` (called every ``poll`` seconds by its thread) looks at the pipeline's
registry.json: its stat (mtime, size, inode: the store replaces the file atomically, so a new
champion is a new inode) and then the champion it names. When that is a run other than the one
served, the new run is resolved, its model.tflite and classes.json checked against the sha256 in
its metadata.json and loaded (``tasks.predict.engine.Scorer``, a warm-up batch included) beside
the old one, and only then does ``current`` change: one reference assignment, atomic under the
GIL. A request holds the model it started with until it is answered, so none fails or is
answered by two models; the old model is freed when its last request is done.

A champion that cannot be loaded (files altered, run missing) leaves the previous model serving
and is retried every ``retry`` seconds; the error is kept for the status route and the log.
Pinned runs (``/versions/RUN_ID``) are loaded on first use, verified the same way, and the last
``pinned_max`` are kept.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core import runs
from tasks.core.errors import CifarError
from tasks.predict.resolve import CHAMPION, ModelRef, resolve_model

log = logging.getLogger("cifar.endpoint")


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class LiveModel:
    """One pipeline's served champion (``current``), swapped when the registry names another."""

    def __init__(self, artifacts_dir: str | os.PathLike, pipeline: str, load: Callable[[ModelRef], Any],
                 poll: float = 1.0, retry: float = 10.0, pinned_max: int = 4,
                 on_swap: Callable[[str, Any, Any], None] | None = None):
        self.artifacts_dir, self.pipeline, self.load = Path(artifacts_dir), pipeline, load
        self.poll, self.retry, self.pinned_max, self.on_swap = poll, retry, pinned_max, on_swap
        self.current: Any = None  # the loaded model (``.ref`` is its ModelRef); None until one verifies
        self.error: str | None = None  # why the champion is not (or no longer) what is served
        self.loading = False
        self._seen: tuple[int, int, int] | None = None
        self._failed_at = 0.0
        self._pinned: OrderedDict[str, Any] = OrderedDict()
        self._pin_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def registry(self) -> Path:
        return runs.registry_path(runs.pipeline_dir(self.artifacts_dir, self.pipeline))

    @property
    def version(self) -> str | None:
        return None if self.current is None else self.current.ref.run_id

    # ------------------------------------------------------------------ the champion
    def check(self) -> bool:
        """Load and switch to the registry's champion if it changed; True when it switched."""
        stat = _stat(self.registry)
        retry_due = self.error is not None and time.monotonic() - self._failed_at >= self.retry
        if stat == self._seen and not retry_due:
            return False
        self._seen = stat
        champion = runs.champion_id(runs.pipeline_dir(self.artifacts_dir, self.pipeline)) if stat else None
        if champion is None:
            if self.current is None:
                self.error = f"pipeline {self.pipeline!r} has no champion yet ({self.registry})"
            return False
        if self.current is not None and champion == self.current.ref.run_id:
            self.error = None
            return False
        self.loading = True
        started = time.perf_counter()
        try:
            model = self.load(resolve_model(self.artifacts_dir, self.pipeline, CHAMPION))
        except CifarError as exc:
            self.error, self._failed_at = str(exc), time.monotonic()
            serving = f"still serving {self.version}" if self.current is not None else "nothing served yet"
            log.error("%s: champion %s not loaded (%s): %s", self.pipeline, champion, serving, exc)
            return False
        finally:
            self.loading = False
        old, self.current, self.error = self.current, model, None  # the swap: one reference
        log.info("%s: now serving run %s%s (loaded and verified in %.0f ms)", self.pipeline, model.ref.run_id,
                 f", was {old.ref.run_id}" if old is not None else "", (time.perf_counter() - started) * 1000)
        if self.on_swap is not None:
            self.on_swap(self.pipeline, old, model)
        return True

    # ------------------------------------------------------------------ pinned runs
    def pinned(self, run_id: str) -> Any:
        """The model of run ``run_id`` (the current champion's when it is that run): loaded and
        verified on first use; NoModelError for an unknown run, ModelFileError for altered files."""
        current = self.current
        if current is not None and current.ref.run_id == run_id:
            return current
        with self._pin_lock:
            model = self._pinned.get(run_id)
            if model is None:
                model = self.load(resolve_model(self.artifacts_dir, self.pipeline, run_id))
                self._pinned[run_id] = model
                while len(self._pinned) > self.pinned_max:
                    self._pinned.popitem(last=False)
            self._pinned.move_to_end(run_id)
            return model

    # ------------------------------------------------------------------ the polling thread
    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad poll
                log.exception("%s: checking %s failed; trying again", self.pipeline, self.registry)
            self._stop.wait(self.poll)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name=f"cifar-watch-{self.pipeline}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
