"""``cifar sweep``'s pure half: which child runs a sweep makes, and what their results add up to.

No Prefect, no Keras: the command line checks a sweep with these before anything starts, the
flow (``flows/sweep.py``) runs what they plan and aggregates with them, tests call them directly.

A *point* is a set of overrides (``{"training.epochs": 2}``); the sweep runs every point once per
seed. ``--grid KEY=V1,V2`` (repeatable) spans the cartesian product of the keys' values;
``--ablate KEY=V`` (repeatable) adds, beside the base point, one point per flag with only that key
changed. Values are typed as ``--set`` types them (``flows.config.parse_set``) and every point is
checked against the pipelines file (``load_settings``) before a child runs.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from flows.config import load_settings, parse_set
from tasks.core import runs
from tasks.core.errors import ConfigError
from tasks.core.numbers import MISSING, pct

MAX_CHILDREN = 256  # a typo in --seeds or a long grid must not queue thousands of trainings
SEED_KEY = "training.seed"
NO_AUTO_PROMOTION = {"promote.auto": False}  # a sweep's child is judged by the sweep, never by the rule


class SweepError(ConfigError):
    """The sweep as asked cannot run (bad grid, too many children, nothing to promote by)."""


# --------------------------------------------------------------------------- values
def split_values(raw: str) -> list[str]:
    """``"1,2,[8,16],'a,b'"`` -> ``["1", "2", "[8,16]", "'a,b'"]``: commas split values only
    outside brackets, braces and quotes, so a list or a quoted string is one value."""
    out, cur, depth, quote = [], [], 0, ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def _key_values(item: str, flag: str) -> tuple[str, list[str]]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise SweepError([f"{flag} {item!r}: expected KEY=VALUE" + (",VALUE..." if flag == "--grid" else "")
                          + f", e.g. {flag} training.epochs=1" + (",2" if flag == "--grid" else "")],
                         "command line")
    values = split_values(raw)
    if any(not v for v in values):
        raise SweepError([f"{flag} {item!r}: an empty value (two commas, or one at an end)"], "command line")
    return key.strip(), values


def parse_grid(items: list[str] | None) -> dict[str, list[Any]]:
    """``["training.epochs=1,2", "training.batch_size=16"]`` -> ``{key: [typed values]}``,
    typed as ``--set`` types them. A key given twice, or a value twice, is refused."""
    grid: dict[str, list[Any]] = {}
    problems = []
    for item in items or []:
        key, raws = _key_values(item, "--grid")
        if key in grid:
            problems.append(f"--grid {key}: given twice; list all its values in one flag ({key}=V1,V2)")
            continue
        values = [parse_set([f"{key}={raw}"])[key] for raw in raws]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) < len(values):
            problems.append(f"--grid {item!r}: a value is listed twice")
        grid[key] = values
    if problems:
        raise SweepError(problems, "command line")
    return grid


def parse_ablations(items: list[str] | None) -> list[dict[str, Any]]:
    """``["training.recipe.lookahead=false"]`` -> ``[{"training.recipe.lookahead": False}]``."""
    out = []
    for item in items or []:
        key, raws = _key_values(item, "--ablate")
        if len(raws) != 1:
            raise SweepError([f"--ablate {item!r}: one value per flag (an ablation changes one key to one "
                              "value); repeat --ablate for more, or use --grid"], "command line")
        out.append(parse_set([f"{key}={raws[0]}"]))
    return out


def parse_seeds(seeds: int | None, seed_list: str | None, base_seed: int) -> list[int]:
    """``--seeds N``: base_seed, +1, ... (N of them); ``--seed 42,43``: those; neither: base_seed."""
    if seeds is not None and seed_list is not None:
        raise SweepError(["give --seeds N or --seed S1,S2, not both"], "command line")
    if seed_list is not None:
        out = []
        for raw in split_values(seed_list):
            try:
                out.append(int(raw))
            except ValueError:
                raise SweepError([f"--seed {seed_list!r}: {raw!r} is not an integer seed"], "command line") from None
        if len(set(out)) < len(out):
            raise SweepError([f"--seed {seed_list!r}: a seed is listed twice"], "command line")
        return out
    if seeds is not None:
        if seeds < 1:
            raise SweepError([f"--seeds {seeds}: at least 1"], "command line")
        return [base_seed + i for i in range(seeds)]
    return [base_seed]


# --------------------------------------------------------------------------- points
def expand(grid: dict[str, list[Any]], ablations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sweep's points, in order: the grid's cartesian product (the first key slowest), or
    the base point ``{}`` when there is no grid; then each ablation changed on every grid point
    (on the base point alone without a grid). Duplicates are dropped, the first kept."""
    keys = list(grid)
    base = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] if keys else [{}]
    points = list(base)
    for change in ablations:
        points += [{**p, **change} for p in base]
    out, seen = [], set()
    for p in points:
        ident = json.dumps(p, sort_keys=True, default=str)
        if ident not in seen:
            seen.add(ident)
            out.append(p)
    return out


