"""Which runs were champion before the current one (tasks/core/registry.py), read from history."""

from __future__ import annotations

from tasks.core.registry import earlier_champions


def entry(run_id: str, replaced: str | None, by: str = "rule") -> dict:
    return {"run_id": run_id, "replaced": replaced, "by": by, "at": "2026-12-07T00:00:00+00:00", "reason": ""}


def test_a_registry_older_than_its_history_rolls_back_to_the_run_its_first_entry_replaced():
    # registry.json written before the history existed: its first champion is only named as
    # the run the first decision replaced (found by hand: `cifar promote --previous` said "none")
    registry = {"champion": {"run_id": "b"}, "history": [entry("b", "a", "person")]}
    assert earlier_champions(registry) == ["a"]


def test_earlier_champions_are_most_recent_first_each_once_without_the_current():
    registry = {"champion": {"run_id": "a"},
                "history": [entry("a", None), entry("b", "a"), entry("c", "b"), entry("a", "c", "rollback")]}
    assert earlier_champions(registry) == ["c", "b"]


def test_damaged_history_entries_are_skipped():
    registry = {"champion": {"run_id": "b"}, "history": ["x", {"run_id": 3, "replaced": None}, entry("b", "a")]}
    assert earlier_champions(registry) == ["a"]
