"""The runs of the artifacts folder (tasks/core/runs.py): ordered by the sequence number the
store gives them (issue 26), runs saved before there was one first, by created_at; and a damaged
run file (issue 15) leaves that run out of the list, never the other pipeline's runs. Publishing
and pruning real run folders: tests/store/test_run_order.py."""

from __future__ import annotations

import pytest

from runfolders import DAMAGES, damage, two_pipelines

from tasks.core import runs

SKEWED = "2030-01-01T00:00:00.000000+00:00"


def _now(n: int) -> str:
    return f"2026-12-06T10:00:{n:02d}.000000+00:00"


# --------------------------------------------------------------------------- the order of runs
def test_runs_sort_by_sequence_and_runs_without_one_first_by_created_at():
    old_late = runs.run_order({"created_at": SKEWED}, "L2")
    old_early = runs.run_order({"created_at": _now(1)}, "L1")
    first, second = runs.run_order({"seq": 1, "created_at": SKEWED}, "S1"), runs.run_order({"seq": 2}, "S2")
    assert sorted([second, first, old_late, old_early]) == [old_early, old_late, first, second]
    assert runs.run_order({"seq": True, "created_at": _now(1)}, "X") == old_early[:3] + ("X",)  # not a number


def test_the_next_sequence_follows_the_highest():
    assert runs.next_sequence([]) == 1
    assert runs.next_sequence([{"created_at": SKEWED}, {"seq": 4}, {"seq": 2}]) == 5


@pytest.mark.parametrize("seq", ["3", 2.5, None])
def test_a_sequence_that_is_not_a_whole_number_counts_as_none(seq):
    assert runs.sequence_of({"seq": seq}) is None


# --------------------------------------------------------------------------- damaged run files
@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_run_file_leaves_that_run_out_and_no_other(tmp_path, case):
    env = two_pipelines(tmp_path)
    pipeline_name, name, how = DAMAGES[case]
    damage(env, pipeline_name, name, how)

    rows = runs.list_runs(env.art)
    ids = {r["run_id"] for r in rows}
    assert {d.name for d in env.alpha} <= ids  # the other pipeline is never affected
    if name == "registry.json":
        assert ids == {d.name for d in env.alpha + env.beta}
        assert not any(r["champion"] for r in rows if r["pipeline"] == "alpha")
    elif name in ("metadata.json", "metrics.json"):
        assert env.beta[0].name not in ids  # that run is left out
