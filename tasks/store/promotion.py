"""The champion rule: whether a new run replaces the pipeline's champion, and the reason why,
judged against the registry's champion (its value read again from its verified metrics.json),
never against one that does not verify (``tasks.core.verify``: the best verified run stands in),
never for a run whose training diverged or that does not reach the floor (``promote.min_value``,
by default better than chance), and never by the rule when ``promote.auto`` is false."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from tasks.core import runs
from tasks.core.numbers import pct, pp
from tasks.core.registry import champion_entry
from tasks.store.config import PromoteConfig

_TOL = 1e-12  # float slack when comparing an improvement with min_delta


def _plain(v: float) -> str:
    """0.712 -> '0.712', 0.70125 -> '0.7013', 0.5 -> '0.500' (at least 3, at most 4 decimals)."""
    s = f"{v:.4f}"
    return s[:-1] if s.endswith("0") else s


def _share(metric: str) -> bool:
    return "accuracy" in metric


def _fmt(v: float, metric: str) -> str:
    """A value of ``metric``: a share of images in the one format (``core.numbers.pct``), a loss plain."""
    return pct(v) if _share(metric) else _plain(v)


def _by(delta: float, metric: str) -> str:
    """A difference of two values of ``metric``: percentage points for a share, else plain."""
    return pp(delta).lstrip("+") if _share(metric) else _plain(delta)


def _min_delta(cfg: PromoteConfig) -> str:
    points = f" ({pp(cfg.min_delta).lstrip('+')})" if _share(cfg.metric) else ""
    return f"min_delta {cfg.min_delta:g}{points}"


def decide_promotion(
    candidate_value: float | None,
    champion: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    cfg: PromoteConfig,
    *,
    refused: str | None = None,
    note: str | None = None,
    held: str | None = None,
) -> dict[str, Any]:
    """Whether a new run with ``candidate_value`` (of ``cfg.metric``) becomes the champion.

    ``champion``: the registry's champion ``{"run_id", "metric", "value", ...}`` or None.
    ``previous``: the pipeline's latest earlier run ``{"run_id", "value"}`` or None (recorded for
    the report only; the rule compares with the champion). The candidate must improve on the
    champion by at least ``min_delta`` in ``cfg.direction`` (a tie never replaces a champion, even
    with min_delta 0); a NaN score is never promoted, nor a run ``refused`` names a reason for
    (``training_problem``: its training diverged). ``note`` says why ``champion`` is not the
    registry's own (see ``effective_champion``) and leads the reason. ``held``: the rule may not
    promote at all (``promote.auto: false``): the reason says so. Returns the metadata's
    ``promotion`` dict.
    """
    metric = cfg.metric
    value = float("nan") if candidate_value is None else float(candidate_value)
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
    lead = f"{note}; " if note else ""
    stays = f": champion stays {champion['run_id']}" if champion else ""
    if refused:
        return {**out, "promoted": False, "reason": f"{lead}{refused}: kept as a run, never promoted{stays}"}
    if math.isnan(value):
        return {**out, "promoted": False, "reason": f"{lead}{metric} is NaN (training diverged?): kept as a run, not promoted{stays}"}
    if held:
        return {**out, "promoted": False, "reason": f"{lead}{held}{stays}"}
    if champion is None:
        return {**out, "promoted": True,
                "reason": f"{note}: this run takes over" if note else "first run of this pipeline"}
    if champion.get("metric", metric) != metric or champion.get("value") is None:
        return {
            **out,
            "promoted": True,
            "reason": f"champion {champion.get('run_id')} was chosen by {champion.get('metric')} and has "
            f"no {metric} to compare with; the promotion metric changed, so this run takes over",
        }
    champ = float(champion["value"])
    delta = value - champ if cfg.direction == "max" else champ - value
    rescored = champion.get("rescored") or {}
    if rescored:  # both numbers: on this run's test images, and the one it was promoted with
        out["champion_rescored"] = rescored
    on = (f" on the new test split ({rescored['images']:,} images; {_fmt(float(rescored['recorded']), metric)} "
          "on its own)") if rescored.get("recorded") is not None else ""
    better = "higher" if cfg.direction == "max" else "lower"
    if cfg.min_delta > 0:
        promoted = delta >= cfg.min_delta - _TOL
    else:
        promoted = delta > _TOL
    if promoted:
        reason = (
            f"{metric} {_fmt(value, metric)} beats champion {_fmt(champ, metric)}{on} by {_by(delta, metric)} "
            f">= {_min_delta(cfg)} ({better} is better)"
        )
    else:
        need = f"by {_min_delta(cfg)}" if cfg.min_delta > 0 else "(a tie is not enough)"
        reason = (
            f"{metric} {_fmt(value, metric)} does not beat champion {_fmt(champ, metric)}{on} {need} "
            f"(improvement {_by(delta, metric)}, {better} is better): kept as a run, champion stays {champion['run_id']}"
        )
    return {**out, "promoted": bool(promoted), "reason": lead + reason}


def training_problem(history: dict[str, Any]) -> str | None:
    """Why a run is never promoted, whatever it scores: a loss that was not a finite number in
    an epoch (history.json holds null there; TerminateOnNaN stopped the training). None if fine."""
    for row in history.get("epochs") or []:
        for key in ("loss", "val_loss"):
            value = row.get(key, 0.0)
            if value is None or not math.isfinite(float(value)):
                return (f"training diverged: {key} was not a finite number in epoch {row.get('epoch')} "
                        "(lower training.optimizer.learning_rate)")
    return None


def chance(metric: str, n_classes: int) -> float:
    """What guessing scores: 1/classes for accuracy, ln(classes) for the cross-entropy loss."""
    n = max(int(n_classes), 2)
    return 1.0 / n if metric.endswith("accuracy") else math.log(n)


def floor_problem(value: float | None, cfg: PromoteConfig, n_classes: int) -> str | None:
    """Why a run scoring ``value`` may not be promoted for its score alone (``promote.min_value``,
    at least it; by default strictly better than chance), or None. NaN is judged elsewhere."""
    if value is None or math.isnan(float(value)):
        return None
    value, max_ = float(value), cfg.direction == "max"
    if cfg.min_value is not None:
        ok = value >= cfg.min_value - _TOL if max_ else value <= cfg.min_value + _TOL
        floor = f"promote.min_value {cfg.min_value:g}"
    else:
        level = chance(cfg.metric, n_classes)
        ok = value > level + _TOL if max_ else value < level - _TOL
        floor = (f"chance ({_fmt(level, cfg.metric)} for {n_classes} classes; set promote.min_value for another floor)")
    if ok:
        return None
    word = "below" if max_ else "above"
    return (f"{cfg.metric} {_fmt(value, cfg.metric)} does not reach the floor: it is {word} or at {floor}" if
            cfg.min_value is None else f"{cfg.metric} {_fmt(value, cfg.metric)} is {word} the floor {floor}")


def held_by_hand(cfg: PromoteConfig, pipeline: str, run_id: str) -> str | None:
    """The reason a run is not promoted when ``promote.auto`` is false, or None."""
    if cfg.auto:
        return None
    return (f"promote.auto is false: kept as a run, not promoted by the rule; promote it by hand with "
            f"`cifar promote {pipeline} {run_id}`")


def _value(run: runs.PublishedRun, cfg: PromoteConfig) -> float | None:
    """The run's finite value of the promotion metric from its verified metrics.json, or None."""
    if not run.value_verified:
        return None
    value = run.metrics.get(cfg.metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _sound(run: runs.PublishedRun) -> bool:
    """A run whose test loss is a finite number: not one whose training diverged (its accuracy,
    argmax of NaN probabilities, is only the first class's share), which may never stand in."""
    loss = run.metrics.get("test_loss")
    return isinstance(loss, (int, float)) and math.isfinite(loss)


def _as_champion(run: runs.PublishedRun, cfg: PromoteConfig, reason: str, by: str) -> dict[str, Any]:
    return champion_entry(run.run_id, cfg.metric, _value(run, cfg), reason, by)


def _promotable(run: runs.PublishedRun, cfg: PromoteConfig) -> bool:
    """A run that may stand in for a champion: it verifies, its training did not diverge, and it
    reaches the floor (for the number of classes it was scored on)."""
    value = _value(run, cfg)
    classes = len(run.metrics.get("classes") or (run.metadata.get("dataset") or {}).get("classes") or [])
    return (not run.damage and value is not None and _sound(run)
            and floor_problem(value, cfg, classes) is None)


def effective_champion(pipeline_folder: Path, registry: dict[str, Any], registry_problem: str | None,
                       cfg: PromoteConfig) -> tuple[dict[str, Any] | None, str | None]:
    """The champion a new run is judged against, and a note when that is not the registry's
    own (the registry is then rewritten to name it).

    The registry's champion, when it is a published run that verifies (``tasks.core.verify``),
    its value of ``cfg.metric`` always read again from its verified metrics.json (never the
    registry's copy). A damaged registry.json is rebuilt: its champion was the newest verified
    run whose metadata says it was promoted. A champion whose run folder is gone or that does
    not verify is never compared with: the best verified run by ``cfg.metric`` (never a diverged
    one, never one under the floor) stands in, or none (the new run then takes over, saying why).
    """
    published = runs.pipeline_runs(pipeline_folder)
    if registry_problem:
        promoted = [r for r in published if (r.metadata.get("promotion") or {}).get("promoted") and not r.damage]
        champion = (_as_champion(promoted[-1], cfg, "rebuilt from the runs' metadata", "rebuild")
                    if promoted else None)
        note = "registry.json was damaged and is rebuilt from the runs that verify"
        if champion is None:
            return None, note + " (none of them was ever promoted)"
    else:
        champion, note = registry.get("champion"), None
        if not champion:
            return None, None
    by_id = {r.run_id: r for r in published}
    run = by_id.get(str(champion.get("run_id")))
    broken = "its run folder is gone or unreadable" if run is None else run.damaged
    if broken is None:
        value = _value(run, cfg)
        return {**champion, "metric": cfg.metric, "value": value}, note
    note = f"{note + '; ' if note else ''}champion {champion.get('run_id')} is damaged ({broken})"
    sign = 1 if cfg.direction == "max" else -1
    scored = sorted((r for r in published if r is not run and _promotable(r, cfg)),
                    key=lambda r: sign * _value(r, cfg), reverse=True)
    if scored:
        other = scored[0]
        note += f", so it is compared with the best run that verifies, {other.run_id}, instead"
        return _as_champion(other, cfg, f"stands in for damaged champion {champion.get('run_id')}", "stand-in"), note
    return None, note + " and no run that verifies is left to compare with"


def test_counterpart(metric: str) -> str:
    """The test split's metric of the same kind: validation_accuracy -> test_accuracy."""
    return metric.replace("validation_", "test_", 1)


def on_validation_split(champion: dict[str, Any], pipeline_folder: Path, split: str,
                        cfg: PromoteConfig) -> tuple[dict[str, Any], PromoteConfig, str | None]:
    """(champion, rule, note): how the champion is compared with a run validated on ``split``.

    With a validation metric the two runs must have been validated on the same images: then the
    champion and the rule are returned as they are. A champion validated on other images (another
    ``dataset.validation`` or seed, other data, or a run from before validation splits) cannot be
    scored on this run's held-out images -- it may have trained on them -- so this once both are
    compared by the test split's metric of the same kind (``test_counterpart``), and the note says
    so. A test metric is returned unchanged."""
    if not cfg.metric.startswith("validation_"):
        return champion, cfg, None
    by_id = {r.run_id: r for r in runs.pipeline_runs(pipeline_folder)}
    run = by_id.get(str(champion.get("run_id")))
    if run is None or run.damage:
        return champion, cfg, None
    theirs = runs.validation_record(run.metrics)
    if theirs.get("split") == split:
        return champion, cfg, None
    rule = replace(cfg, metric=test_counterpart(cfg.metric))
    was = theirs.get("described") or "before validation splits existed"
    note = (f"champion {run.run_id} was validated on other images ({was}), so both are compared by "
            f"{rule.metric} this once")
    return {**champion, "metric": rule.metric, "value": _value(run, rule)}, rule, note


def previous_run(pipeline_folder: Path, metric: str) -> dict[str, Any] | None:
    """The pipeline's newest published run as ``{"run_id", "value"}`` (of ``metric``), or None."""
    earlier = runs.pipeline_runs(pipeline_folder)
    if not earlier:
        return None
    latest = earlier[-1]
    return {"run_id": latest.run_id, "value": runs.metric_of(latest.dir, metric)}


def on_test_split(champion: dict[str, Any], pipeline_folder: Path, data, test_split: str,
                  cfg: PromoteConfig) -> dict[str, Any]:
    """The champion, judged on the challenger's test images: as it is when it was scored on the
    same test split; else re-scored on ``data``'s (its SavedModel, no retraining, with the views
    it was scored with) and returned with ``value`` replaced and ``rescored`` saying how
    (``recorded``: the value it was promoted with). A champion trained on other classes cannot
    be scored on these images: returned as is, with ``rescored.skipped`` saying why."""
    from tasks.store.evaluation import savedmodel_metrics, tta_of

    by_id = {r.run_id: r for r in runs.pipeline_runs(pipeline_folder)}
    run = by_id.get(str(champion.get("run_id")))
    if run is None or run.damage:  # effective_champion never hands on one; never load it unchecked
        return champion
    dataset = run.metadata.get("dataset") or {}
    if dataset.get("test_split") == test_split:
        return champion
    classes = list(data.classes)
    if list(dataset.get("classes") or []) != classes:
        why = (f"champion {run.run_id} was trained on classes {dataset.get('classes')}, this run on "
               f"{classes}: compared by its recorded {cfg.metric}")
        return {**champion, "rescored": {"skipped": why}}
    if not (run.dir / "savedmodel" / "saved_model.pb").is_file():
        return {**champion, "rescored": {"skipped": f"champion {run.run_id} has no SavedModel to re-score: "
                                                    f"compared by its recorded {cfg.metric}"}}
    if not (run.metadata.get("files") or {}).get("savedmodel"):
        return {**champion, "rescored": {"skipped": f"champion {run.run_id}'s metadata.json records no sha256 "
                                                    f"for its SavedModel, so it is not loaded: compared by its "
                                                    f"recorded {cfg.metric}"}}
    metrics = savedmodel_metrics(run.dir / "savedmodel", data.x_test, data.y_test, classes,
                                 tta_of(run.metadata.get("training") or {}))
    value = metrics.get(cfg.metric)
    return {**champion, "value": value, "rescored": {
        "recorded": champion.get("value"), "value": value, "metric": cfg.metric,
        "images": int(metrics["test_size"]), "test_split": test_split,
        "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]}}
