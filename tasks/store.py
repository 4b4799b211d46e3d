"""Stage 4: save the model and register the run (issue: model saving and registry).

A run folder ``<artifacts_dir>/<pipeline>/runs/<run_id>/`` holds everything needed to trust,
reload, serve and compare a trained model::

    model.keras        the trained model (Keras 3 native), byte-identical to the train stage's
    savedmodel/        model.export(): a TF SavedModel with a ``serve`` endpoint
    history.json/.csv  every epoch's metrics and seconds
    metrics.json       test loss/accuracy, per-class precision/recall/accuracy, confusion matrix
    predictions.npz    y_true, y_pred, probs over the cached test split, in order
    metadata.json      config, dataset, validation, cache keys, versions, devices, stage times,
                       the model's layers, train.json, the promotion decision, every file's sha256

It is written into a dot-prefixed temp folder beside the runs and renamed into place only when
complete, so a crash never leaves a half-run that ``list_runs`` (or the report index) could see.

Per pipeline, ``<artifacts_dir>/<pipeline>/registry.json`` names the champion. A new run replaces
it only when it beats it on ``promote.metric`` by at least ``promote.min_delta``; the decision and
its reason go into the run's metadata. ``keep_last`` prunes old runs, never the champion.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import platform
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from prefect import task

from tasks.core.settings import SETTINGS
from tasks.core.caching import VerifiedCache
from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_json, atomic_write_text, file_lock, read_json
from tasks.core.hashing import code_fingerprint, hash_file, stable_hash, to_jsonable
from tasks.core.logs import get_logger

EVAL_BATCH = 128  # test images per predict call: at 1,000 the activations alone took ~300 MB more peak memory
_EPS = 1e-7  # probability clip in the cross-entropy, as Keras does
_TOL = 1e-12  # float slack when comparing an improvement with min_delta


@dataclass(frozen=True)
class PromoteConfig:
    """``promote:`` in pipelines.yaml: when a new run replaces the champion."""

    __pydantic_config__ = SETTINGS

    metric: Literal["test_accuracy", "test_loss"] = "test_accuracy"
    direction: Literal["max", "min"] = "max"
    min_delta: float = 0.0

    def problems(self) -> list[tuple[str, str]]:
        if self.min_delta < 0:
            return [("min_delta", f"must be >= 0, got {self.min_delta}")]
        return []


@dataclass(frozen=True)
class RunRecord:
    """What the store stage hands on (to the report and the flow's summary)."""

    pipeline: str
    run_id: str
    path: str  # the run folder
    test_accuracy: float
    promoted: bool
    reason: str


class ModelIntegrityError(CifarError):
    """model.keras is not the file the train stage recorded: it is never loaded."""


class StoreError(CifarError):
    """The train stage's output folder is incomplete or unreadable."""


# =========================================================================== pure functions
def _fmt(v: float) -> str:
    """0.712 -> '0.712', 0.70125 -> '0.7013', 0.5 -> '0.500' (at least 3, at most 4 decimals)."""
    s = f"{v:.4f}"
    return s[:-1] if s.endswith("0") else s


def decide_promotion(
    candidate_value: float,
    champion: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    cfg: PromoteConfig,
) -> dict[str, Any]:
    """Whether a new run with ``candidate_value`` (of ``cfg.metric``) becomes the champion.

    ``champion``: the registry's champion ``{"run_id", "metric", "value", ...}`` or None.
    ``previous``: the pipeline's latest earlier run ``{"run_id", "value"}`` or None (recorded for
    the report only; the rule compares with the champion). The candidate must improve on the
    champion by at least ``min_delta`` in ``cfg.direction`` (a tie never replaces a champion, even
    with min_delta 0); a NaN score is never promoted. Returns the metadata's ``promotion`` dict.
    """
    metric = cfg.metric
    value = float(candidate_value)
    out: dict[str, Any] = {
        "metric": metric,
        "direction": cfg.direction,
        "min_delta": cfg.min_delta,
        "value": value,
        "champion_before": champion.get("run_id") if champion else None,
        "champion_value": champion.get("value") if champion else None,
        "previous_run": previous.get("run_id") if previous else None,
        "previous_value": previous.get("value") if previous else None,
    }
    if math.isnan(value):
        stays = f": champion stays {champion['run_id']}" if champion else ""
        return {**out, "promoted": False, "reason": f"{metric} is NaN (training diverged?): kept as a run, not promoted{stays}"}
    if champion is None:
        return {**out, "promoted": True, "reason": "first run of this pipeline"}
    if champion.get("metric", metric) != metric or champion.get("value") is None:
        return {
            **out,
            "promoted": True,
            "reason": f"champion {champion.get('run_id')} was chosen by {champion.get('metric')} and has "
            f"no {metric} to compare with; the promotion metric changed, so this run takes over",
        }
    champ = float(champion["value"])
    delta = value - champ if cfg.direction == "max" else champ - value
    better = "higher" if cfg.direction == "max" else "lower"
    if cfg.min_delta > 0:
        promoted = delta >= cfg.min_delta - _TOL
    else:
        promoted = delta > _TOL
    if promoted:
        reason = (
            f"{metric} {_fmt(value)} beats champion {_fmt(champ)} by {_fmt(delta)} "
            f">= min_delta {cfg.min_delta:g} ({better} is better)"
        )
    else:
        need = f"by min_delta {cfg.min_delta:g}" if cfg.min_delta > 0 else "(a tie is not enough)"
        reason = (
            f"{metric} {_fmt(value)} does not beat champion {_fmt(champ)} {need} "
            f"(improvement {_fmt(delta)}, {better} is better): kept as a run, champion stays {champion['run_id']}"
        )
    return {**out, "promoted": bool(promoted), "reason": reason}


def per_class_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, classes: list[str] | None = None
) -> dict[str, Any]:
    """Per-class precision, recall and accuracy plus the confusion matrix (NumPy only).

    ``confusion_matrix[i][j]`` counts test images of true class i predicted as j. Per-class
    ``accuracy`` is the usual "accuracy of class i": the fraction of class-i images classified
    correctly, which equals its recall. ``precision`` of a class never predicted is 0.0 (and its
    recall 0.0 when it has no images), as scikit-learn's ``zero_division=0``.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    c = int(num_classes)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= c):
            raise ValueError(f"{name} holds labels outside [0, {c}): min {y.min()}, max {y.max()}")
    cm = np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    names = list(classes) if classes is not None else list(range(c))
    rows = [
        {
            "class": names[i],
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "accuracy": float(recall[i]),
            "support": int(support[i]),
        }
        for i in range(c)
    ]
    return {"per_class": rows, "confusion_matrix": cm.astype(int).tolist()}


def layer_table(model) -> list[dict[str, Any]]:
    """One row per top-level layer: name, class, output shape (batch dim None), parameters, and
    ``kernel_size`` for convolutions.

    The params column sums to ``model.count_params()`` (a nested model is one row)."""
    rows = []
    for layer in model.layers:
        try:
            shape = layer.output.shape
            shape = [None if d is None else int(d) for d in shape]
        except (AttributeError, ValueError, TypeError):
            shape = None
        row = {"name": layer.name, "class": type(layer).__name__, "output_shape": shape,
               "params": int(layer.count_params())}
        kernel = getattr(layer, "kernel_size", None)  # convolutions: lets the report explain params
        if isinstance(kernel, (tuple, list)):
            row["kernel_size"] = [int(k) for k in kernel]
        rows.append(row)
    return rows


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx`` (UTC time + 6 random hex): sorts by time, never collides."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def sha256_tree(path: str | os.PathLike) -> str:
    """One sha256 for a folder: over the sorted relative paths and the sha256 of each file."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(root).as_posix()}\0{hash_file(p).sha256}\n".encode())
    return h.hexdigest()


