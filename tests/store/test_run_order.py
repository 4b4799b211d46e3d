"""Clocks cannot reorder runs (issue 26): a run saved while a clock ran ahead (created_at in 2030:
a skewed worker on a shared artifacts folder, an RTC reset) must neither make ``keep_last`` prune
each new run in the step that saves it nor pass for the latest run. Runs are ordered by the
sequence number the store gives under the pipeline's lock; runs saved before there was one sort
first, by created_at. Real run folders, published by the store's own critical section
(tasks/store/saving.py, retention.py). The order itself: tests/core/test_runs.py."""

from __future__ import annotations

import json
from pathlib import Path

from runfolders import recorded_files

from tasks.core import runs
from tasks.core.files import atomic_write_json
from tasks.store.config import PromoteConfig
from tasks.store.retention import doomed_runs, prune_runs
from tasks.store.saving import _publish

CFG = PromoteConfig(metric="test_accuracy", direction="max", min_delta=0.002)
SKEWED = "2030-01-01T00:00:00.000000+00:00"


def _now(n: int) -> str:
    return f"2026-12-06T10:00:{n:02d}.000000+00:00"


def _run_files(folder: Path, value: float) -> None:
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(f"a model scoring {value}".encode())
    atomic_write_json(folder / runs.METRICS, {"test_accuracy": value, "test_loss": 1.0})


def publish(pdir: Path, run_id: str, created_at: str, value: float, keep_last: int | None):
    """A run folder published as ``store_run`` publishes one (its evaluation aside)."""
    tmp = runs.runs_dir(pdir) / f".tmp-{run_id}-1"
    _run_files(tmp, value)
    meta = {"pipeline": pdir.name, "run_id": run_id, "created_at": created_at,
            "cache_keys": {"store": f"key-{run_id}"}, "stages": {}, "dataset": {}, "files": recorded_files(tmp)}
    return _publish(tmp, pdir, meta, {"test_accuracy": value, "test_loss": 1.0}, CFG, keep_last, 0.0)


def legacy_run(pdir: Path, run_id: str, created_at: str, value: float, champion: bool = False) -> None:
    """A run folder as the store wrote it before runs had a sequence number."""
    folder = runs.runs_dir(pdir) / run_id
    _run_files(folder, value)
    atomic_write_json(folder / runs.METADATA, {"pipeline": pdir.name, "run_id": run_id, "created_at": created_at,
                                               "promotion": {"promoted": champion, "reason": "legacy"},
                                               "files": recorded_files(folder)})
    if champion:
        atomic_write_json(runs.registry_path(pdir), {"champion": {"run_id": run_id, "metric": "test_accuracy",
                                                                  "value": value, "promoted_at": created_at}})


def ids(pdir: Path) -> list[str]:
    return [run.run_id for run in runs.pipeline_runs(pdir)]


# --------------------------------------------------------------------------- which runs go


def test_keep_last_spares_the_champion_and_the_run_being_published():
    assert doomed_runs(["a", "b", "c", "d"], 2, set()) == ["a", "b"]
    assert doomed_runs(["a", "b", "c", "d"], 1, {"a", "d"}) == ["b", "c"]
    assert doomed_runs(["a"], 1, set()) == []


# --------------------------------------------------------------------------- real run folders
def test_a_run_saved_under_a_skewed_clock_never_makes_the_next_runs_prune_themselves(tmp_path):
    pdir = tmp_path / "tiny"
    decision, skewed, removed = publish(pdir, "20300101-000000-aaaaaa", SKEWED, 0.5, keep_last=1)
    assert decision["promoted"] and removed == []  # the first run: champion, whatever its clock said
    assert json.loads((skewed / runs.METADATA).read_text())["seq"] == 1

    _, second, removed = publish(pdir, "20261206-100001-bbbbbb", _now(1), 0.3, keep_last=1)
    assert second.is_dir() and removed == []  # the champion stays; the new run is never pruned
    _, third, removed = publish(pdir, "20261206-100002-cccccc", _now(2), 0.2, keep_last=1)
    assert third.is_dir() and removed == [second.name]
    assert ids(pdir) == [skewed.name, third.name]
    assert [json.loads((d / runs.METADATA).read_text())["seq"] for d in (skewed, third)] == [1, 3]

    # latest is the newest by sequence, wherever its clock was
    from tasks.predict.resolve import resolve_model

    assert resolve_model(tmp_path, "tiny", "latest").run_id == third.name
    assert resolve_model(tmp_path, "tiny", "champion").run_id == skewed.name
    assert [r["run_id"] for r in runs.list_runs(tmp_path)] == [third.name, skewed.name]
    assert [r["run_id"] for r in runs.list_runs(tmp_path, "tiny")] == [third.name, skewed.name]


def test_an_old_run_from_2030_without_a_sequence_sorts_before_every_new_run(tmp_path):
    pdir = tmp_path / "tiny"
    legacy_run(pdir, "20250101-000000-111111", _now(0), 0.3)
    legacy_run(pdir, "20300101-000000-222222", SKEWED, 0.4, champion=True)
    _, first, removed = publish(pdir, "20261206-100001-aaaaaa", _now(1), 0.1, keep_last=2)
    assert first.is_dir() and removed == ["20250101-000000-111111"]  # the oldest; never the champion
    _, second, removed = publish(pdir, "20261206-100002-bbbbbb", _now(2), 0.2, keep_last=1)
    assert second.is_dir() and removed == [first.name]
    assert ids(pdir) == ["20300101-000000-222222", second.name]
    assert json.loads((second / runs.METADATA).read_text())["seq"] == 2
    rows = runs.list_runs(tmp_path, "tiny")
    assert [r["run_id"] for r in rows] == [second.name, "20300101-000000-222222"]
    assert [r["champion"] for r in rows] == [False, True]
    assert prune_runs(pdir, 1, "20300101-000000-222222", keep=second.name) == []


def test_the_promotion_compares_with_the_previous_run_by_sequence(tmp_path):
    from tasks.store.promotion import previous_run

    pdir = tmp_path / "tiny"
    publish(pdir, "20300101-000000-aaaaaa", SKEWED, 0.5, keep_last=None)
    decision, second, _ = publish(pdir, "20261206-100001-bbbbbb", _now(1), 0.3, keep_last=None)
    assert decision["previous_run"] == "20300101-000000-aaaaaa"
    assert previous_run(pdir, "test_accuracy") == {"run_id": second.name, "value": 0.3}
