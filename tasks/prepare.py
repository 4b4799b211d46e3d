"""Stage 2: scaling, one-hot encoding and the pandera data contract (issue: validation)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrepareConfig:
    """``prepare:`` in pipelines.yaml."""

    standardize: bool = False  # per-channel (x - mean) / std after scaling to [0, 1]
    balance_tolerance: float = 0.1  # max relative deviation of a class count from the mean

    def problems(self) -> list[tuple[str, str]]:
        if not 0 <= self.balance_tolerance <= 1:
            return [("balance_tolerance", f"must be within [0, 1], got {self.balance_tolerance}")]
        return []
