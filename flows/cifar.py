"""The ``cifar`` flow: one pipeline from pipelines.yaml, every slow step cached and verified."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow, tags
from prefect.runtime import flow_run
from pydantic import Field

from flows.config import DEFAULT_CONFIG, PipelineConfig, Settings, load_settings
from tasks.core.caching import bind_local
from tasks.core.logs import get_logger


def _run_name() -> str:
    params = flow_run.parameters or {}
    return f"{params.get('pipeline', 'cifar')} · {datetime.now():%Y-%m-%d %H:%M}"


class _Stages:
    """Runs stages, timing each and noting whether Prefect served it from its cache."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.times: dict[str, dict[str, Any]] = {}

    def run(self, stage: str, task, *args, refresh: bool = False, options: dict | None = None, **kwargs):
        t0 = time.perf_counter()
        opts = {**(options or {}), **({"refresh_cache": True} if refresh else {})}
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
    from tasks.download import decode_dataset, fetch_archive, retry_options
    from tasks.prepare import validate_dataset

    archive = stages.run("download", fetch_archive, chosen.dataset, stages.data_dir,
                         options=retry_options(chosen.dataset))
    dataset = stages.run("download", decode_dataset, archive, chosen.dataset, stages.data_dir)
    validation = stages.run("prepare", validate_dataset, dataset, chosen.prepare, stages.data_dir)
    return dataset, validation


# The flows' parameters, as Prefect's UI form shows them (Prefect reads these Field defaults).
PIPELINE_HELP = "a pipeline of the config file: its key under `pipelines:`"
OVERRIDES_HELP = ('settings that differ from the file, dotted keys as `cifar run --set` takes them: '
                  '{"training.epochs": 1, "dataset.limit_train": 500}; checked like the file')
CONFIG_HELP = "the pipelines file (YAML); relative to the working directory of the flow run"


@flow(name="cifar", flow_run_name=_run_name, log_prints=True)
def cifar(
    pipeline: str = Field("train", description=PIPELINE_HELP),
    overrides: dict[str, Any] | None = Field(None, description=OVERRIDES_HELP),
    force: bool = Field(False, description="retrain even when a model for the same inputs exists"),
    config: str = Field(DEFAULT_CONFIG, description=CONFIG_HELP),
) -> dict[str, Any]:
    """Train, register and report one pipeline of pipelines.yaml.

    1) download and cache - fetch the archive (retried, resumable, checksum-verified) and decode it
       into a memory-mapped uint8 cache keyed by its content;
    2) prepare and validate - the pandera data contract over the scaled pixels and one-hot labels;
    3) train - the pipeline's Keras model, resumable, cached by data + config + code;
    4) save and register - evaluate, write the run folder, promote a champion or not;
    5) report - the run's self-contained HTML report and artifacts/index.html.

    ``overrides`` maps dotted keys to values, as ``--set`` does (``{"training.epochs": 1}``);
    ``force`` retrains even when a trained model for the same inputs exists.
    """
    from tasks.report import build_report
    from tasks.store import save_run
    from tasks.train import train_model

    settings, chosen = _settings(pipeline, overrides, config)
    data_dir, artifacts_dir = str(settings.data_dir), str(settings.artifacts_dir)
    stages = _Stages(data_dir)
    log = get_logger()
    log.info("pipeline %s: %s", chosen.name, chosen.description or "(no description)")

    with tags(f"pipeline:{chosen.name}", f"model:{chosen.model}"):
        dataset, validation = _prepare_data(stages, chosen)
        trained = stages.run(
            "train", train_model, dataset, validation, chosen.model, chosen.training, chosen.prepare, data_dir,
            force=force, refresh=force,
        )
        run = stages.run(
            "save", save_run, chosen.to_dict(), dataset, validation, trained, dict(stages.times),
            _flow_run_id(), artifacts_dir,
        )
        report = stages.run("report", build_report, run, chosen.report, artifacts_dir)

    summary = {
        "pipeline": chosen.name,
        "run_id": run.run_id,
        "run_dir": run.path,
        "test_accuracy": run.test_accuracy,
        "promoted": run.promoted,
        "promotion_reason": run.reason,
        "report": report.report,
        "index": report.index,
        "stages": stages.times,
    }
    log.info(
        "done: test accuracy %.4f, %s; report %s", run.test_accuracy,
        "promoted to champion" if run.promoted else "not promoted", report.report,
    )
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


def _flow_run_id() -> str | None:
    rid = flow_run.id
    return str(rid) if rid else None
