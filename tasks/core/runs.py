"""The run folder's layout, and reading the runs in it: the one place that knows where a run's
files live and which folders count as runs. The store stage writes this layout, the report stage
and ``cifar runs`` read it::

    <artifacts_dir>/index.html                          every run of every pipeline
    <artifacts_dir>/<pipeline>/registry.json            the champion and why
    <artifacts_dir>/<pipeline>/store-keys/<key>.json    which run a save key produced
    <artifacts_dir>/<pipeline>/runs/<run_id>/           one run: metadata.json, metrics.json,
                                                        history.json, predictions.npz, ...

A run is *published* (complete) when its folder name has no leading dot (dot-folders are being
written or deleted) and both its metadata.json and metrics.json are readable JSON objects.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import CifarError
from tasks.core.files import read_json
from tasks.core.logs import get_logger

RUNS = "runs"
REGISTRY = "registry.json"
STORE_KEYS = "store-keys"
INDEX = "index.html"
METADATA = "metadata.json"
METRICS = "metrics.json"
HISTORY = "history.json"
PREDICTIONS = "predictions.npz"
REPORT = "report.html"
# What a run folder must hold to be reported on.
RUN_FILES = (METADATA, METRICS, HISTORY, PREDICTIONS)


class RunFolderError(CifarError):
    """A run folder or a pipeline's registry is missing, incomplete or unreadable."""


# =========================================================================== layout
def pipeline_dir(artifacts_dir: str | os.PathLike, pipeline: str) -> Path:
    return Path(artifacts_dir) / pipeline


def runs_dir(pipeline_folder: str | os.PathLike) -> Path:
    return Path(pipeline_folder) / RUNS


def run_dir(artifacts_dir: str | os.PathLike, pipeline: str, run_id: str) -> Path:
    return runs_dir(pipeline_dir(artifacts_dir, pipeline)) / run_id


def registry_path(pipeline_folder: str | os.PathLike) -> Path:
    return Path(pipeline_folder) / REGISTRY


def store_keys_dir(pipeline_folder: str | os.PathLike) -> Path:
    return Path(pipeline_folder) / STORE_KEYS


def store_key_path(pipeline_folder: str | os.PathLike, key: str) -> Path:
    return store_keys_dir(pipeline_folder) / f"{key}.json"


def index_path(artifacts_dir: str | os.PathLike) -> Path:
    return Path(artifacts_dir) / INDEX


def pipeline_dir_of(run_folder: str | os.PathLike) -> Path:
    """``<artifacts>/<pipeline>/runs/<run_id>`` -> ``<artifacts>/<pipeline>``."""
    return Path(run_folder).parent.parent


def artifacts_dir_of(run_folder: str | os.PathLike) -> Path:
    """``<artifacts>/<pipeline>/runs/<run_id>`` -> ``<artifacts>``."""
    return pipeline_dir_of(run_folder).parent


def index_href() -> str:
    """The relative link from a run's report.html to the index (``../../../index.html``)."""
    return posixpath.relpath(INDEX, posixpath.join("pipeline", RUNS, "run_id"))


def report_href(pipeline: str, run_id: str) -> str:
    """The relative link from the index to a run's report.html, each part URL-quoted."""
    return "/".join(urllib.parse.quote(part, safe="") for part in (pipeline, RUNS, run_id, REPORT))


# =========================================================================== reading
def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def read_registry(pipeline_folder: str | os.PathLike) -> dict[str, Any]:
    """The pipeline's registry.json; ``{"champion": None}`` when there is none yet."""
    path = registry_path(pipeline_folder)
    if not path.is_file():
        return {"champion": None}
    try:
        registry = read_json(path)
    except ValueError as exc:
        raise RunFolderError(
            f"{path} is not valid JSON ({exc}). Fix or delete it (deleting makes the next run champion)."
        ) from exc
    if not isinstance(registry, dict):
        raise RunFolderError(f"{path} holds no JSON object. Fix or delete it (deleting makes the next run champion).")
    return registry


def champion_id(pipeline_folder: str | os.PathLike) -> str | None:
    """The run id of the pipeline's champion, or None."""
    return (read_registry(pipeline_folder).get("champion") or {}).get("run_id")


def metric_of(run_folder: str | os.PathLike, metric: str) -> float | None:
    """A run's value of ``metric`` from its metrics.json; None when absent or unreadable."""
    try:
        metrics = read_json(Path(run_folder) / METRICS)
    except (OSError, ValueError):
        return None
    return _number(metrics.get(metric)) if isinstance(metrics, dict) else None