def point_label(point: dict[str, Any]) -> str:
    """``{"training.epochs": 2}`` -> ``training.epochs=2``; the base point is ``base``."""
    if not point:
        return "base"
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in point.items())


def child_overrides(base: dict[str, Any], point: dict[str, Any], seed: int) -> dict[str, Any]:
    """What one child runs with: the command's ``--set``, the point, its seed, and no promotion."""
    return {**base, **point, SEED_KEY: seed, **NO_AUTO_PROMOTION}


@dataclass(frozen=True)
class Plan:
    pipeline: str
    config: str
    base: dict[str, Any]  # --set, for every child
    points: list[dict[str, Any]]
    seeds: list[int]

    @property
    def children(self) -> list[tuple[int, int, dict[str, Any]]]:
        """(point index, seed, overrides) per child run, point by point."""
        return [(i, s, child_overrides(self.base, p, s)) for i, p in enumerate(self.points) for s in self.seeds]


def plan(pipeline: str, config: str, base: dict[str, Any], grid_items: list[str] | None,
         ablate_items: list[str] | None, seeds: int | None = None, seed_list: str | None = None,
         limit: int = MAX_CHILDREN) -> Plan:
    """Parse and check a sweep: every child's settings are loaded (so a bad key or value fails
    here, naming the point) and the number of children is bounded. ConfigError otherwise."""
    if SEED_KEY in parse_grid(grid_items) or any(SEED_KEY in a for a in parse_ablations(ablate_items)):
        raise SweepError([f"{SEED_KEY} is swept with --seeds N or --seed S1,S2, not --grid or --ablate"],
                         "command line")
    settings = load_settings(config, base, pipeline)
    points = expand(parse_grid(grid_items), parse_ablations(ablate_items))
    seed_values = parse_seeds(seeds, seed_list, settings.pipeline(pipeline).training.seed)
    n = len(points) * len(seed_values)
    if n > limit:
        raise SweepError([f"{len(points)} point(s) x {len(seed_values)} seed(s) = {n} child runs, more than "
                          f"the limit of {limit}; sweep fewer values or seeds"], "command line")
    problems = []
    for point in points:
        for seed in seed_values[:1] + seed_values[-1:]:  # the seed's range is checked at both ends
            try:
                load_settings(config, child_overrides(base, point, seed), pipeline)
            except ConfigError as exc:
                problems += [f"point {point_label(point)}, seed {seed}: {p}" for p in exc.problems]
    if problems:
        raise SweepError(list(dict.fromkeys(problems)), str(settings.config_path))
    return Plan(pipeline, str(settings.config_path), dict(base), points, seed_values)