def history_csv(history: dict[str, Any]) -> str:
    """history.json's epochs as CSV: epoch, loss, accuracy, val_loss, val_accuracy, seconds (those
    present), then any other key in first-seen order."""
    epochs = history.get("epochs", [])
    seen: list[str] = []
    for e in epochs:
        seen += [k for k in e if k not in seen]
    first = [k for k in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds") if k in seen]
    cols = first + [k for k in seen if k not in first]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for e in epochs:
        w.writerow({k: e.get(k, "") for k in cols})
    return buf.getvalue()


def _complete_runs(pipeline_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Published runs of one pipeline, oldest first: no dot-folders, metadata.json readable."""
    runs_dir = pipeline_dir / "runs"
    if not runs_dir.is_dir():
        return []
    out = []
    for d in runs_dir.iterdir():
        if d.name.startswith(".") or not d.is_dir() or not (d / "metadata.json").is_file():
            continue
        try:
            meta = read_json(d / "metadata.json")
        except (OSError, ValueError) as exc:
            get_logger().warning("skipping run %s: unreadable metadata.json (%s)", d, exc)
            continue
        out.append((d, meta))
    out.sort(key=lambda dm: (str(dm[1].get("created_at", "")), dm[0].name))
    return out


def _read_registry(pipeline_dir: Path) -> dict[str, Any]:
    p = pipeline_dir / "registry.json"
    if not p.is_file():
        return {"champion": None}
    try:
        return read_json(p)
    except ValueError as exc:
        raise StoreError(
            f"{p} is not valid JSON ({exc}). Fix or delete it (deleting makes the next run champion)."
        ) from exc


def _metric_of(run_dir: Path, metric: str) -> float | None:
    try:
        v = read_json(run_dir / "metrics.json").get(metric)
    except (OSError, ValueError):
        return None
    return None if v is None else float(v)


def list_runs(artifacts_dir: str | os.PathLike, pipeline: str | None = None) -> list[dict[str, Any]]:
    """One row per published run, newest first (all pipelines, or one).

    Row: pipeline, run_id, created_at, model, epochs, test_accuracy, train_seconds, champion
    (bool, from registry.json), report (report.html's path or None), path. Dot-folders (runs being
    written or deleted) and folders without metadata.json are ignored."""
    root = Path(artifacts_dir)
    if pipeline is not None:
        pipeline_dirs = [root / pipeline]
    else:
        pipeline_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) if root.is_dir() else []
    rows = []
    for pdir in pipeline_dirs:
        try:
            champ = (_read_registry(pdir).get("champion") or {}).get("run_id")
        except StoreError as exc:
            get_logger().warning("%s", exc)
            champ = None
        for d, meta in _complete_runs(pdir):
            training = meta.get("training") or {}
            report = d / "report.html"
            rows.append(
                {
                    "pipeline": meta.get("pipeline", pdir.name),
                    "run_id": d.name,
                    "created_at": meta.get("created_at"),
                    "model": (meta.get("model") or {}).get("name"),
                    "epochs": training.get("epochs"),
                    "test_accuracy": _metric_of(d, "test_accuracy"),
                    "train_seconds": training.get("seconds"),
                    "champion": d.name == champ,
                    "report": str(report) if report.is_file() else None,
                    "path": str(d),
                }
            )
    rows.sort(key=lambda r: (str(r["created_at"] or ""), r["run_id"]), reverse=True)
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_runs_table(rows: list[dict[str, Any]]) -> str:
    """The rows of list_runs as aligned text (``cifar runs``); ``*`` marks each champion."""
    if not rows:
        return "no runs yet"
    head = ["PIPELINE", "RUN ID", "CREATED (UTC)", "MODEL", "EPOCHS", "TEST ACC", "TRAIN TIME", "CHAMPION", "REPORT"]
    table = [head]
    for r in rows:
        created = str(r.get("created_at") or "-")[:16].replace("T", " ")
        acc = r.get("test_accuracy")
        table.append(
            [
                str(r.get("pipeline")),
                str(r.get("run_id")),
                created,
                str(r.get("model") or "-"),
                "-" if r.get("epochs") is None else str(r["epochs"]),
                "-" if acc is None else f"{acc:.4f}",
                _duration(r.get("train_seconds")),
                "*" if r.get("champion") else "",
                r.get("report") or "-",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    right = {4, 5, 6}  # numbers align right
    lines = []
    for row in table:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dir(d: Path) -> None:
    """Rename to a dot-name first (invisible at once), then delete."""
    gone = d.with_name(f".deleting-{d.name}-{os.getpid()}")
    os.rename(d, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _clean_stale(runs_dir: Path) -> list[str]:
    """Temp folders of saves whose process died (kill -9) and half-deleted runs."""
    removed = []
    if not runs_dir.is_dir():
        return removed
    for d in runs_dir.iterdir():
        if not d.name.startswith("."):
            continue
        pid_s = d.name.rsplit("-", 1)[-1]
        if d.name.startswith(".deleting-") or (d.name.startswith(".tmp-") and pid_s.isdigit() and not _pid_alive(int(pid_s))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def prune_runs(pipeline_dir: str | os.PathLike, keep_last: int | None, champion_id: str | None) -> list[str]:
    """Delete all but the newest ``keep_last`` runs, never the champion; returns the removed ids.

    Store-key mappings that pointed at a removed run go too. ``keep_last`` None keeps all."""
    pipeline_dir = Path(pipeline_dir)
    if keep_last is None:
        return []
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    runs = [d for d, _ in _complete_runs(pipeline_dir)]  # oldest first
    doomed = [d for d in runs[: max(len(runs) - keep_last, 0)] if d.name != champion_id]
    removed = []
    for d in doomed:
        _remove_dir(d)
        removed.append(d.name)
    keys_dir = pipeline_dir / "store-keys"
    if removed and keys_dir.is_dir():
        for k in keys_dir.glob("*.json"):
            try:
                if read_json(k).get("run_id") in removed:
                    k.unlink()
            except (OSError, ValueError):
                continue
    return removed


# =========================================================================== evaluation
def verify_model_file(model_path: str | os.PathLike, expected_sha256: str, recorded_in: str) -> None:
    """Raise ModelIntegrityError unless the file's sha256 is the one recorded; call before loading."""
    actual = hash_file(model_path).sha256
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"{model_path}: sha256 {actual[:16]}... differs from {expected_sha256[:16]}... recorded in "
            f"{recorded_in}; the model file was altered or truncated after training, so it was not loaded. "
            "To resolve this: retrain it (`cifar run <pipeline> --force`) or restore the original file."
        )


def predict_probs(model, x: np.ndarray, mean=None, std=None, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities (N, C) float32 for uint8 images ``x`` (a memory map is fine), scaled
    batch by batch with ``tasks.core.pixels.scale_pixels`` exactly as in training."""
    from tasks.core.pixels import scale_pixels

    out = []
    for i in range(0, len(x), batch_size):
        xb = scale_pixels(np.asarray(x[i : i + batch_size]), mean, std)
        out.append(np.asarray(model.predict_on_batch(xb), dtype=np.float32))
    probs = np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)
    if probs.size and (probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)):
        # logits (no softmax in the model): turn them into probabilities
        z = probs.astype(np.float64) - probs.max(axis=1, keepdims=True)
        probs = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def evaluation_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """metrics.json from the predictions: loss = mean cross-entropy (probs clipped to [1e-7, 1])."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1).astype(np.int64)
    p_true = np.clip(probs[np.arange(len(y_true)), y_true].astype(np.float64), _EPS, 1.0)
    n = len(y_true)
    return {
        "test_loss": float(-np.log(p_true).mean()) if n else float("nan"),
        "test_accuracy": float((y_pred == y_true).sum() / n) if n else float("nan"),
        "test_size": n,
        "classes": list(classes),
        **per_class_metrics(y_true, y_pred, len(classes), classes),
    }


def _versions() -> dict[str, str]:
    import keras
    import prefect
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "prefect": prefect.__version__,
        "numpy": np.__version__,
    }


# =========================================================================== the run folder
def _read_train_outputs(trained) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    tdir = Path(trained.path)
    for name in ("train.json", "history.json", "model.keras"):
        if not (tdir / name).is_file():
            raise StoreError(
                f"{tdir / name} is missing: the train stage's folder is incomplete. "
                "Rerun the pipeline (the train stage rebuilds it)."
            )
    try:
        return tdir, read_json(tdir / "train.json"), read_json(tdir / "history.json")
    except ValueError as exc:
        raise StoreError(f"{tdir}: train.json or history.json is not valid JSON ({exc}); rerun the pipeline.") from exc


def store_key(pipeline: dict[str, Any], dataset, trained) -> str:
    """The content key of a saved run: the trained model (key + file sha256), the evaluation data,
    the pipeline and its promotion rule, and this module's code. Never a path or a run id."""
    train_file = Path(trained.path) / "train.json"
    try:
        train_json = read_json(train_file)
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{train_file} cannot be read ({exc}): the train stage's folder is incomplete. "
            "Rerun the pipeline (the train stage rebuilds it)."
        ) from exc
    return stable_hash(
        "store",
        trained.key,
        train_json.get("model_sha256"),
        dataset.content or dataset.fingerprint,
        pipeline["name"],
        pipeline.get("promote"),
        code_fingerprint(sys.modules[__name__]),
    )


