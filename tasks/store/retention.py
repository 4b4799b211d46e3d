"""Which run folders stay: ``keep_last`` pruning (never the champion) and the sweep of folders
left by saves that died mid-write or runs half-deleted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tasks.core import runs
from tasks.core.files import read_json
from tasks.core.processes import pid_alive


def _remove_dir(d: Path) -> None:
    """Rename to a dot-name first (invisible at once), then delete."""
    gone = d.with_name(f".deleting-{d.name}-{os.getpid()}")
    os.rename(d, gone)
    shutil.rmtree(gone, ignore_errors=True)


def clean_stale(runs_folder: Path) -> list[str]:
    """Remove the temp folders of saves whose process died (kill -9) and half-deleted runs."""
    removed = []
    if not runs_folder.is_dir():
        return removed
    for d in runs_folder.iterdir():
        if not d.name.startswith("."):
            continue
        pid_s = d.name.rsplit("-", 1)[-1]
        if d.name.startswith(".deleting-") or (d.name.startswith(".tmp-") and pid_s.isdigit() and not pid_alive(int(pid_s))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def doomed_runs(published: list[str], keep_last: int, spared: set[str]) -> list[str]:
    """Which of ``published`` (run ids, oldest first) ``keep_last`` removes: all but the newest
    ``keep_last``, never one of ``spared`` (the champion, the run being published)."""
    return [run_id for run_id in published[: max(len(published) - keep_last, 0)] if run_id not in spared]


def prune_runs(pipeline_dir: str | os.PathLike, keep_last: int | None, champion_id: str | None,
               keep: str | None = None) -> list[str]:
    """Delete all but the newest ``keep_last`` runs (by ``tasks.core.runs.run_order``), never the
    champion nor ``keep`` (the run being published); returns the removed ids.

    Store-key mappings that pointed at a removed run go too. ``keep_last`` None keeps all."""
    pipeline_dir = Path(pipeline_dir)
    if keep_last is None:
        return []
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    published = [run.run_id for run in runs.pipeline_runs(pipeline_dir)]  # oldest first
    removed = doomed_runs(published, keep_last, {champion_id, keep} - {None})
    for run_id in removed:
        _remove_dir(runs.runs_dir(pipeline_dir) / run_id)
    keys_dir = runs.store_keys_dir(pipeline_dir)
    if removed and keys_dir.is_dir():
        for k in keys_dir.glob("*.json"):
            try:
                if read_json(k).get("run_id") in removed:
                    k.unlink()
            except (OSError, ValueError):
                continue
    return removed
