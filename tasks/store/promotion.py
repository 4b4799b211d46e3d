"""The champion rule: whether a new run replaces the pipeline's champion, and the reason why,
judged against the registry's champion (its value read again when the promotion metric changed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tasks.core import runs
from tasks.core.logs import get_logger
from tasks.store.config import PromoteConfig

_TOL = 1e-12  # float slack when comparing an improvement with min_delta


def _fmt(v: float) -> str:
    """0.712 -> '0.712', 0.70125 -> '0.7013', 0.5 -> '0.500' (at least 3, at most 4 decimals)."""
    s = f"{v:.4f}"
    return s[:-1] if s.endswith("0") else s


def decide_promotion(
    candidate_value: float,
    champion: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    cfg: PromoteConfig,
) -> dict[str, Any]:
    """Whether a new run with ``candidate_value`` (of ``cfg.metric``) becomes the champion.

    ``champion``: the registry's champion ``{"run_id", "metric", "value", ...}`` or None.
    ``previous``: the pipeline's latest earlier run ``{"run_id", "value"}`` or None (recorded for
    the report only; the rule compares with the champion). The candidate must improve on the
    champion by at least ``min_delta`` in ``cfg.direction`` (a tie never replaces a champion, even
    with min_delta 0); a NaN score is never promoted. Returns the metadata's ``promotion`` dict.
    """
    metric = cfg.metric
    value = float(candidate_value)
    out: dict[str, Any] = {
        "metric": metric,
        "direction": cfg.direction,
        "min_delta": cfg.min_delta,
        "value": value,
        "champion_before": champion.get("run_id") if champion else None,
        "champion_value": champion.get("value") if champion else None,
        "previous_run": previous.get("run_id") if previous else None,
        "previous_value": previous.get("value") if previous else None,
    }
    if math.isnan(value):
        stays = f": champion stays {champion['run_id']}" if champion else ""
        return {**out, "promoted": False, "reason": f"{metric} is NaN (training diverged?): kept as a run, not promoted{stays}"}
    if champion is None:
        return {**out, "promoted": True, "reason": "first run of this pipeline"}
    if champion.get("metric", metric) != metric or champion.get("value") is None:
        return {
            **out,
            "promoted": True,
            "reason": f"champion {champion.get('run_id')} was chosen by {champion.get('metric')} and has "
            f"no {metric} to compare with; the promotion metric changed, so this run takes over",
        }
    champ = float(champion["value"])
    delta = value - champ if cfg.direction == "max" else champ - value
    better = "higher" if cfg.direction == "max" else "lower"
    if cfg.min_delta > 0:
        promoted = delta >= cfg.min_delta - _TOL
    else:
        promoted = delta > _TOL
    if promoted:
        reason = (
            f"{metric} {_fmt(value)} beats champion {_fmt(champ)} by {_fmt(delta)} "
            f">= min_delta {cfg.min_delta:g} ({better} is better)"
        )
    else:
        need = f"by min_delta {cfg.min_delta:g}" if cfg.min_delta > 0 else "(a tie is not enough)"
        reason = (
            f"{metric} {_fmt(value)} does not beat champion {_fmt(champ)} {need} "
            f"(improvement {_fmt(delta)}, {better} is better): kept as a run, champion stays {champion['run_id']}"
        )
    return {**out, "promoted": bool(promoted), "reason": reason}


def champion_for(pipeline_folder: Path, champion: dict[str, Any] | None, cfg: PromoteConfig) -> dict[str, Any] | None:
    """The registry's champion as decide_promotion needs it: None when its folder is gone; its
    value of ``cfg.metric`` read from its metrics.json when the promotion metric changed."""
    if not champion:
        return None
    run_folder = runs.runs_dir(pipeline_folder) / str(champion.get("run_id"))
    if not (run_folder / runs.METADATA).is_file():
        get_logger().warning("champion %s named in registry.json has no run folder: treating the pipeline as "
                             "having no champion", champion.get("run_id"))
        return None
    if champion.get("metric") != cfg.metric:
        value = runs.metric_of(run_folder, cfg.metric)
        if value is not None:
            return {**champion, "metric": cfg.metric, "value": value}
    return champion


def previous_run(pipeline_folder: Path, metric: str) -> dict[str, Any] | None:
    """The pipeline's newest published run as ``{"run_id", "value"}`` (of ``metric``), or None."""
    earlier = runs.pipeline_runs(pipeline_folder)
    if not earlier:
        return None
    latest = earlier[-1]
    return {"run_id": latest.run_id, "value": runs.metric_of(latest.dir, metric)}
