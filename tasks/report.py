"""Stage 5: the HTML report and the index of runs (issue: report)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportConfig:
    """``report:`` in pipelines.yaml."""

    sample_images: int = 40  # test images shown with true/predicted labels
    confident_mistakes: int = 12

    def problems(self) -> list[tuple[str, str]]:
        return [(k, f"must be >= 0, got {getattr(self, k)}")
                for k in ("sample_images", "confident_mistakes") if getattr(self, k) < 0]
