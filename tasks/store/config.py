"""``promote:`` in pipelines.yaml: the rule that decides when a new run replaces the champion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
