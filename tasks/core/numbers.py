"""The one way the product writes a share of images (accuracy, precision, recall, F1, top-k,
calibration error): percent with two decimals, "25.55%"; a difference of two of them in
percentage points, "+1.20 pp". Reports, the index, Prefect's artifacts, the flow's log and the
CLI all use these, so a number reads the same wherever a person meets it."""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def pct(value: Any, decimals: int = 2) -> str:
    """0.25549 -> '25.55%'; None or NaN -> '—'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value) * 100:.{decimals}f}%"


def pp(delta: Any) -> str:
    """A difference of two shares (fractions) in percentage points: 0.012 -> '+1.20 pp'."""
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return MISSING
    return f"{float(delta) * 100:+.2f} pp"
