"""What the store stage is told: ``promote:`` in pipelines.yaml (the rule that decides when a
new run replaces the champion), and the pipeline's settings it reads (``PipelineSettings``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from tasks.core.settings import SETTINGS


@dataclass(frozen=True)
class PromoteConfig:
    """``promote:`` in pipelines.yaml: when a new run replaces the champion."""

    __pydantic_config__ = SETTINGS

    metric: Literal["test_accuracy", "test_loss"] = "test_accuracy"
    direction: Literal["max", "min"] = "max"
    min_delta: float = 0.0

    def problems(self) -> list[tuple[str, str]]:
        if self.min_delta < 0:
            return [("min_delta", f"must be >= 0, got {self.min_delta}")]
        return []


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
