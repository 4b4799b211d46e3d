"""The ``cifar-predict`` flow: batch scoring of a folder or archive of images with a run's model."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from prefect import flow, tags
from prefect.runtime import flow_run
from pydantic import Field

from flows.config import DEFAULT_CONFIG, load_settings
from flows.deploy import require_pinned
from tasks.core.caching import bind_local
from tasks.core.logs import get_logger

INPUT_HELP = ("what to score: a folder of PNG/JPEG images, an archive of them (.tar, .tar.gz, .zip), "
              "one image, or an http(s) URL of one of these")
PIPELINE_HELP = "the pipeline whose model scores (default: train, or the one pipeline that has runs)"
RUN_HELP = "champion (the pipeline's promoted run), latest, or a run id"
OUTPUT_HELP = ("folder for predictions.csv and predictions.html; default "
               "<artifacts_dir>/<pipeline>/predictions/<input name>-<scoring key>/")
CONFIG_HELP = "the pipelines file (YAML) whose artifacts_dir holds the runs; relative to the flow run's working directory"
OVERRIDES_HELP = ('settings that differ from the file, dotted keys as `cifar predict --set` takes them '
                  '({"artifacts_dir": "/shared/artifacts"}); checked like the file')


def _run_name() -> str:
    from flows.cifar import run_name

    params = flow_run.parameters or {}
    rid = flow_run.id
    return run_name(f"predict {params.get('pipeline') or 'default'}", str(rid) if rid else None)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "predictions"


def default_output(artifacts_dir: Path, pipeline: str, label: str, key: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(label.rstrip("/")).name).strip("._") or "input"
    return artifacts_dir / pipeline / "predictions" / f"{stem[:60]}-{key[:8]}"


def page_link(page: Path, artifacts_dir: Path, base: str | None) -> str:
    """The predictions page on the reports server (``CIFAR_REPORTS_URL``, which serves
    artifacts_dir) when set and the page lies under artifacts_dir; else its file URI."""
    try:
        rel = page.resolve().relative_to(Path(artifacts_dir).resolve())
    except ValueError:
        return page.as_uri()
    return f"{base}/{rel.as_posix()}" if base else page.as_uri()


def check_output(output: Path) -> None:
    """``output`` must be a folder, or not exist yet under a folder that can be written."""
    from tasks.predict.errors import InputError

    if output.exists() and not output.is_dir():
        raise InputError(f"output={output} is a file, not a folder; nothing was scored. Give a folder "
                         "(it is created if missing), or remove the file.")
    parent = next((p for p in (output, *output.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output={output}: {parent} cannot be written; nothing was scored. Choose a "
                         "folder you can write to.")


def publish_artifacts(pipeline: str, run_id: str, scores, page: Path, csv_path: Path,
                      artifacts_dir: Path | None = None) -> None:
    """A table artifact of the class counts and a link artifact to the page."""
    from prefect.artifacts import create_link_artifact, create_table_artifact

    from tasks.report.publishing import reports_url

    rows = [{"class": r["class"], "images": r["images"]} for r in scores.counts]
    if scores.failed:
        rows.append({"class": "(not scored)", "images": scores.failed})
    create_table_artifact(key=artifact_key("predictions", pipeline), table=rows,
                          description=f"Predicted classes of {scores.images} file(s), model {pipeline} run "
                                      f"{run_id}; every file in {csv_path}")
    base = reports_url()
    link = page_link(page, artifacts_dir or page.parent, base)
    served = link.startswith("http")
    create_link_artifact(key=artifact_key("predictions-page", pipeline), link=link,
                         link_text=f"predictions {pipeline} {run_id}",
                         description="Thumbnails with their predicted classes" + (
                             " (on the reports server)" if served else
                             " (a local file; `cifar reports` serves artifacts_dir over HTTP: set CIFAR_REPORTS_URL)"))


@flow(name="cifar-predict", flow_run_name=_run_name, log_prints=True)
def cifar_predict(
    input: str = Field(..., description=INPUT_HELP),  # `--param input=...`: the name users type
    pipeline: str | None = Field(None, description=PIPELINE_HELP),
    run: str = Field("champion", description=RUN_HELP),
    output: str | None = Field(None, description=OUTPUT_HELP),
    top_k: int = Field(3, ge=1, description="how many classes each row lists, best first"),
    config: str = Field(DEFAULT_CONFIG, description=CONFIG_HELP),
    overrides: dict[str, Any] | None = Field(None, description=OVERRIDES_HELP),
) -> dict[str, Any]:
    """Score a folder or archive of images with a run's model.

    1) resolve the model - the pipeline's champion, latest run or a run id, its files checked
       against the sha256 in its metadata.json;
    2) fetch - an http(s) input is downloaded (retried on network faults), then hashed;
    3) score - every image decoded, resized to the model's input and scored in batches: cached by
       the model's sha256 + the input's content hash + top-k, so the same model never scores the
       same input twice;
    4) publish - predictions.csv and predictions.html copied into ``output``, a table artifact of
       the class counts and a link artifact to the page.
    """
    from tasks.predict.tasks import fetch_input, score_images
    from tasks.predict.batch import CSV, PAGE, publish_copy
    from tasks.predict.engine import verified_file
    from tasks.predict.fetch import is_url, remove_fetched
    from tasks.predict.jobs import KEEP_SCORES, prune_scores
    from tasks.predict.inputs import describe_input
    from tasks.predict.resolve import SERVING_FILES, resolve_model

    require_pinned(pipeline)  # the deployment of a pipeline scores with that pipeline's models only
    settings = load_settings(config, overrides or {})
    data_dir, artifacts_dir = str(settings.data_dir), settings.artifacts_dir
    log = get_logger()
    if output:
        check_output(Path(output))  # before any download or scoring, not after them
    model = resolve_model(artifacts_dir, pipeline, run)
    for name in SERVING_FILES:
        verified_file(model, name)  # a tampered model is refused even when the scores are cached
    log.info("model: %s run %s%s", model.pipeline, model.run_id, " (champion)" if model.champion else "")

    inputs_dir = Path(data_dir) / "predict-inputs"
    with tags(f"pipeline:{model.pipeline}", "predict"):
        local = bind_local(fetch_input, data_dir)(input, data_dir) if is_url(input) else input
        try:
            source = describe_input(local)
            scores = bind_local(score_images, data_dir)(model, source, top_k, data_dir, input)
        finally:
            if local != input:  # a downloaded input is not kept once scored (or refused)
                remove_fetched(local, inputs_dir)
        prune_scores(data_dir, keep=KEEP_SCORES, current=scores.key)

    out = Path(output) if output else default_output(artifacts_dir, model.pipeline, input, scores.key)
    files = publish_copy(Path(scores.path), out)
    publish_artifacts(model.pipeline, model.run_id, scores, files[PAGE], files[CSV], Path(artifacts_dir))
    log.info("done: %d of %d file(s) scored; %s", scores.scored, scores.images, files[CSV])
    return {"pipeline": model.pipeline, "run_id": model.run_id, "images": scores.images,
            "scored": scores.scored, "failed": scores.failed, "counts": scores.counts,
            "csv": str(files[CSV]), "page": str(files[PAGE]), "key": scores.key}
