"""The ``cifar`` flow: one pipeline from pipelines.yaml, every slow step cached and verified."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow, tags
from prefect.runtime import deployment, flow_run
from pydantic import Field

from flows import cluster, interrupts
from flows.config import DEFAULT_CONFIG, PipelineConfig, Settings, load_settings
from flows.deploy import require_pinned
from flows.outcomes import (
    code_versions, done_line, metric_value, on_run_failed, outcome, publish, scheduled_seed, trigger_record,
)
from flows.failures import quiet_expected_tracebacks
from tasks.core.caching import bind_local
from tasks.core.logs import get_logger


quiet_expected_tracebacks()  # also in flow-run processes that Prefect starts (served, pooled)


def run_name(prefix: str, run_id: str | None, now: datetime | None = None) -> str:
    """A flow run's name: what it runs, when to the second, and the tail of its flow-run id, so
    two runs started in the same second still read apart in Prefect's UI."""
    tail = f" · {str(run_id).replace('-', '')[-6:]}" if run_id else ""
    return f"{prefix} · {(now or datetime.now()):%Y-%m-%d %H:%M:%S}{tail}"


def _run_name() -> str:
    params = flow_run.parameters or {}
    return run_name(str(params.get("pipeline", "cifar")), _flow_run_id())


def describe(chosen: PipelineConfig, overrides: dict[str, Any] | None) -> str:
    """The run as configured, after ``--set`` overrides (the description in the file may say
    "one epoch" of a run overridden to four): model, data, epochs, batch, and the overrides."""
    ds, tr = chosen.dataset, chosen.training
    limits = "" if ds.limit_train is None else f" (limit {ds.limit_train}/{ds.limit_test})"
    line = (f"pipeline {chosen.name}: {chosen.model} on {ds.format}{limits}, {tr.epochs_text()}, "
            f"batch {tr.batch_size}, seed {tr.seed}; validation: {chosen.dataset.holdout.describe()}")
    if overrides:
        line += "; overridden: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    return line