def _run_record(run_dir: Path, meta: dict[str, Any]) -> RunRecord:
    promo = meta.get("promotion") or {}
    return RunRecord(
        pipeline=meta["pipeline"],
        run_id=meta["run_id"],
        path=str(run_dir),
        test_accuracy=float(read_json(run_dir / "metrics.json")["test_accuracy"]),
        promoted=bool(promo.get("promoted")),
        reason=str(promo.get("reason", "")),
    )


def existing_run(pipeline_dir: str | os.PathLike, key: str) -> Path | None:
    """The published run saved under store key ``key``, if it is still complete and intact
    (metadata.json names the key; model.keras has the sha256 it recorded)."""
    pipeline_dir = Path(pipeline_dir)
    candidates = []
    mapping = pipeline_dir / "store-keys" / f"{key}.json"
    try:
        candidates.append(pipeline_dir / "runs" / read_json(mapping)["run_id"])
    except (OSError, ValueError, KeyError):
        pass
    for run_dir in candidates:
        try:
            meta = read_json(run_dir / "metadata.json")
        except (OSError, ValueError):
            continue
        model = run_dir / "model.keras"
        if (
            (meta.get("cache_keys") or {}).get("store") == key
            and model.is_file()
            and (run_dir / "metrics.json").is_file()
            and hash_file(model).sha256 == (meta.get("files") or {}).get("model.keras")
        ):
            return run_dir
    return None


