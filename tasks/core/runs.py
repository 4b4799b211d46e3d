"""The run folder's layout, and reading the runs in it: the one place that knows where a run's
files live and which folders count as runs. The store stage writes this layout, the report stage
and ``cifar runs`` read it::

    <artifacts_dir>/index.html                          every run of every pipeline
    <artifacts_dir>/<pipeline>/registry.json            the champion and why
    <artifacts_dir>/<pipeline>/store-keys/<key>.json    which run a save key produced
    <artifacts_dir>/<pipeline>/runs/<run_id>/           one run: metadata.json, metrics.json,
                                                        history.json, predictions.npz, ...

Runs are ordered by ``seq`` in metadata.json: 1, 2, 3... per pipeline, given by the store under
the pipeline's lock as it publishes a run, so no clock (a worker's skewed one, an RTC reset) can
reorder them. Runs saved before ``seq`` existed sort first, by ``created_at`` as they always did.

A run is *published* (complete) when its folder name has no leading dot (dot-folders are being
written or deleted) and both its metadata.json and metrics.json are readable and hold what a run
writes (``tasks.core.run_files``). An unreadable run, or a damaged registry.json, is skipped with a
warning naming the file: it never breaks the listing of the other runs and pipelines.

A published run is *verified* as it is listed (``tasks.core.verify``): metrics.json and the model
files that serve must still have the sha256 metadata.json recorded. One that does not is listed
as damaged (``PublishedRun.damage``), never as champion, whatever registry.json says.
"""

from __future__ import annotations

import heapq
import os
import posixpath
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core import verify
from tasks.core.errors import CifarError
from tasks.core.registry import checksum_problem
from tasks.core.run_files import read_run_file, warn_once

RUNS = "runs"
SEQ = "seq"  # metadata.json's sequence number (see run_order)
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


