"""Scoring a stream of input files in batches: each decoded, made into the model's input, scored
``BATCH`` at a time, and yielded in input order as a ``Prediction`` or a ``Failure`` (one bad
file is reported and skipped, never fatal to the others). Memory stays at one batch of inputs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.core.errors import CifarError
from tasks.core.guards_text import escape
from tasks.predict.imaging import decode_photo, to_model_input
from tasks.predict.inputs import Source

BATCH = 256


@dataclass(frozen=True)
class Prediction:
    """One scored image: its top classes with their probabilities, best first."""

    name: str
    top: list[tuple[str, float]]
    index: int
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)  # the model's input

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]


@dataclass(frozen=True)
class Failure:
    """An input that could not be scored, and why (the message names the file)."""

    name: str
    error: str


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable classes of one row, best first (ties: the lower index first)."""
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(classes)))]
    return [(classes[i], float(probs[i])) for i in order]


def _prepare(src: Source, shape: tuple[int, int, int]) -> np.ndarray | Failure:
    """The model's input, or a Failure whose name and message are escaped (``escape``: no
    control character or undecodable byte of a file name reaches a terminal, CSV or page)."""
    if src.error is not None:
        return Failure(escape(src.name), escape(src.error))
    try:
        return to_model_input(decode_photo(src.name, src.data), shape)
    except CifarError as exc:  # the decoder's ImageDecodeError names the file
        return Failure(escape(src.name), escape(str(exc)))


class Progress:
    """A line every ``every`` seconds: images scored so far and the rate (for long inputs)."""

    def __init__(self, emit: Callable[[str], None] | None, every: float = 2.0):
        self.emit, self.every = emit, every
        self.started = self.last = time.perf_counter()
        self.done = 0

    def add(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if self.emit and (now - self.last >= self.every or (final and now - self.started >= self.every)):
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            self.emit(f"scored {self.done:,} images ({rate:,.0f} images/s)")


def _flush(scorer, pending: list, k: int, keep_pixels: bool) -> Iterator[Prediction | Failure]:
    images = [p for _, p in pending if not isinstance(p, Failure)]
    probs = scorer.probabilities(np.stack(images)) if images else None
    row = 0
    for name, prepared in pending:
        if isinstance(prepared, Failure):
            yield prepared
            continue
        p = probs[row]
        row += 1
        yield Prediction(name, top_k(p, scorer.classes, k), int(p.argmax()),
                         prepared if keep_pixels else None)


def predict_sources(scorer, sources: Iterable[Source], k: int = 3, batch: int = BATCH,
                    progress: Callable[[str], None] | None = None,
                    keep_pixels: bool = False) -> Iterator[Prediction | Failure]:
    """Every source scored by ``scorer`` (``tasks.predict.engine.Scorer``), in input order."""
    pending: list[tuple[str, Any]] = []  # names and model inputs only: a file's bytes are dropped
    meter = Progress(progress)  # once decoded (256 raw files held at once: 2 GB of zero-filled PNGs)
    scored = 0
    for src in sources:
        prepared = _prepare(src, scorer.input_shape)
        pending.append((escape(src.name), prepared))
        del src
        scored += not isinstance(prepared, Failure)
        if len(pending) >= batch:
            yield from _flush(scorer, pending, k, keep_pixels)
            meter.add(scored)
            pending, scored = [], 0
    yield from _flush(scorer, pending, k, keep_pixels)
    meter.add(scored, final=True)


def answered_by(model) -> dict[str, Any]:
    """Which model answered (a ``ModelRef``): pipeline, run id and the sha256 of the scored file."""
    return {"pipeline": model.pipeline, "run_id": model.run_id, "model_sha256": model.model_sha256}


def uncertain(item: Prediction, min_prob: float | None) -> bool:
    """The top class's probability is under ``min_prob``: the model is not sure it is any of its
    classes ("none of these"); never with no ``min_prob``."""
    return min_prob is not None and item.probability < min_prob


def as_record(item: Prediction | Failure, model=None, min_prob: float | None = None) -> dict[str, Any]:
    """A JSON record: file, class, probability, top (class + probability each), ``uncertain``
    with ``min_prob``; or file, error. With ``model`` (a ``ModelRef``), every record names the
    pipeline, run and model sha256 that answered."""
    who = answered_by(model) if model is not None else {}
    if isinstance(item, Failure):
        return {"file": item.name, "error": item.error, **who}
    record = {"file": item.name, "class": item.label, "probability": round(item.probability, 6),
              "index": item.index, "top": [{"class": c, "probability": round(p, 6)} for c, p in item.top]}
    if min_prob is not None:
        record["uncertain"] = uncertain(item, min_prob)
    return {**record, **who}


def as_line(item: Prediction, min_prob: float | None = None) -> str:
    """``file  class 0.873  next 0.081  ...``: the top class and probability, then the next K-1;
    ``uncertain (< P)`` at the end when the top probability is under ``min_prob``."""
    parts = [item.name, *(f"{c} {p:.3f}" for c, p in item.top)]
    if uncertain(item, min_prob):
        parts.append(f"uncertain (< {min_prob:g})")
    return "  ".join(parts)
