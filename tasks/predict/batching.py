"""Server-side batching, as TF Serving's ``batch_timeout_micros`` / ``max_batch_size``: requests
that arrive together are scored as one batch, by one thread that owns every model's interpreter.

- A request's images are queued with the model chosen for it (``submit``); the scoring thread takes
  the first waiting request, then gathers others for at most ``max_wait`` seconds, or until
  ``max_batch`` images are gathered.
- It waits only while more work is on its way: ``arriving`` counts requests that have started
  (their body is being read or parsed) but are not queued yet. A lone client never waits.
- A batch may hold requests for different models (a champion and a pinned run, or the two sides
  of a hot swap): each model scores its own requests, in one call per model. Every request is
  scored whole by the model it was queued with, and its result names that model.
- One log line per batch (``log``), and ``on_batch(images, requests, seconds)`` for metrics.
- A request queued from an event loop (``submit(..., loop=loop)``) gets an asyncio future of that
  loop: each batch's results reach the loop in one ``call_soon_threadsafe``, not one per request
  (``asyncio.wrap_future`` costs a thread-safe call and two futures' callbacks per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("cifar.endpoint")


class _Ticket:
    """A request on its way to a ``Batcher`` (a context manager: see ``Batcher.arriving``)."""

    __slots__ = ("batcher", "submitted")

    def __init__(self, batcher: Batcher):
        self.batcher, self.submitted = batcher, False

    def __enter__(self) -> _Ticket:
        with self.batcher._lock:
            self.batcher._arriving += 1
        return self

    def __exit__(self, *_exc: object) -> None:
        if not self.submitted:  # set by ``submit``, on the caller's thread
            with self.batcher._lock:
                self.batcher._arriving -= 1


@dataclass
class _Job:
    model: Any  # tasks.predict.engine.Scorer, or anything with probabilities(x)
    x: np.ndarray
    future: Future | asyncio.Future
    loop: asyncio.AbstractEventLoop | None = None  # the loop of an asyncio future

    def claim(self) -> bool:
        """False when the caller no longer waits (its future was cancelled): not scored."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()
        return not self.future.cancelled()


def _settle(outcomes: list[tuple[asyncio.Future, bool, Any]]) -> None:
    """On the event loop: each future's result (``ok``) or exception."""
    for future, ok, value in outcomes:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class Batcher:
    """Scores queued requests in batches on its own thread; ``submit`` returns a Future of
    ``(model, probabilities)`` (an asyncio one with ``loop``)."""

    def __init__(self, max_batch: int = 256, max_wait: float = 0.002,
                 on_batch: Callable[[int, int, float], None] | None = None):
        self.max_batch, self.max_wait, self.on_batch = max(1, max_batch), max(0.0, max_wait), on_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._arriving = 0
        self._lock = threading.Lock()
        self._carry: _Job | None = None
        self._thread = threading.Thread(target=self._run, name="cifar-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers
    def arriving(self) -> _Ticket:
        """Say a request is on its way (``with batcher.arriving() as ticket:``, while its body is
        read and parsed): the batcher waits for it, up to ``max_wait``, rather than scoring
        without it. Pass the ticket to ``submit``, which ends the wait for it as it queues the
        request, in one step. (A class, not a generator: it is on every request's path.)"""
        return _Ticket(self)

    def submit(self, model: Any, x: np.ndarray, ticket: _Ticket | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> Future | asyncio.Future:
        future = Future() if loop is None else loop.create_future()
        with self._lock:
            if ticket is not None and not ticket.submitted:
                ticket.submitted = True
                self._arriving -= 1
            self._queue.put(_Job(model, x, future, loop))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ the scoring thread
    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, n = [first], len(first.x)
        deadline = time.perf_counter() + self.max_wait
        while n < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0 or not self._arriving:
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is None:
                return jobs, True
            if n + len(job.x) > self.max_batch:
                self._carry = job  # the next batch starts with it
                break
            jobs.append(job)
            n += len(job.x)
        return jobs, False

    def _score(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        jobs = [j for j in jobs if j.claim()]  # drop those whose client left
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(id(job.model), []).append(job)
        outcomes: list[tuple[_Job, bool, Any]] = []
        for group in groups.values():
            model = group[0].model
            try:
                x = group[0].x if len(group) == 1 else np.concatenate([j.x for j in group])
                probs = model.probabilities(x)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request, which answers 500
                outcomes += [(job, False, exc) for job in group]
                continue
            row = 0
            for job in group:
                outcomes.append((job, True, (model, probs[row:row + len(job.x)])))
                row += len(job.x)
        self._deliver(outcomes)
        seconds = time.perf_counter() - started
        images = sum(len(j.x) for j in jobs)
        versions = ",".join(sorted({getattr(getattr(g[0].model, "ref", None), "run_id", "?") for g in groups.values()}))
        log.info("batch: %d image(s) from %d request(s) scored in %.1f ms by %s",
                 images, len(jobs), seconds * 1000, versions)
        if self.on_batch is not None:
            self.on_batch(images, len(jobs), seconds)

    @staticmethod
    def _deliver(outcomes: list[tuple[_Job, bool, Any]]) -> None:
        """Each job's result to its future: thread futures directly, a loop's futures in one call."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, Any]]] = {}
        for job, ok, value in outcomes:
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append((job.future, ok, value))
            elif ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits these
                loop.call_soon_threadsafe(_settle, items)

    def _run(self) -> None:
        while True:
            first, self._carry = (self._carry, None) if self._carry else (self._queue.get(), None)
            if first is None:
                return
            jobs, stop = self._gather(first)
            self._score(jobs)
            if stop:
                return