# --------------------------------------------------------------------------- results
@dataclass
class Child:
    """One child run of a sweep, as the sweep found it when it ended."""

    point: int
    seed: int
    state: str  # Completed, Failed, Crashed, Cancelled, ...
    flow_run_id: str | None = None
    run_id: str | None = None
    run_dir: str | None = None
    test_accuracy: float | None = None
    validation_accuracy: float | None = None  # on held-out training images only (never the test split)
    validation_protocol: str | None = None  # "held-out", "test" (validation: test) or None (older run)
    validation_described: str | None = None  # "200 held-out training images (10% per class, seed 0)"
    train_seconds: float | None = None
    damaged: str | None = None
    message: str | None = None

    @property
    def usable(self) -> bool:
        return self.state == "Completed" and self.run_id is not None and not self.damaged


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def read_child(child: Child, run) -> Child:
    """``child`` with its numbers from its run folder: ``run`` a ``tasks.core.runs.PublishedRun``
    (verified as it was listed), or None when the folder is not a published run. A run that does
    not verify is marked damaged and gives no number."""
    if child.run_id is None:
        return child
    if run is None:
        child.damaged = f"run folder {child.run_dir} is missing or unreadable"
        return child
    if run.damage:
        child.damaged = run.damaged
    if run.value_verified:
        child.test_accuracy = _number(run.metrics.get("test_accuracy"))
        record = runs.validation_record(run.metrics)
        child.validation_protocol = record.get("protocol")
        child.validation_described = record.get("described") if isinstance(record.get("described"), str) else None
        if child.validation_protocol == "held-out":  # under `validation: test` it is the test accuracy
            child.validation_accuracy = _number(run.metrics.get("validation_accuracy"))
    child.train_seconds = _number((run.metadata.get("training") or {}).get("seconds"))
    return child


def spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (n-1; None under 2 values) and n of the values present."""
    xs = [v for v in values if v is not None]
    return {"mean": statistics.fmean(xs) if xs else None,
            "sd": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def aggregate(plan_: Plan, children: list[Child]) -> list[dict[str, Any]]:
    """One row per point: validation and test accuracy (mean, sd, n over the seeds whose run
    completed and verifies), training seconds (mean), seeds, run ids, and what failed or is damaged."""
    rows = []
    for i, point in enumerate(plan_.points):
        mine = [c for c in children if c.point == i]
        good = [c for c in mine if c.usable]
        rows.append({
            "point": point_label(point),
            "overrides": point,
            "seeds": [c.seed for c in mine],
            "n": len(good),
            "validation_accuracy": spread([c.validation_accuracy for c in good]),
            "validation_protocols": sorted({c.validation_protocol or "none" for c in good}),
            "validated_on": sorted({c.validation_described for c in good if c.validation_described}),
            "test_accuracy": spread([c.test_accuracy for c in good]),
            "train_seconds": spread([c.train_seconds for c in good])["mean"],
            "runs": list(dict.fromkeys(c.run_id for c in good)),
            "failed": [{"seed": c.seed, "state": c.state, "message": c.message} for c in mine
                       if c.state != "Completed"],
            "damaged": [{"seed": c.seed, "run_id": c.run_id, "why": c.damaged} for c in mine if c.damaged],
        })
    return rows


def best_by_validation(children: list[Child]) -> Child | None:
    """The usable child with the highest validation accuracy (the first one on a tie); None when
    no child has one."""
    scored = [c for c in children if c.usable and c.validation_accuracy is not None]
    return max(scored, key=lambda c: c.validation_accuracy) if scored else None


def mean_sd(s: dict[str, Any]) -> str:
    """``{"mean": 0.25, "sd": 0.01}`` -> ``25.00% ± 1.00 pp``; no value -> ``—``."""
    if s.get("mean") is None:
        return MISSING
    return pct(s["mean"]) + (f" ± {s['sd'] * 100:.2f} pp" if s.get("sd") is not None else "")


def seconds_text(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f} s"


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The aggregate as text cells (Prefect's table artifact, the page, the terminal)."""
    out = []
    for r in rows:
        notes = [f"seed {f['seed']} {f['state'].lower()}" for f in r["failed"]]
        notes += [f"run {d['run_id']} damaged" for d in r["damaged"]]
        out.append({
            "point": r["point"],
            "validation accuracy": mean_sd(r["validation_accuracy"]),
            "test accuracy": mean_sd(r["test_accuracy"]),
            "n": f"{r['n']}/{len(r['seeds'])}",
            "train time": seconds_text(r["train_seconds"]),
            "runs": " ".join(r["runs"]) or MISSING,
            "problems": "; ".join(notes),
        })
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """The terminal table, every cell escaped (point labels come from the command line, run ids
    from folder names, messages from errors)."""
    from tasks.core.guards_text import escape

    cells = [{k: escape(v) for k, v in r.items()} for r in table_rows(rows)]
    if not cells:
        return "(no points)"
    cols = [c for c in cells[0] if c != "problems" or any(r["problems"] for r in cells)]
    widths = {c: max(len(c), *(len(r[c]) for r in cells)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in cells]
    return "\n".join(lines)
