"""The prepare stage's settings (``prepare:`` in pipelines.yaml); the record it returns,
``ValidationRecord``, is in ``tasks.core.records`` (training and the store read it)."""

from dataclasses import dataclass

from tasks.core.settings import SETTINGS


@dataclass(frozen=True)
class PrepareConfig:
    """``prepare:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    standardize: bool = False  # per-channel (x - mean) / std after scaling to [0, 1]
    balance_tolerance: float = 0.1  # max relative deviation of a class count from the mean
    # None: train/test duplicate images are counted and reported only; a number: more fail.
    max_train_test_duplicates: int | None = None

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not 0 <= self.balance_tolerance <= 1:
            out.append(("balance_tolerance", f"must be within [0, 1], got {self.balance_tolerance}"))
        if self.max_train_test_duplicates is not None and self.max_train_test_duplicates < 0:
            out.append(("max_train_test_duplicates",
                        f"must be >= 0 (or null to only report), got {self.max_train_test_duplicates}"))
        return out
