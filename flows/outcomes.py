"""What a run of flow ``cifar`` tells the world when it ends: whether it found anything new, a
markdown artifact saying so, and Prefect events an automation can act on.

Events (resource ``cifar.pipeline.<name>``; labels ``cifar.pipeline``, ``cifar.run-id``,
``cifar.metric`` and ``cifar.metric-value``; the flow run as a related resource):

    cifar.run.completed       every run that ended Completed (trained or not)
    cifar.model.promoted      the run's model became the pipeline's champion
    cifar.run.nothing-changed the run found the data, config and code of an earlier run: it
                              trained nothing and saved nothing new
    cifar.run.failed          the flow run failed or crashed (``on_failure`` / ``on_crashed`` hooks)

``automations/`` holds the automation that notifies on ``cifar.run.failed`` and
``cifar.model.promoted``; its README says how to install it on a server.
"""

from __future__ import annotations

import secrets
from typing import Any

from tasks.core.logs import get_logger
from tasks.core.numbers import pct
from tasks.core.records import RunRecord


# --------------------------------------------------------------------------- retrain: always
def scheduled_seed(schedule, scheduled: bool) -> int | None:
    """A fresh training seed for a run the deployment's schedule started when the pipeline says
    ``schedule.retrain: always``; None otherwise (manual runs, ``cifar run`` and ``on-change``
    keep the configured seed, so the same inputs never train twice)."""
    if not scheduled or schedule is None or schedule.retrain != "always":
        return None
    return secrets.randbelow(2**31)


def trigger_record(scheduled: bool, schedule, seed: int | None, configured_seed: int) -> dict[str, Any]:
    """metadata.json's ``trigger``: who started the run and which seed it trained with, and why."""
    return {
        "scheduled": bool(scheduled),
        "retrain": schedule.retrain if schedule is not None else None,
        "seed": configured_seed if seed is None else seed,
        "seed_source": "fresh (schedule.retrain: always)" if seed is not None else "training.seed",
    }


# --------------------------------------------------------------------------- nothing changed
def nothing_changed(run: RunRecord, stage_times: dict[str, dict[str, Any]]) -> bool:
    """True when the save stage found a run already saved for this content key (the trained
    model's key and sha256, the dataset's content, the pipeline, the promotion rule and the
    code): data, config and code are those of an earlier run, and nothing new was trained."""
    return bool(run.reused or (stage_times.get("save") or {}).get("cache_hit"))


def champion_entry(artifacts_dir: str, pipeline: str) -> dict[str, Any] | None:
    """The pipeline's champion as registry.json records it (``run_id``, ``promoted_at``, ...)."""
    from tasks.core import runs

    registry, _ = runs.load_registry(runs.pipeline_dir(artifacts_dir, pipeline))
    champion = registry.get("champion")
    return champion if isinstance(champion, dict) else None


def since_text(promoted_at: str | None) -> str | None:
    """When a run became champion, as the messages say it (``2026-12-06 10:00 UTC``); the
    registry's text as it is when it is no ISO date-time, None when there is none."""
    from datetime import datetime, timezone

    if not promoted_at:
        return None
    try:
        when = datetime.fromisoformat(str(promoted_at).replace("Z", "+00:00"))
    except ValueError:
        return str(promoted_at)
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return f"{when.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def nothing_changed_message(run_id: str, champion: str | None, since: str | None = None) -> str:
    """What a run that found the data, config and code of run X did, and which run is the
    champion and since when (registry.json's ``promoted_at``): "nothing changed since run X;
    champion Y (since DATE)"."""
    held = f" (since {since})" if champion and since else ""
    return f"nothing changed since run {run_id}; champion {champion or '(none)'}{held}"


def outcome_fields(run: RunRecord, nothing: bool, champion: dict[str, Any] | None) -> dict[str, Any]:
    """The summary's outcome, message, champion and promotion of a finished run. A run that
    found nothing changed promoted nothing: ``promoted`` False and no ``promotion_reason``
    (the earlier save's decision is not replayed); ``champion_since`` is when the champion
    became one."""
    champion_id = (champion or {}).get("run_id")
    since = since_text((champion or {}).get("promoted_at"))
    if nothing:
        return {"outcome": "nothing changed", "message": nothing_changed_message(run.run_id, champion_id, since),
                "champion": champion_id, "champion_since": since, "promoted": False, "promotion_reason": None}
    verdict = "promoted to champion" if run.promoted else f"not promoted ({run.reason})"
    return {"outcome": "trained", "message": f"trained and saved run {run.run_id}: {verdict}",
            "champion": champion_id, "champion_since": since, "promoted": run.promoted,
            "promotion_reason": run.reason}


def outcome_markdown(summary: dict[str, Any]) -> str:
    """The run's outcome for Prefect's UI: what happened, and the numbers behind it. A run that
    found nothing changed has no promotion row: it promoted nothing."""
    champion = f"`{summary.get('champion') or '(none)'}`"
    if summary.get("champion") and summary.get("champion_since"):
        champion += f" since {summary['champion_since']}"
    from tasks.report.publishing import markdown_link

    lines = [f"### {summary['pipeline']}: {summary['outcome']}", "", summary["message"], "",
             "| item | value |", "|---|---|",
             f"| Run | `{summary['run_id']}` |",
             f"| Test accuracy | {pct(summary['test_accuracy'])} |"]
    if summary["outcome"] != "nothing changed":
        lines.append(f"| Promoted | {'yes' if summary['promoted'] else 'no'}: {summary['promotion_reason']} |")
    lines.append(f"| Champion | {champion} |")
    trigger = summary.get("trigger") or {}
    if trigger:
        lines.append(f"| Trigger | {'schedule' if trigger.get('scheduled') else 'manual'}; "
                     f"seed {trigger.get('seed')} ({trigger.get('seed_source')}) |")
    lines.append(f"| Report | {markdown_link('report.html', summary.get('report_url') or summary['report'])} |")
    return "\n".join(line.replace("\n", " ") for line in lines) + "\n"


