"""What the store stage is told: ``promote:`` in pipelines.yaml (the rule that decides when a
new run replaces the champion), and the pipeline's settings it reads (``PipelineSettings``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from tasks.core.holdout import Holdout
from tasks.core.settings import SETTINGS


@dataclass(frozen=True)
class PromoteConfig:
    """``promote:`` in pipelines.yaml: when a new run replaces the champion."""

    __pydantic_config__ = SETTINGS

    # validation_*: judged on the validation split (dataset.validation), so that the test split
    # stays unseen by every decision; test_*: judged on the test split (selection on the test set).
    metric: Literal["validation_accuracy", "validation_loss", "test_accuracy", "test_loss"] = "validation_accuracy"
    direction: Literal["max", "min"] = "max"
    min_delta: float = 0.0
    # The floor: a run must reach it (>= for max, <= for min) to be promoted, the first run
    # included. None: better than chance, 1/classes for accuracy and ln(classes) for the loss.
    min_value: float | None = None
    # false: the rule never promotes; only `cifar promote PIPELINE RUN_ID` names a champion.
    auto: bool = True

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.min_delta < 0:
            out.append(("min_delta", f"must be >= 0, got {self.min_delta}"))
        what = self.metric.replace("_", " ")
        if self.min_value is not None and self.metric.endswith("accuracy") and not 0 <= self.min_value <= 1:
            out.append(("min_value", f"a {what} is between 0 and 1, got {self.min_value}"))
        if self.min_value is not None and self.metric.endswith("loss") and self.min_value < 0:
            out.append(("min_value", f"a {what} is >= 0, got {self.min_value}"))
        return out


class HoldoutSettings(Protocol):
    """The part of the ``dataset:`` settings the store reads: the validation split."""

    @property
    def holdout(self) -> Holdout: ...


class PipelineSettings(Protocol):
    """The pipeline's settings as the store reads them: ``flows.config.PipelineConfig`` satisfies
    it (the store does not import ``flows``). Its name and rules decide where and how a run is
    saved; the whole object (a dataclass) is what metadata.json records as ``config``."""

    @property
    def name(self) -> str: ...

    @property
    def promote(self) -> PromoteConfig: ...

    @property
    def keep_last(self) -> int | None: ...  # prune older runs that are not the champion

    @property
    def dataset(self) -> "HoldoutSettings": ...  # its validation split: dataset.holdout
