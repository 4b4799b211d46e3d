"""What a run says it did (flows/outcomes.py) and how the schedule starts it (flows/deploy.py),
unit by unit (issue 16): a fresh seed only for scheduled runs of an `always` pipeline, scheduled
runs marked as such, and the words of a run that changed nothing, which never replay the
promotion of the run it found. The real-server slice is tests/e2e/test_retraining_e2e.py."""

from __future__ import annotations

from tasks.core.records import RunRecord


# --------------------------------------------------------------------------- seeds and schedules
def test_only_a_scheduled_run_of_an_always_pipeline_gets_a_fresh_seed():
    from flows.config import ScheduleConfig
    from flows.outcomes import scheduled_seed

    always, on_change = ScheduleConfig(cron="0 3 * * 1", retrain="always"), ScheduleConfig(cron="0 3 * * 1")
    seeds = {scheduled_seed(always, True) for _ in range(5)}
    assert len(seeds) > 1 and all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert scheduled_seed(always, False) is None
    assert scheduled_seed(on_change, True) is None and scheduled_seed(None, True) is None


def test_the_trigger_record_says_where_the_seed_came_from():
    from flows.config import ScheduleConfig
    from flows.outcomes import trigger_record

    always = ScheduleConfig(cron="0 3 * * 1", retrain="always")
    rec = trigger_record(True, always, 7, 42)
    assert rec == {"scheduled": True, "retrain": "always", "seed": 7, "seed_source": "fresh (schedule.retrain: always)"}
    assert trigger_record(False, always, None, 42)["seed"] == 42


def test_the_schedule_marks_its_runs_as_scheduled(tmp_path):
    from flows.config import PipelineConfig, ScheduleConfig
    from flows.deploy import deployment_kwargs

    kwargs = deployment_kwargs(PipelineConfig(name="p", schedule=ScheduleConfig(cron="0 3 * * 1")), tmp_path)
    (sched,) = kwargs["schedules"]
    assert sched.parameters == {"scheduled": True} and sched.schedule.cron == "0 3 * * 1"
    assert "scheduled" not in kwargs["parameters"]  # a manual run is not a scheduled one


# --------------------------------------------------------------------------- the outcome's words
def test_nothing_changed_is_a_reused_run_or_a_cached_save():
    from flows.outcomes import nothing_changed

    run = RunRecord("p", "R2", "/x", 0.5, True, "first run of this pipeline")
    assert not nothing_changed(run, {"save": {"cache_hit": False}})
    assert nothing_changed(run, {"save": {"cache_hit": True}})
    reused = RunRecord("p", "R2", "/x", 0.5, True, "first run of this pipeline", reused=True)
    assert nothing_changed(reused, {}) and reused == run  # the same run; reused says how it was found


def test_the_nothing_changed_message_names_the_run_and_the_champion():
    from flows.outcomes import nothing_changed_message

    msg = nothing_changed_message("R2", "R1", "2026-12-01 09:30 UTC")
    assert msg == "nothing changed since run R2; champion R1 (since 2026-12-01 09:30 UTC)"
    assert nothing_changed_message("R2", None) == "nothing changed since run R2; champion (none)"


def test_the_outcome_artifact_of_a_nothing_changed_run_promotes_nothing():
    from flows.outcomes import nothing_changed_message, outcome_markdown

    msg = nothing_changed_message("R2", "R1", "2026-12-01 09:30 UTC")
    md = outcome_markdown({"pipeline": "p", "outcome": "nothing changed", "message": msg, "run_id": "R2",
                           "test_accuracy": 0.5, "promoted": False, "promotion_reason": None,
                           "champion": "R1", "champion_since": "2026-12-01 09:30 UTC", "report": "/r.html",
                           "trigger": {"scheduled": True, "seed": 3, "seed_source": "training.seed"}})
    assert md.startswith("### p: nothing changed\n\n" + msg) and "schedule; seed 3" in md
    assert "| Champion | `R1` since 2026-12-01 09:30 UTC |" in md
    assert "promot" not in md.lower(), md  # a run that changed nothing promoted nothing


def test_since_is_a_utc_minute_or_the_text_as_given():
    from flows.outcomes import since_text

    assert since_text("2026-12-01T09:30:05+00:00") == "2026-12-01 09:30 UTC"
    assert since_text("2026-12-01T10:30:05+01:00") == "2026-12-01 09:30 UTC"
    assert since_text(None) is None and since_text("last week") == "last week"


SAVED = RunRecord("p", "R1", "/a/p/runs/R1", 0.5, True, "first run of this pipeline")
CHAMPION = {"run_id": "R1", "promoted_at": "2026-12-01T09:30:05+00:00"}
BASE = {"pipeline": "p", "run_id": "R1", "test_accuracy": 0.5, "report": "/a/p/runs/R1/report.html",
        "index": "/a/index.html", "trigger": {}}


def test_a_nothing_changed_run_never_replays_the_promotion_of_the_run_it_found():
    """The CLI's lines, the flow's done: line and the outcome artifact of a rerun whose save found
    run R1 (promoted when it was first saved): what happened, the champion and since when."""
    from flows.outcomes import done_line, outcome_fields, outcome_markdown, run_lines

    said = "nothing changed since run R1; champion R1 (since 2026-12-01 09:30 UTC)"
    summary = {**BASE, **outcome_fields(SAVED, True, CHAMPION)}
    assert summary["message"] == said and summary["outcome"] == "nothing changed"
    assert summary["promoted"] is False and summary["promotion_reason"] is None
    assert summary["champion"] == "R1" and summary["champion_since"] == "2026-12-01 09:30 UTC"
    assert run_lines(summary) == [f"p: {said}", "p: test accuracy 50.00% (run R1)"]
    assert done_line(summary) == f"done: test accuracy 50.00%, {said}; report /a/p/runs/R1/report.html"
    for text in [*run_lines(summary), done_line(summary), outcome_markdown(summary)]:
        assert "promot" not in text.lower(), text


def test_a_run_that_trained_says_it_was_promoted():
    from flows.outcomes import done_line, outcome_fields, outcome_markdown, run_lines

    trained = {**BASE, **outcome_fields(SAVED, False, CHAMPION)}
    assert trained["promoted"] is True and trained["message"] == "trained and saved run R1: promoted to champion"
    assert run_lines(trained) == ["p: test accuracy 50.00% (promoted to champion: first run of this pipeline)"]
    assert done_line(trained).startswith("done: test accuracy 50.00%, promoted to champion; report ")
    assert "| Promoted | yes: first run of this pipeline |" in outcome_markdown(trained)


def test_the_outcome_links_the_report_over_http_with_a_reports_server():
    from flows.outcomes import done_line, outcome_fields, outcome_markdown

    url = "http://127.0.0.1:8765/p/runs/R1/report.html"
    served = {**BASE, **outcome_fields(SAVED, False, CHAMPION), "report_url": url}
    md = outcome_markdown(served)
    assert f"| Report | [report.html]({url}) |" in md and "| | |" not in md
    assert "| item | value |" in md and "| Test accuracy | 50.00% |" in md
    assert done_line(served).endswith(f"report {url}")
    local = outcome_markdown({**served, "report_url": None})
    assert "/a/p/runs/R1/report.html (a local file" in local and "](" not in local
