"""The records one stage hands to another: small, frozen, picklable (Prefect keeps them as cached
results), naming files rather than holding data.

    prepare -> train, store    ValidationRecord
    train   -> store           TrainRecord
    store   -> report, flow    RunRecord

``DatasetRecord`` (download -> prepare, train, store) lives in ``tasks.core.datacache``, beside
the cache format it names. A record that only goes back to the flow stays in its stage
(``ArchiveRecord``, ``ReportRecord``). A record class that moves or is renamed leaves cached
results that no longer unpickle: ``tasks.core.caching.anchor_record`` reads each one before
Prefect does, and such a result is a cache miss (the task runs again), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ValidationRecord:
    """What the prepare stage hands on: the dataset it validated and the validation summary
    (``channel_mean``/``channel_std`` among it, which training standardises with)."""

    fingerprint: str  # the dataset's
    summary: dict[str, Any]


@dataclass(frozen=True)
class TrainRecord:
    """What the training stage hands on: the cache key and the committed model folder."""

    key: str
    path: str  # <data_dir>/models/<key>/


@dataclass(frozen=True)
class RunRecord:
    """What the store stage hands on (to the report and the flow's summary)."""

    pipeline: str
    run_id: str
    path: str  # the run folder
    test_accuracy: float
    promoted: bool
    reason: str
    # an earlier run already held this model: nothing new was saved (not part of which run it is)
    reused: bool = field(default=False, compare=False)
