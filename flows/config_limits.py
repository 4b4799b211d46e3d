"""What `cifar check` refuses because it would only fail later: pipeline names that are not
portable file names (a run folder is named after its pipeline: 300 characters ended a save in
ENAMETOOLONG, ``-rf`` read as an option), and values whose type is right but whose size is not
sane (``epochs: 1e23``, ``batch_size: 100000000``).

Each stage's ``problems()`` keeps its lower bounds (``epochs`` at least 1, ...); the upper bounds
are kept here in one table rather than in the stage configs, whose code is part of the training
cache key: adding a check must not retrain anybody's models. A value above its bound is reported
with the range, under its key path, with the other problems.
"""

from __future__ import annotations

import re
from typing import Any

PIPELINE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_RULE = ("a pipeline name is a portable file name: a letter or digit, then at most 63 letters, "
             "digits, '.', '_' or '-'")

# dotted key inside a pipeline -> (lowest, highest) sane value
RANGES: dict[str, tuple[float, float]] = {
    "training.epochs": (1, 100_000),
    "training.batch_size": (1, 65_536),
    "training.recipe.whiten_images": (1, 10_000_000),
    "training.recipe.whiten_bias_epochs": (0, 100_000),
    "training.recipe.lookahead_every": (1, 1_000_000),
    "training.recipe.translate": (0, 64),
    "dataset.limit_train": (1, 100_000_000),
    "dataset.limit_test": (1, 100_000_000),
    "dataset.max_extract_mb": (1, 16 * 2**20),  # 16 TiB
    "dataset.retries": (0, 100),
    "dataset.connect_timeout": (0.001, 86_400),
    "dataset.read_timeout": (0.001, 86_400),
    "keep_last": (1, 1_000_000),
    "prepare.max_train_test_duplicates": (0, 100_000_000),
}
TOP_RANGES: dict[str, tuple[float, float]] = {"train_slots": (1, 1024)}
MAX_TEXT = 10_000  # characters of description, expect


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _number(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) or float(v).is_integer() else f"{v:g}"


def out_of_range(value: Any, lo: float, hi: float) -> str | None:
    """The message for a number above ``hi`` (below ``lo`` the stage's own check speaks)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= hi:
        return None
    return f"must be within [{_number(lo)}, {_number(hi)}], got {_number(value)}; a larger value would only fail later"


def limit_problems(name: str, pipeline: Any, failed: set[str]) -> list[tuple[str, str]]:
    """(dotted key, message) of the pipeline's values past their sane range; keys in ``failed``
    (their type check failed: the default stands in) are left out."""
    out = []
    for dotted, (lo, hi) in RANGES.items():
        if dotted in failed:
            continue
        text = out_of_range(_get(pipeline, dotted), lo, hi)
        if text:
            out.append((dotted, f"pipelines.{name}.{dotted}: {text}"))
    for key in ("description", "expect"):
        text = getattr(pipeline, key, "")
        if key not in failed and isinstance(text, str) and len(text) > MAX_TEXT:
            out.append((key, f"pipelines.{name}.{key}: {len(text):,} characters, at most {MAX_TEXT:,}"))
    return out


def top_limit_problems(built: Any) -> list[str]:
    out = []
    for key, (lo, hi) in TOP_RANGES.items():
        text = out_of_range(getattr(built, key, None), lo, hi)
        if text:
            out.append(f"{key}: {text}")
    return out


def is_pipeline_name(name: str) -> bool:
    return re.fullmatch(PIPELINE_NAME, name) is not None
