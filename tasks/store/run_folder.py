"""What goes into a run folder: the evaluated model's files, their checksums, and metadata.json
(config, data, validation, cache keys, versions, devices, stage times, the model's layers).

Everything here writes into the save's temp folder; ``tasks.store.saving`` publishes it.
"""

from __future__ import annotations

import csv
import io
import platform
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core import runs
from tasks.core.datacache import DatasetRecord
from tasks.core.files import atomic_write_json, atomic_write_text
from tasks.core.guards_text import redact_record
from tasks.core.hashing import hash_file, hash_tree, stable_hash, to_jsonable
from tasks.core.records import ValidationRecord
from tasks.store import export
from tasks.store.config import PipelineSettings

# The files whose sha256 metadata.json records (plus the SavedModel folder's tree hash).
HASHED_FILES = ("model.keras", export.TFLITE, export.CLASSES, runs.METRICS, runs.PREDICTIONS, runs.HISTORY,
                "history.csv")


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx`` (UTC time + 6 random hex): sorts by time, never collides."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


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


def model_layers(model) -> list[dict[str, Any]]:
    """One row per top-level layer of a Keras model: name, class, output shape (batch dim None),
    parameters, and ``kernel_size`` for convolutions (metadata.json's ``model.layers``).

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


def eval_split_hash(manifest: dict[str, Any]) -> str:
    """The test split's identity: its images' and labels' sha256 (from the dataset cache's
    manifest) and the class names. Two runs with the same one were scored on the same images."""
    files = manifest.get("files") or {}
    return stable_hash("test-split", files.get("x_test.npy"), files.get("y_test.npy"), manifest.get("classes"))


def write_run_files(folder: Path, model, data, y_true: np.ndarray, probs: np.ndarray, metrics: dict[str, Any],
                    history: dict[str, Any], preprocess: dict[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
    """metrics.json, predictions.npz, history.json/.csv and the serving export (uint8-in
    SavedModel, model.tflite, classes.json: ``tasks.store.export``) beside model.keras (already
    in ``folder``). ``data``: the opened cache (classes, test images); ``preprocess``: train.json's.
    Returns the sha256 of each file, as metadata.json's ``files``, and its ``serving`` section."""
    atomic_write_json(folder / runs.METRICS, metrics)
    with open(folder / runs.PREDICTIONS, "wb") as f:
        np.savez(f, y_true=y_true, y_pred=probs.argmax(axis=1).astype(np.int64), probs=probs)
    atomic_write_json(folder / runs.HISTORY, history)
    atomic_write_text(folder / "history.csv", history_csv(history))
    serving = export.export_serving(folder, model, list(data.classes), preprocess, data.x_test, probs)
    files = {name: hash_file(folder / name).sha256 for name in HASHED_FILES}
    files[export.SAVEDMODEL] = hash_tree(folder / export.SAVEDMODEL).sha256
    return files, serving


def run_metadata(*, pipeline: PipelineSettings, run_id: str, created: datetime, dataset: DatasetRecord, data,
                 validation: ValidationRecord, cache_keys: dict[str, Any], flow_run_id: str | None,
                 train_json: dict[str, Any], stages: dict[str, Any], model, files: dict[str, str],
                 serving: dict[str, Any] | None = None) -> dict[str, Any]:
    """metadata.json without its ``promotion`` (decided when the run is published).

    ``data``: the opened dataset cache (manifest, classes)."""
    manifest = data.manifest
    return redact_record({  # URL credentials and deploy.env values never recorded
        "pipeline": pipeline.name,
        "run_id": run_id,
        "created_at": created.isoformat(timespec="microseconds"),
        "config": to_jsonable(pipeline),
        "dataset": {
            "fingerprint": dataset.fingerprint,
            "path": str(dataset.path),
            "source": manifest.get("source"),
            "archive_sha256": manifest.get("archive_sha256"),
            "format": manifest.get("format"),
            "classes": list(data.classes),
            "counts": manifest.get("counts"),
            "shapes": manifest.get("shapes"),
        },
        "validation": to_jsonable(validation.summary),
        "cache_keys": cache_keys,
        "flow_run_id": flow_run_id,
        "versions": _versions(),
        "devices": train_json.get("devices"),
        "stages": to_jsonable(stages),
        "model": {"name": train_json.get("model"), "params": int(model.count_params()),
                  "layers": model_layers(model)},
        "training": train_json,
        "serving": serving,
        "files": files,
    })