def store_run(
    pipeline: dict[str, Any],
    dataset,
    validation,
    trained,
    stages: dict[str, Any],
    flow_run_id: str | None,
    artifacts_dir: str | os.PathLike,
) -> RunRecord:
    """Evaluate the trained model, publish its run folder, update the registry, prune.

    Idempotent: a run already saved for the same content key is returned as it is."""
    import keras

    t0 = time.perf_counter()
    log = get_logger()
    name = pipeline["name"]
    promote = pipeline.get("promote") or {}
    cfg = promote if isinstance(promote, PromoteConfig) else PromoteConfig(**promote)
    pdir = Path(artifacts_dir) / name
    runs_dir = pdir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    key = store_key(pipeline, dataset, trained)

    with file_lock(pdir / "store-keys" / f".{key}.lock", f"saving the model of {name}"):
        found = existing_run(pdir, key)
        if found is not None:
            log.info("run %s already holds this model (store key %s): reusing it", found.name, key)
            return _run_record(found, read_json(found / "metadata.json"))

        tdir, train_json, history = _read_train_outputs(trained)
        now = datetime.now(timezone.utc)
        run_id = new_run_id(now)
        tmp = runs_dir / f".tmp-{run_id}-{os.getpid()}"
        tmp.mkdir()
        try:
            # 1. the model: copy, verify the copy against train.json, only then load it
            shutil.copyfile(tdir / "model.keras", tmp / "model.keras")
            verify_model_file(tmp / "model.keras", train_json.get("model_sha256", ""), str(tdir / "train.json"))
            model = keras.models.load_model(tmp / "model.keras", safe_mode=True, compile=False)

            # 2. evaluate on the cached test split (memory-mapped), scaled as in training
            from tasks.core.datacache import cache_problems, load_dataset

            problems = cache_problems(dataset.path, verify_checksums=False)
            if problems:
                raise StoreError(f"the dataset cache {dataset.path} is incomplete: {'; '.join(problems)}. "
                                 "Rerun the pipeline (the download stage rebuilds it).")
            ds = load_dataset(dataset.path, mmap=True)
            pre = train_json.get("preprocess") or {}
            probs = predict_probs(model, ds.x_test, pre.get("mean"), pre.get("std"))
            y_true = np.asarray(ds.y_test, dtype=np.int64)
            metrics = evaluation_metrics(y_true, probs, list(ds.classes))
            log.info("%s: test accuracy %.4f, loss %.4f on %d images", name, metrics["test_accuracy"],
                     metrics["test_loss"], len(y_true))

            # 3. the files
            atomic_write_json(tmp / "metrics.json", metrics)
            with open(tmp / "predictions.npz", "wb") as f:
                np.savez(f, y_true=y_true, y_pred=probs.argmax(axis=1).astype(np.int64), probs=probs)
            atomic_write_json(tmp / "history.json", history)
            atomic_write_text(tmp / "history.csv", history_csv(history))
            model.export(str(tmp / "savedmodel"), format="tf_saved_model", verbose=False)
            files = {
                n: hash_file(tmp / n).sha256
                for n in ("model.keras", "metrics.json", "predictions.npz", "history.json", "history.csv")
            }
            files["savedmodel"] = sha256_tree(tmp / "savedmodel")

            manifest = ds.manifest
            meta: dict[str, Any] = {
                "pipeline": name,
                "run_id": run_id,
                "created_at": now.isoformat(timespec="microseconds"),
                "config": to_jsonable(pipeline),
                "dataset": {
                    "fingerprint": dataset.fingerprint,
                    "path": str(dataset.path),
                    "source": manifest.get("source"),
                    "archive_sha256": manifest.get("archive_sha256"),
                    "format": manifest.get("format"),
                    "classes": list(ds.classes),
                    "counts": manifest.get("counts"),
                    "shapes": manifest.get("shapes"),
                },
                "validation": to_jsonable(getattr(validation, "summary", None)),
                "cache_keys": {
                    "dataset": dataset.fingerprint,
                    "validation": getattr(validation, "fingerprint", None),
                    "train": trained.key,
                    "store": key,
                },
                "flow_run_id": flow_run_id,
                "versions": _versions(),
                "devices": train_json.get("devices"),
                "stages": to_jsonable(stages),
                "model": {"name": train_json.get("model"), "params": int(model.count_params()),
                          "layers": layer_table(model)},
                "training": train_json,
                "files": files,
            }

            # 4. decide, publish, register: one critical section per pipeline
            with file_lock(pdir / ".registry.lock", f"the registry of {name}"):
                registry = _read_registry(pdir)
                champion = _champion_for(pdir, registry.get("champion"), cfg)
                earlier = _complete_runs(pdir)
                previous = None
                if earlier:
                    prev_dir = earlier[-1][0]
                    previous = {"run_id": prev_dir.name, "value": _metric_of(prev_dir, cfg.metric)}
                decision = decide_promotion(metrics[cfg.metric], champion, previous, cfg)
                meta["promotion"] = decision
                meta["stages"]["save"] = {"seconds": round(time.perf_counter() - t0, 3), "cache_hit": False}
                atomic_write_json(tmp / "metadata.json", meta)
                _fsync_tree(tmp)  # every file on disk before the folder appears
                final = runs_dir / run_id
                os.rename(tmp, final)
                _fsync_dir(runs_dir)
                if decision["promoted"]:
                    registry["champion"] = {
                        "run_id": run_id,
                        "metric": cfg.metric,
                        "value": decision["value"],
                        "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "reason": decision["reason"],
                    }
                    atomic_write_json(pdir / "registry.json", registry)
                elif not (pdir / "registry.json").exists():
                    atomic_write_json(pdir / "registry.json", registry)
                atomic_write_json(pdir / "store-keys" / f"{key}.json", {"run_id": run_id})
                champion_id = (registry.get("champion") or {}).get("run_id")
                removed = prune_runs(pdir, pipeline.get("keep_last"), champion_id)
                _clean_stale(runs_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    log.info("%s: run %s saved (%s); %s", name, run_id, final,
             decision["reason"] if decision["promoted"] else f"not promoted: {decision['reason']}")
    if removed:
        log.info("%s: keep_last=%s pruned %d old run(s): %s", name, pipeline.get("keep_last"), len(removed),
                 ", ".join(removed))
    return _run_record(final, meta)


def _champion_for(pdir: Path, champion: dict[str, Any] | None, cfg: PromoteConfig) -> dict[str, Any] | None:
    """The registry's champion as decide_promotion needs it: None when its folder is gone; its
    value of ``cfg.metric`` read from its metrics.json when the promotion metric changed."""
    if not champion:
        return None
    run_dir = pdir / "runs" / str(champion.get("run_id"))
    if not (run_dir / "metadata.json").is_file():
        get_logger().warning("champion %s named in registry.json has no run folder: treating the pipeline as "
                             "having no champion", champion.get("run_id"))
        return None
    if champion.get("metric") != cfg.metric:
        value = _metric_of(run_dir, cfg.metric)
        if value is not None:
            return {**champion, "metric": cfg.metric, "value": value}
    return champion


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# =========================================================================== Prefect task
def _key_fn(inputs: dict[str, Any]) -> str:
    return store_key(inputs["pipeline"], inputs["dataset"], inputs["trained"])


def _valid_fn(inputs: dict[str, Any], key: str) -> bool:
    return existing_run(Path(inputs["artifacts_dir"]) / inputs["pipeline"]["name"], key) is not None


def _transient(task, task_run, state) -> bool:
    """Retry unexpected errors once; never a CifarError (a tampered file stays tampered)."""
    return not isinstance(getattr(state, "data", None), CifarError)


@task(
    name="save_run",
    cache_policy=VerifiedCache(key_fn=_key_fn, valid_fn=_valid_fn),
    persist_result=True,
    retries=1,
    retry_condition_fn=_transient,
)
def save_run(
    pipeline: dict[str, Any],
    dataset,
    validation,
    trained,
    stages: dict[str, Any],
    flow_run_id: str | None,
    artifacts_dir: str,
) -> RunRecord:
    """Stage 4: save the trained model as a run, register it, promote it or not (see store_run)."""
    return store_run(pipeline, dataset, validation, trained, stages, flow_run_id, artifacts_dir)