class _Stages:
    """Runs stages, timing each and noting whether Prefect served it from its cache."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.times: dict[str, dict[str, Any]] = {}

    def run(self, stage: str, task, *args, refresh: bool = False, options: dict | None = None, **kwargs):
        t0 = time.perf_counter()
        opts = {**(options or {}), **({"refresh_cache": True} if refresh else {})}
        with interrupts.doing(f"the {stage} stage ({task.name})"):
            state = bind_local(task, self.data_dir, **opts)(*args, return_state=True, **kwargs)
        result = state.result()  # raises the stage's own error when it failed
        entry = self.times.setdefault(stage, {"seconds": 0.0, "cache_hit": True})
        entry["seconds"] = round(entry["seconds"] + time.perf_counter() - t0, 3)
        entry["cache_hit"] = entry["cache_hit"] and state.name == "Cached"
        return result


def _settings(pipeline: str, overrides: dict[str, Any] | None, config: str) -> tuple[Settings, PipelineConfig]:
    settings = load_settings(config, overrides or {}, pipeline)
    return settings, settings.pipeline(pipeline)


def _prepare_data(stages: _Stages, chosen: PipelineConfig):
    from tasks.download.tasks import decode_dataset, fetch_archive, retry_options
    from tasks.prepare.tasks import validate_dataset

    cfg = chosen.dataset
    if cfg.sha256_url:  # read the published checksum at every run; the fetch then pins to it
        from tasks.download.tasks import follow_checksum

        cfg = stages.run("download", follow_checksum, cfg, options=retry_options(cfg))
    archive = stages.run("download", fetch_archive, cfg, stages.data_dir, options=retry_options(cfg))
    dataset = stages.run("download", decode_dataset, archive, cfg, stages.data_dir)
    validation = stages.run("prepare", validate_dataset, dataset, chosen.prepare, stages.data_dir)
    return dataset, validation


# The flows' parameters, as Prefect's UI form shows them (Prefect reads these Field defaults).
PIPELINE_HELP = "a pipeline of the config file: its key under `pipelines:`"
OVERRIDES_HELP = ('settings that differ from the file, dotted keys as `cifar run --set` takes them: '
                  '{"training.epochs": 1, "dataset.limit_train": 500}; checked like the file')
CONFIG_HELP = "the pipelines file (YAML); relative to the working directory of the flow run"
SCHEDULED_HELP = ("set by the deployment's schedule: with `schedule.retrain: always` such a run "
                  "trains a challenger with a fresh seed")


# persist_result: the summary (a small dict) is written to Prefect's result storage, so that a
# sweep reads a pooled child's result from the API (`state.result()`, flows/sweep.py).
@flow(name="cifar", flow_run_name=_run_name, log_prints=True, on_failure=[on_run_failed],
      on_crashed=[on_run_failed], persist_result=True)
def cifar(
    pipeline: str = Field("train", description=PIPELINE_HELP),
    overrides: dict[str, Any] | None = Field(None, description=OVERRIDES_HELP),
    force: bool = Field(False, description="retrain even when a model for the same inputs exists"),
    config: str = Field(DEFAULT_CONFIG, description=CONFIG_HELP),
    scheduled: bool = Field(False, description=SCHEDULED_HELP),
) -> dict[str, Any]:
    """Train, register and report one pipeline of pipelines.yaml.

    1) download and cache - fetch the archive (retried, resumable, checksum-verified) and decode it
       into a memory-mapped uint8 cache keyed by its content;
    2) prepare and validate - the pandera data contract over the scaled pixels and one-hot labels;
    3) train - the pipeline's Keras model, resumable, cached by data + config + code;
    4) save and register - evaluate, write the run folder, promote a champion or not;
    5) report - the run's self-contained HTML report and artifacts/index.html;
    6) outcome - "trained" or "nothing changed since run X; champion Y (since DATE)", as a
       log line, an ``outcome-<pipeline>`` markdown artifact, the return value's ``message``, and
       ``cifar.*`` Prefect events (flows/outcomes.py; a failed run emits ``cifar.run.failed``).

    ``overrides`` maps dotted keys to values, as ``--set`` does (``{"training.epochs": 1}``);
    ``force`` retrains even when a trained model for the same inputs exists; ``scheduled`` is set
    by the deployment's schedule (``schedule.retrain: always`` gives those runs a fresh seed).
    """
    from tasks.report.tasks import build_report
    from tasks.store.tasks import save_run
    from tasks.train.tasks import train_model
    from tasks.train.board import copy_logs
    from tasks.train.hparams import log_run_hparams

    require_pinned(pipeline)  # a deployment runs the pipeline it is named for, and no other
    settings, chosen = _settings(pipeline, overrides, config)
    configured_seed = chosen.training.seed
    if (seed := scheduled_seed(chosen.schedule, scheduled)) is not None:  # schedule.retrain: always
        settings, chosen = _settings(pipeline, {**(overrides or {}), "training.seed": seed}, config)
    trigger = trigger_record(scheduled, chosen.schedule, seed, configured_seed)
    data_dir, artifacts_dir = str(settings.data_dir), str(settings.artifacts_dir)
    cluster.require_shared_folders(data_dir, artifacts_dir, deployment.id)  # a worker sees the shared folders
    stages = _Stages(data_dir)
    log = get_logger()
    log.info("%s", describe(chosen, overrides))

    with tags(f"pipeline:{chosen.name}", f"model:{chosen.model}"):
        dataset, validation = _prepare_data(stages, chosen)
        chief, role = cluster.role_of(chosen.training)  # multi_worker: only the chief saves and reports
        train_started = time.time()
        trained = stages.run(
            "train", train_model, dataset, validation, chosen.model, chosen.training, chosen.prepare, data_dir,
            force=force, refresh=force, slots=settings.train_slots, holdout=chosen.dataset.holdout,
        )
        if not chief:  # the others wait for the chief's run and point at it
            return cluster.worker_summary(chosen.name, role, cluster.wait_for_chief(
                role, trained.path, trained.key, chosen.name, data_dir, artifacts_dir,
                since=train_started if force else 0.0), stages.times)
        run = stages.run(
            "save", save_run, chosen, dataset, validation, trained, dict(stages.times),
            _flow_run_id(), artifacts_dir, context={"trigger": trigger, "code": code_versions()},
        )
        copy_logs(trained.path, run.path)  # the training's TensorBoard logs, beside the run
        log_run_hparams(run.path)  # its settings and final metrics for the HParams tab (never fails the run)
        report = stages.run("report", build_report, run, chosen.report, artifacts_dir)

    summary = {
        "pipeline": chosen.name,
        "run_id": run.run_id,
        "run_dir": run.path,
        "test_accuracy": run.test_accuracy,
        "report": report.report,
        "report_url": report_address(report.report, artifacts_dir, chosen.name, run.run_id),
        "index": report.index,
        "stages": stages.times,
        "trigger": trigger,
    }
    # outcome, message, champion (and since when), promoted: a nothing-changed run promoted nothing
    summary.update(outcome(run, stages.times, artifacts_dir))
    summary["metric_value"] = metric_value(run.path, chosen.promote.metric)
    publish(summary, chosen.promote.metric, _flow_run_id())
    log.info("%s", done_line(summary))
    return summary


@flow(name="cifar-data", flow_run_name=_run_name, log_prints=True)
def cifar_data(
    pipeline: str = Field("train", description=PIPELINE_HELP),
    overrides: dict[str, Any] | None = Field(None, description=OVERRIDES_HELP),
    config: str = Field(DEFAULT_CONFIG, description=CONFIG_HELP),
) -> dict[str, Any]:
    """Stages 1-2 only: download and cache, then prepare and validate; returns the summary."""
    settings, chosen = _settings(pipeline, overrides, config)
    stages = _Stages(str(settings.data_dir))
    with tags(f"pipeline:{chosen.name}"):
        dataset, validation = _prepare_data(stages, chosen)
    return {
        "pipeline": chosen.name,
        "dataset": asdict(dataset),
        "validation": validation.summary,
        "stages": stages.times,
    }


def report_address(report: str, artifacts_dir: str, pipeline: str, run_id: str) -> str | None:
    """The report on the reports server when CIFAR_REPORTS_URL is set, else None (the path is
    what a terminal and the log show)."""
    from pathlib import Path

    from tasks.report.publishing import report_link, reports_url

    base = reports_url()
    return report_link(Path(report), Path(artifacts_dir), {"pipeline": pipeline, "run_id": run_id}, base) if base else None


def _flow_run_id() -> str | None:
    rid = flow_run.id
    return str(rid) if rid else None
