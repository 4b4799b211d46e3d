"""How a stage's settings are checked: every ``*Config`` dataclass carries this pydantic config,
so ``flows/config.py`` validates pipelines.yaml against the very classes the stages consume."""

from __future__ import annotations

from pydantic import ConfigDict

# Unknown keys are errors (a typo never silently falls back to a default), and NaN/inf are
# refused wherever a number is expected. flows/config.py validates in pydantic's strict JSON mode
# (an int field takes no 5.0, "5" or true), so the classes stay plain stdlib dataclasses.
SETTINGS = ConfigDict(extra="forbid", allow_inf_nan=False)