def read_history(run_folder: str | os.PathLike) -> list[dict[str, Any]] | None:
    """A run's epochs from its history.json; None when absent or unreadable."""
    try:
        return read_json(Path(run_folder) / HISTORY)["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_run(run_folder: str | os.PathLike) -> dict[str, Any]:
    """Every file the report needs from one run: ``dir``, ``metadata``, ``metrics``,
    ``history`` (the parsed JSON) and ``predictions`` (y_true, y_pred, probs arrays)."""
    import numpy as np

    run_folder = Path(run_folder)
    if not run_folder.is_dir():
        raise RunFolderError(f"run folder {run_folder} does not exist; list runs with `cifar runs` "
                             "or give the path of a folder under artifacts/<pipeline>/runs/")
    missing = [name for name in RUN_FILES if not (run_folder / name).is_file()]
    if missing:
        raise RunFolderError(f"run folder {run_folder} is incomplete: missing {', '.join(missing)}. "
                             "It was not written by a finished `cifar run`; run the pipeline again.")
    out: dict[str, Any] = {"dir": run_folder}
    for name in (METADATA, METRICS, HISTORY):
        try:
            out[name.removesuffix(".json")] = read_json(run_folder / name)
        except ValueError as exc:
            raise RunFolderError(f"{run_folder / name} is not valid JSON ({exc}); "
                                 "run the pipeline again to rewrite the run") from exc
    with np.load(run_folder / PREDICTIONS, allow_pickle=False) as arrays:
        out["predictions"] = {k: arrays[k] for k in ("y_true", "y_pred", "probs")}
    return out


# =========================================================================== listing
@dataclass(frozen=True)
class PublishedRun:
    """One complete run folder with its metadata.json and metrics.json already read."""

    dir: Path
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    champion: bool = False

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def pipeline(self) -> str:
        return self.metadata.get("pipeline", pipeline_dir_of(self.dir).name)

    @property
    def order(self) -> tuple[str, str]:
        """Runs sort by creation time, then run id."""
        return str(self.metadata.get("created_at") or ""), self.dir.name


def _read_object(path: Path) -> dict[str, Any] | None:
    try:
        obj = read_json(path)
    except (OSError, ValueError) as exc:
        get_logger().warning("skipping run %s: unreadable %s (%s)", path.parent, path.name, exc)
        return None
    if not isinstance(obj, dict):
        get_logger().warning("skipping run %s: %s holds no JSON object", path.parent, path.name)
        return None
    return obj


def pipeline_runs(pipeline_folder: str | os.PathLike) -> list[PublishedRun]:
    """The published runs of one pipeline, oldest first, each marked champion or not.
    Raises RunFolderError when the pipeline's registry.json is unreadable."""
    folder = runs_dir(pipeline_folder)
    if not folder.is_dir():
        return []
    champion = champion_id(pipeline_folder)
    runs = []
    for d in folder.iterdir():
        if d.name.startswith(".") or not d.is_dir() or not (d / METADATA).is_file():
            continue
        metadata = _read_object(d / METADATA)
        metrics = _read_object(d / METRICS) if metadata is not None else None
        if metrics is not None:
            runs.append(PublishedRun(d, metadata, metrics, champion=d.name == champion))
    runs.sort(key=lambda run: run.order)
    return runs


def published_runs(artifacts_dir: str | os.PathLike, pipeline: str | None = None) -> list[PublishedRun]:
    """The published runs of every pipeline (or of one), newest first."""
    root = Path(artifacts_dir)
    if pipeline is not None:
        folders = [pipeline_dir(root, pipeline)]
    elif root.is_dir():
        folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    else:
        folders = []
    runs = [run for folder in folders for run in pipeline_runs(folder)]
    runs.sort(key=lambda run: run.order, reverse=True)
    return runs


def list_runs(artifacts_dir: str | os.PathLike, pipeline: str | None = None) -> list[dict[str, Any]]:
    """One row per published run, newest first (all pipelines, or one): what ``cifar runs`` shows.

    Row: pipeline, run_id, created_at, model, epochs, test_accuracy, train_seconds, champion
    (bool, from registry.json), report (report.html's path or None), path."""
    rows = []
    for run in published_runs(artifacts_dir, pipeline):
        training = run.metadata.get("training") or {}
        report = run.dir / REPORT
        rows.append({
            "pipeline": run.pipeline,
            "run_id": run.run_id,
            "created_at": run.metadata.get("created_at"),
            "model": (run.metadata.get("model") or {}).get("name"),
            "epochs": training.get("epochs"),
            "test_accuracy": _number(run.metrics.get("test_accuracy")),
            "train_seconds": training.get("seconds"),
            "champion": run.champion,
            "report": str(report) if report.is_file() else None,
            "path": str(run.dir),
        })
    return rows
