"""Which run's model predicts: a pipeline's champion, its latest run, or a run id; by default the
champion of ``train``, or of the one pipeline that has runs. Read through ``tasks.core.runs``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tasks.core import runs, verify
from tasks.predict.errors import NoModelError

DEFAULT_PIPELINE = "train"
CHAMPION, LATEST = "champion", "latest"
SERVING_FILES = ("model.tflite", "classes.json")  # what scoring reads, each checked by its sha256


@dataclass(frozen=True)
class ModelRef:
    """The chosen run: where it is and the sha256 its metadata.json records for each file that
    scoring reads (a small record: the flow hands it to the scoring task)."""

    pipeline: str
    run_id: str
    path: str
    champion: bool
    sha256: dict[str, str | None]

    @property
    def model_sha256(self) -> str | None:
        return self.sha256.get("model.tflite")


def pipelines_with_runs(artifacts_dir: str | os.PathLike) -> list[str]:
    root = Path(artifacts_dir)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and runs.pipeline_runs(d))


def default_pipeline(artifacts_dir: str | os.PathLike) -> str:
    """``train`` when it has runs, else the one pipeline that has; an error naming them otherwise."""
    found = pipelines_with_runs(artifacts_dir)
    if DEFAULT_PIPELINE in found or len(found) == 1:
        return DEFAULT_PIPELINE if DEFAULT_PIPELINE in found else found[0]
    if not found:
        raise NoModelError(f"no trained runs under {artifacts_dir}: train one first "
                           "(`cifar run smoke-jpeg` takes about a minute), or pass --config FILE "
                           "for the pipelines file whose artifacts_dir holds your runs.")
    raise NoModelError(f"{artifacts_dir}: pipeline {DEFAULT_PIPELINE!r} has no runs and several others do "
                       f"({', '.join(found)}); choose one with --pipeline NAME.")


def _recent(published: list[runs.PublishedRun], n: int = 5) -> str:
    ids = [run.run_id for run in reversed(published)][:n]
    return ", ".join(ids) + (" ..." if len(published) > n else "")


def _sound(chosen: runs.PublishedRun, pipeline: str, published: list[runs.PublishedRun]) -> runs.PublishedRun:
    """``chosen`` when it verifies (``tasks.core.verify``); a damaged run is never served."""
    if chosen.damage:
        what = "the champion registry.json names" if chosen.named else "run"
        raise NoModelError(f"{what} {chosen.run_id} of {pipeline} is damaged, so it was not loaded: "
                           f"{chosen.damaged}. To resolve this: {verify.WHAT_TO_DO}; or choose another "
                           f"run with --run RUN_ID ({_recent([r for r in published if not r.damage])}).")
    return chosen


def choose_run(published: list[runs.PublishedRun], pipeline: str, run: str,
               pipeline_folder: Path) -> runs.PublishedRun:
    """The run ``run`` names among a pipeline's published runs (oldest first); never a damaged
    one (its message says what is wrong and what to do)."""
    if not published:
        raise NoModelError(f"pipeline {pipeline!r} has no runs under {pipeline_folder.parent}; train it "
                           f"with `cifar run {pipeline}`, or choose another with --pipeline NAME.")
    if run == LATEST:
        return _sound(published[-1], pipeline, published)
    if run == CHAMPION:
        for candidate in published:
            if candidate.named:
                return _sound(candidate, pipeline, published)
        champion = runs.champion_id(pipeline_folder)
        why = (f"its registry names {champion}, which is not a published run" if champion
               else f"no run has been promoted in {runs.registry_path(pipeline_folder)}")
        raise NoModelError(f"pipeline {pipeline!r} has no champion yet ({why}). Use --run latest, or a "
                           f"run id: {_recent(published)}.")
    for candidate in published:
        if candidate.run_id == run:
            return _sound(candidate, pipeline, published)
    raise NoModelError(f"pipeline {pipeline!r} has no run {run!r} under {runs.runs_dir(pipeline_folder)}; "
                       f"its runs, newest first: {_recent(published)} (`cifar runs {pipeline}` lists them).")


def resolve_model(artifacts_dir: str | os.PathLike, pipeline: str | None = None,
                  run: str | None = None) -> ModelRef:
    """The run to predict with: ``run`` is ``champion`` (the default), ``latest`` or a run id."""
    name = pipeline or default_pipeline(artifacts_dir)
    folder = runs.pipeline_dir(artifacts_dir, name)
    chosen = choose_run(runs.pipeline_runs(folder), name, run or CHAMPION, folder)
    files = chosen.metadata.get("files") or {}
    return ModelRef(pipeline=name, run_id=chosen.run_id, path=str(chosen.dir), champion=chosen.champion,
                    sha256={f: files.get(f) for f in SERVING_FILES})
