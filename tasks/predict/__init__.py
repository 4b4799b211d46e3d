"""Stage 6, using the model: score image files, folders and archives with a run's serving export.

Its modules: ``resolve`` (champion, latest or a run id, via ``tasks.core.runs``) · ``engine``
(the model file checked by sha256, then loaded with LiteRT) · ``inputs`` (files, folders,
archives with the shared member checks) · ``imaging`` (decode, channels, resize) · ``scoring``
(batches, top-k, lines and records) · ``batch`` (predictions.csv, the page) · ``jobs`` (the
content-keyed scoring folder) · ``fetch`` (URL inputs) · ``prefect_tasks`` (the Prefect tasks).

The Prefect tasks ``fetch_input`` and ``score_images`` are in ``tasks.predict.prefect_tasks`` and are
loaded from here on first use: ``cifar predict`` scores without Prefect, and importing it
(~2.5 s) would cost more than predicting ten images.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fetch_input", "score_images"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tasks.predict import prefect_tasks

        return getattr(prefect_tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