def load_registry(pipeline_folder: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """(registry, problem): the pipeline's registry.json, ``{"champion": None}`` when there is
    none yet; when it is unreadable, ``{"champion": None}`` and why (the next save rebuilds it)."""
    path = registry_path(pipeline_folder)
    if not path.exists():
        return {"champion": None}, None
    registry, problem = read_run_file(path, "registry")
    problem = problem or checksum_problem(path, registry)
    if problem:
        return {"champion": None}, problem
    return {**registry, "champion": registry.get("champion")}, None


def read_registry(pipeline_folder: str | os.PathLike) -> dict[str, Any]:
    """The pipeline's registry.json; ``{"champion": None}`` when there is none yet or it is
    unreadable (then with a warning naming the file: readers carry on without a champion)."""
    registry, problem = load_registry(pipeline_folder)
    if problem:
        _warn_registry(pipeline_folder, problem)
    return registry


def _warn_registry(pipeline_folder: str | os.PathLike, problem: str) -> None:
    warn_once(registry_path(pipeline_folder), f"{problem}. Until the next run of "
              f"{Path(pipeline_folder).name} rebuilds it from the runs' metadata, no run is "
              "shown as its champion (or fix the file, or delete it).")


def champion_id(pipeline_folder: str | os.PathLike) -> str | None:
    """The run id of the pipeline's champion, or None."""
    return (read_registry(pipeline_folder).get("champion") or {}).get("run_id")


def metric_of(run_folder: str | os.PathLike, metric: str) -> float | None:
    """A run's value of ``metric`` from its metrics.json; None when absent, unreadable, or not
    the file its metadata.json recorded (``tasks.core.verify``)."""
    folder = Path(run_folder)
    metadata, _ = read_run_file(folder / METADATA, "metadata")
    if metadata is None or verify.run_damage(folder, metadata, (verify.METRICS,)):
        return None
    metrics, _ = read_run_file(folder / METRICS, "metrics")
    return _number(metrics.get(metric)) if metrics else None


def test_images(metrics: dict[str, Any]) -> int | None:
    """How many test images a run's metrics were measured on: ``test_size``, else the sum of the
    per-class supports (runs saved before ``test_size`` was written), else None."""
    size = metrics.get("test_size")
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    supports = [row.get("support") for row in metrics.get("per_class") or [] if isinstance(row, dict)]
    if supports and all(isinstance(n, int) for n in supports):
        return sum(supports)
    return None


def read_history(run_folder: str | os.PathLike) -> list[dict[str, Any]] | None:
    """A run's epochs from its history.json; None when absent, or unreadable (with a warning)."""
    path = Path(run_folder) / HISTORY
    history, problem = read_run_file(path, "history")
    if problem and path.exists():
        warn_once(path, f"{problem}; its training history is left out of the plots")
    return history["epochs"] if history else None


def _predictions(path: Path, n_classes: int) -> dict[str, Any]:
    """predictions.npz's arrays, checked against each other and the number of classes."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as arrays:
            out = {k: arrays[k] for k in ("y_true", "y_pred", "probs")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise RunFolderError(f"{path} is not readable ({type(exc).__name__}: {exc}); "
                             "run the pipeline again to rewrite the run") from None
    y_true, y_pred, probs = out["y_true"], out["y_pred"], out["probs"]
    n = len(y_true)
    wrong = (y_true.ndim != 1 or y_pred.shape != y_true.shape or probs.shape != (n, n_classes)
             or not (np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(y_pred.dtype, np.integer))
             or (n and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n_classes)))
    if wrong:
        raise RunFolderError(f"{path} does not match the run: y_true {y_true.shape}, y_pred {y_pred.shape}, "
                             f"probs {probs.shape} for {n_classes} classes (labels must be in "
                             f"[0, {n_classes})); run the pipeline again to rewrite the run")
    return out


def load_run(run_folder: str | os.PathLike) -> dict[str, Any]:
    """Every file the report needs from one run: ``dir``, ``metadata``, ``metrics``,
    ``history`` (the parsed JSON) and ``predictions`` (y_true, y_pred, probs arrays).
    RunFolderError, naming the file and the key, for a missing or damaged one."""
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
        obj, problem = read_run_file(run_folder / name, name.removesuffix(".json"))
        if problem:
            raise RunFolderError(f"{problem}. Restore the file, or run the pipeline again to write a new run.")
        out[name.removesuffix(".json")] = obj
    classes = out["metrics"].get("classes") or (out["metadata"].get("dataset") or {}).get("classes") or []
    out["predictions"] = _predictions(run_folder / PREDICTIONS, len(classes))
    return out


# =========================================================================== order
def sequence_of(metadata: dict[str, Any]) -> int | None:
    """A run's sequence number (metadata.json's ``seq``), None for a run saved before there was one."""
    seq = metadata.get(SEQ)
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def run_order(metadata: dict[str, Any], run_id: str) -> tuple[int, int, str, str]:
    """How a pipeline's runs sort, oldest first: by sequence number, which the store gives each
    run under the pipeline's lock (a clock cannot reorder it); runs without one (saved before
    there was one) before all others, by creation time then run id, as they always sorted."""
    seq = sequence_of(metadata)
    if seq is None:
        return 0, 0, str(metadata.get("created_at") or ""), run_id
    return 1, seq, "", run_id


def next_sequence(metadata: list[dict[str, Any]]) -> int:
    """The sequence number of the next run of a pipeline whose runs hold these metadata.json:
    one past the highest (1 for the first run, or the first since runs had one)."""
    return 1 + max((seq for meta in metadata if (seq := sequence_of(meta)) is not None), default=0)


# =========================================================================== listing
@dataclass(frozen=True)
class PublishedRun:
    """One complete run folder with its metadata.json and metrics.json already read, and what
    does not verify (``damage``: (file name, why) pairs; empty for a sound run). ``named``: the
    registry names it champion; ``champion``: named and verified."""

    dir: Path
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    named: bool = False
    damage: tuple[tuple[str, str], ...] = ()

    @property
    def champion(self) -> bool:
        return self.named and not self.damage

    @property
    def damaged(self) -> str | None:
        """Why the run does not verify (one sentence), or None."""
        return verify.damage_text(self.damage)

    @property
    def value_verified(self) -> bool:
        """metrics.json is the file the store wrote: its numbers may be shown and compared."""
        return verify.METRICS not in dict(self.damage)

    @property
    def test_images(self) -> int | None:
        return test_images(self.metrics)

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def pipeline(self) -> str:
        return self.metadata.get("pipeline", pipeline_dir_of(self.dir).name)

    @property
    def seq(self) -> int | None:
        return sequence_of(self.metadata)

    @property
    def order(self) -> tuple[int, int, str, str]:
        """Where the run sorts among its pipeline's runs (``run_order``: by sequence number)."""
        return run_order(self.metadata, self.dir.name)

    @property
    def created_at(self) -> str:
        return str(self.metadata.get("created_at") or "")


