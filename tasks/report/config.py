"""``report:`` in pipelines.yaml: how many test images the report shows, and whether it carries
the course notebook's teaching text."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.settings import SETTINGS


@dataclass(frozen=True)
class ReportConfig:
    """``report:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    sample_images: int = 40  # test images shown with true/predicted labels
    confident_mistakes: int = 12
    teaching: bool = False  # the notebook's worked example of the first convolution's parameters

    def problems(self) -> list[tuple[str, str]]:
        # More than 256 images would not fit one picture (and would cost the report's memory).
        return [(k, f"must be within [0, 256], got {getattr(self, k)}")
                for k in ("sample_images", "confident_mistakes") if not 0 <= getattr(self, k) <= 256]