def run_lines(summary: dict[str, Any]) -> list[str]:
    """What ``cifar run`` prints about a finished run, before the index and the report's path."""
    name, accuracy = summary["pipeline"], pct(summary["test_accuracy"])
    if summary["outcome"] == "nothing changed":
        return [f"{name}: {summary['message']}", f"{name}: test accuracy {accuracy} (run {summary['run_id']})"]
    verdict = "promoted to champion" if summary["promoted"] else "not promoted"
    return [f"{name}: test accuracy {accuracy} ({verdict}: {summary['promotion_reason']})"]


def done_line(summary: dict[str, Any]) -> str:
    """The flow's last log line."""
    if summary["outcome"] == "nothing changed":
        said = summary["message"]
    else:
        said = "promoted to champion" if summary["promoted"] else "not promoted"
    return f"done: test accuracy {pct(summary['test_accuracy'])}, {said}; report {summary.get('report_url') or summary['report']}"


# --------------------------------------------------------------------------- events
def _resource(pipeline: str, run_id: str | None, metric: str | None, value: float | None) -> dict[str, str]:
    resource = {"prefect.resource.id": f"cifar.pipeline.{pipeline}", "prefect.resource.name": pipeline,
                "cifar.pipeline": pipeline, "cifar.run-id": run_id or ""}
    if metric:
        resource["cifar.metric"] = metric
        resource["cifar.metric-value"] = "" if value is None else f"{value:.6g}"
    return resource


def emit(event: str, pipeline: str, run_id: str | None, metric: str | None = None,
         value: float | None = None, flow_run_id: str | None = None, **payload: Any):
    """One ``cifar.*`` event (a no-op without a Prefect API to send it to)."""
    from prefect.events import emit_event

    related = ([{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}]
               if flow_run_id else None)
    return emit_event(event=event, resource=_resource(pipeline, run_id, metric, value), related=related,
                      payload={k: v for k, v in payload.items() if v is not None})


def publish(summary: dict[str, Any], metric: str, flow_run_id: str | None) -> None:
    """The outcome of a finished run: its log line, the markdown artifact, and its events."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.report.publishing import artifact_key

    pipeline, run_id = summary["pipeline"], summary["run_id"]
    value = summary.get("metric_value")
    log = get_logger()
    log.info("%s: %s", pipeline, summary["message"])
    create_markdown_artifact(key=artifact_key("outcome", pipeline), markdown=outcome_markdown(summary),
                             description=f"{pipeline}: {summary['outcome']}")
    common = dict(flow_run_id=flow_run_id, message=summary["message"], outcome=summary["outcome"],
                  report=summary.get("report"))
    if summary["outcome"] == "nothing changed":
        emit("cifar.run.nothing-changed", pipeline, run_id, metric, value, champion=summary.get("champion"),
             champion_since=summary.get("champion_since"), **common)
    if summary["promoted"] and summary["outcome"] != "nothing changed":
        emit("cifar.model.promoted", pipeline, run_id, metric, value, reason=summary["promotion_reason"],
             **common)
    emit("cifar.run.completed", pipeline, run_id, metric, value, promoted=summary["promoted"], **common)


def outcome(run: RunRecord, stage_times: dict[str, dict[str, Any]], artifacts_dir: str) -> dict[str, Any]:
    """The summary's outcome fields (``outcome_fields``): "nothing changed" or "trained"."""
    return outcome_fields(run, nothing_changed(run, stage_times), champion_entry(artifacts_dir, run.pipeline))


def on_run_failed(flow, flow_run, state) -> None:
    """Flow hook (``on_failure`` and ``on_crashed``): the ``cifar.run.failed`` event."""
    params = flow_run.parameters or {}
    emit("cifar.run.failed", str(params.get("pipeline", "")), None, flow_run_id=str(flow_run.id),
         state=state.name, message=(state.message or "")[:2000], flow_run_name=flow_run.name)


def metric_value(run_dir: str, metric: str) -> float | None:
    """The run's value of the promotion metric (metrics.json), None when unreadable."""
    from tasks.core import runs

    return runs.metric_of(run_dir, metric)


def code_versions() -> dict[str, str]:
    """Each stage's code version, as its cache key counts it (recorded in metadata.json, so a
    report can say which stage's code changed since the champion)."""
    from tasks.download.decode import CODE_VERSION
    from tasks.download.fetching import FETCH_CODE_VERSION
    from tasks.prepare.validation import validation_code_version
    from tasks.store.saving import store_code_version
    from tasks.train.run import training_code_version

    return {"download": FETCH_CODE_VERSION, "decode": CODE_VERSION, "prepare": validation_code_version(),
            "train": training_code_version(), "store": store_code_version()}