def pipeline_runs(pipeline_folder: str | os.PathLike, skipped: list[str] | None = None,
                  warn_damaged: bool = True) -> list[PublishedRun]:
    """The published runs of one pipeline, oldest first, each marked champion or not. A run whose
    metadata.json or metrics.json is unusable is left out with a warning naming the file (also
    appended to ``skipped``); an unreadable registry.json (see ``read_registry``) leaves every run
    unmarked. A run that does not verify is listed with its ``damage``, with a warning unless
    ``warn_damaged`` is false (a caller that says so itself)."""
    skipped = [] if skipped is None else skipped
    folder = runs_dir(pipeline_folder)
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError as exc:
        skipped.append(f"cannot list {folder} ({exc})")
        warn_once(folder, f"skipping the runs of {Path(pipeline_folder).name}: {skipped[-1]}")
        return []
    registry, problem = load_registry(pipeline_folder)
    if problem:
        skipped.append(f"{problem} (no run is shown as champion)")
        _warn_registry(pipeline_folder, problem)
    champion = (registry.get("champion") or {}).get("run_id")
    runs = []
    for d in entries:
        if d.name.startswith(".") or not d.is_dir() or not (d / METADATA).is_file():
            continue
        metadata, problem = read_run_file(d / METADATA, "metadata")
        metrics, problem = read_run_file(d / METRICS, "metrics") if metadata is not None else (None, problem)
        if problem:
            skipped.append(problem)
            warn_once(d / METADATA, f"skipping run {d.name} of {Path(pipeline_folder).name}: {problem}. "
                      "Restore the file or delete the run folder; the other runs are not affected.")
            continue
        damage = tuple(verify.run_damage(d, metadata).items())
        if damage and warn_damaged:
            warn_once(d / METADATA, f"run {d.name} of {Path(pipeline_folder).name} is damaged: "
                      f"{verify.damage_text(damage)}. To resolve this: {verify.WHAT_TO_DO}.")
        runs.append(PublishedRun(d, metadata, metrics, named=d.name == champion, damage=damage))
    if champion and not any(run.named for run in runs):
        warn_once(registry_path(pipeline_folder), f"{registry_path(pipeline_folder)} names champion "
                  f"{champion}, whose run folder is missing or unreadable; the next run of "
                  f"{Path(pipeline_folder).name} is compared with the best intact run instead")
    runs.sort(key=lambda run: run.order)
    return runs


def interleaved(per_pipeline: list[list[PublishedRun]]) -> list[PublishedRun]:
    """Several pipelines' runs (each list oldest first), newest first: each pipeline's in its
    own order, the pipelines interleaved by creation time (a skewed clock can only shuffle one
    pipeline's runs among another's, never reorder a pipeline's own)."""
    merged = heapq.merge(*per_pipeline, key=lambda run: (run.created_at, run.run_id))
    return list(merged)[::-1]


def published_runs(artifacts_dir: str | os.PathLike, pipeline: str | None = None,
                   skipped: list[str] | None = None) -> list[PublishedRun]:
    """The published runs of every pipeline (or of one), newest first (see ``interleaved``);
    what was left out, and why, is appended to ``skipped``."""
    root = Path(artifacts_dir)
    if pipeline is not None:
        folders = [pipeline_dir(root, pipeline)]
    elif root.is_dir():
        folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    else:
        folders = []
    return interleaved([pipeline_runs(folder, skipped) for folder in folders])


def validation_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's ``validation`` entry (protocol, images, spec, seed, split, described;
    ``tasks.core.holdout.record``), or {} for a run saved before validation splits or a value
    that is not one."""
    record = metrics.get("validation")
    return record if isinstance(record, dict) else {}


def _validation_of(run: "PublishedRun") -> dict[str, Any]:
    record = validation_record(run.metrics)
    held = run.value_verified and record.get("protocol") == "held-out"
    return {"validation_accuracy": _number(run.metrics.get("validation_accuracy")) if held else None,
            "validation_images": _number(run.metrics.get("validation_size")) if held else None,
            "validation_protocol": record.get("protocol") if run.value_verified else None}


def list_runs(artifacts_dir: str | os.PathLike, pipeline: str | None = None) -> list[dict[str, Any]]:
    """One row per published run, newest first (all pipelines, or one): what ``cifar runs`` shows.

    Row: pipeline, run_id, created_at, model, epochs, test_accuracy (None when metrics.json does
    not verify), test_images (how many the accuracy was measured on), validation_accuracy and
    validation_images (held out; None for a run validated on the test split or saved before
    validation splits), validation_protocol ("held-out", "test" or None), train_seconds, champion
    (bool: registry.json names it and it verifies), damaged (why it does not verify, or None),
    named_champion (registry.json names it), report (report.html's path or None), path."""
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
            "test_accuracy": _number(run.metrics.get("test_accuracy")) if run.value_verified else None,
            "test_images": run.test_images if run.value_verified else None,
            **_validation_of(run),
            "train_seconds": training.get("seconds"),
            "champion": run.champion,
            "damaged": run.damaged,
            "named_champion": run.named,
            "report": str(report) if report.is_file() else None,
            "path": str(run.dir),
        })
    return rows


def damaged_runs(artifacts_dir: str | os.PathLike, pipeline: str | None = None) -> dict[str, str]:
    """{run folder: why it does not verify} for each damaged published run (what ``cifar runs``
    warns about; such a run is never champion, and the next save replaces a damaged champion)."""
    return {str(run.dir): run.damaged for run in published_runs(artifacts_dir, pipeline) if run.damage}
