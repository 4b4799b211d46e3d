"""A person's decision: ``cifar promote PIPELINE RUN_ID [--reason TEXT]`` names a champion,
``cifar promote PIPELINE --previous`` rolls back to the champion before the current one.

Written to registry.json under the pipeline's registry lock (the one a save holds), with when,
by whom (``person`` or ``rollback``) and why, in its history. Only a run that verifies
(``tasks.core.verify``) can be named: a damaged one is refused with what is wrong and what to do.
A person may name a run under the floor (``promote.min_value``): the rule never would, the
reason recorded says who did.
"""

from __future__ import annotations

import os
from typing import Any

from tasks.core import runs, verify
from tasks.core.errors import CifarError
from tasks.core.files import file_lock
from tasks.core.registry import champion_entry, earlier_champions, set_champion, write_registry


class PromoteError(CifarError):
    """The run cannot be named champion (unknown, damaged, nothing to roll back to)."""

    exit_code = 2


def _recent(published: list[runs.PublishedRun], n: int = 5) -> str:
    ids = [run.run_id for run in reversed(published)][:n]
    return ", ".join(ids) + (" ..." if len(published) > n else "") if ids else "none"


def _target(published: list[runs.PublishedRun], registry: dict[str, Any], pipeline: str,
            run_id: str | None) -> tuple[runs.PublishedRun, str]:
    """The run to name and ``by`` (person, or rollback for ``run_id`` None)."""
    by_id = {run.run_id: run for run in published}
    if run_id is not None:
        if run_id not in by_id:
            raise PromoteError(f"pipeline {pipeline!r} has no run {run_id!r}; its runs, newest first: "
                               f"{_recent(published)} (`cifar runs {pipeline}` lists them).")
        return by_id[run_id], "person"
    skipped = []
    for earlier in earlier_champions(registry):
        run = by_id.get(earlier)
        if run is not None and not run.damage:
            return run, "rollback"
        skipped.append(f"{earlier} ({'its folder is gone' if run is None else 'damaged'})")
    current = (registry.get("champion") or {}).get("run_id")
    raise PromoteError(
        f"pipeline {pipeline!r} has no earlier champion to roll back to"
        + (f" that verifies (tried {', '.join(skipped)})" if skipped else
           f" (registry.json records none before {current})" if current else " (it has no champion)")
        + f". Name a run instead: `cifar promote {pipeline} RUN_ID`; its runs, newest first: {_recent(published)}.")


def promote_by_hand(artifacts_dir: str | os.PathLike, pipeline: str, run_id: str | None = None, *,
                    reason: str | None = None, metric: str = "test_accuracy",
                    via: str = "`cifar promote`") -> dict[str, Any]:
    """Name ``run_id`` (or, when None, the champion before the current one) the champion of
    ``pipeline``; ``via`` names the command in the reason recorded (``cifar sweep --promote
    best`` names itself). Returns what was decided: run_id, replaced, by, reason, at, and ``already``
    when the run was champion already (nothing written)."""
    folder = runs.pipeline_dir(artifacts_dir, pipeline)
    if not runs.runs_dir(folder).is_dir():
        raise PromoteError(f"pipeline {pipeline!r} has no runs under {folder.parent}; train it with "
                           f"`cifar run {pipeline}` first.")
    with file_lock(folder / ".registry.lock", f"the registry of {pipeline}"):
        registry, problem = runs.load_registry(folder)
        if problem and runs.registry_path(folder).is_dir():
            raise PromoteError(f"{runs.registry_path(folder)} is a folder, not the pipeline's registry file; "
                               "move it away and run the command again")
        published = runs.pipeline_runs(folder, warn_damaged=False)  # the refusal says it
        run, by = _target(published, registry, pipeline, run_id)
        if run.damage:
            raise PromoteError(f"run {run.run_id} of {pipeline} is damaged, so it cannot be champion: "
                               f"{run.damaged}. To resolve this: {verify.WHAT_TO_DO}; or name another "
                               f"run (newest first: {_recent(published)}).")
        current = (registry.get("champion") or {}).get("run_id")
        if current == run.run_id and not problem:
            return {"run_id": run.run_id, "replaced": None, "by": by, "already": True,
                    "reason": (registry.get("champion") or {}).get("reason", "")}
        value = run.metrics.get(metric)
        said = f": {reason.strip()}" if reason and reason.strip() else ""
        why = (f"promoted by hand with {via}{said}" if by == "person" else
               f"rolled back from {current} with `cifar promote --previous`{said}")
        if problem:
            why += " (registry.json was damaged and is rewritten)"
        entry = champion_entry(run.run_id, metric, value if isinstance(value, (int, float)) else None, why, by)
        set_champion(registry, entry)
        write_registry(runs.registry_path(folder), registry)
    return {"run_id": run.run_id, "replaced": current, "by": by, "reason": why, "at": entry["promoted_at"],
            "already": False}
