"""The trained model's folder: where it lives, how it is committed, and when it can be reused.

Folder layout under ``<data_dir>/models/``::

    <key>/            model.keras, history.json, tensorboard/, train.json (written last: the commit point)
    <key>.work/       backup/ (BackupAndRestore), history.json (per-epoch rows so far) and
                      tensorboard/ (the event files so far);
                      derived from the key, not the run id, so any later run resumes it
    <key>.lock        flock: one training per key at a time; the kernel drops it on kill -9
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.core.files import atomic_write_json, read_json
from tasks.core.hashing import hash_file


def model_dir(data_dir, key: str) -> Path:
    return Path(data_dir) / "models" / key


def work_dir(data_dir, key: str) -> Path:
    return Path(data_dir) / "models" / f"{key}.work"


def lock_path(data_dir, key: str) -> Path:
    return Path(data_dir) / "models" / f"{key}.lock"


def trained_problems(path) -> list[str]:
    """Why the model folder cannot be reused (empty: it can): train.json is the commit point and
    carries model.keras's sha256."""
    path = Path(path)
    meta = path / "train.json"
    if not meta.is_file():
        return [f"{meta} is missing (training never finished)"]
    try:
        digest = read_json(meta)["model_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{meta} is unreadable: {exc!r}"]
    model = path / "model.keras"
    if not model.is_file():
        return [f"{model} is missing"]
    if hash_file(model).sha256 != digest:
        return [f"{model} was altered (sha256 differs from train.json)"]
    if not (path / "history.json").is_file():
        return [f"{path / 'history.json'} is missing"]
    return []


def save_model_atomically(model, path: Path) -> None:
    """``model.save`` to a temp ``.keras`` name beside ``path``, fsync, rename into place."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.keras")
    model.save(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit_model(out: Path, work: Path, model, rows: list[dict[str, Any]],
                 run_facts: dict[str, Any]) -> dict[str, Any]:
    """model.keras, history.json, then train.json (the commit point); then drop the work dir.

    ``rows`` is the whole per-epoch history; ``run_facts`` (key, model name, devices, config,
    ...) go into train.json beside what is measured here. Returns train.json's content.
    """
    import keras
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").unlink(missing_ok=True)  # uncommitted while it is being rewritten
    save_model_atomically(model, out / "model.keras")
    atomic_write_json(out / "history.json", {"epochs": rows})
    logs = work / "tensorboard"  # the TensorBoard event files (tasks.train.board), when written
    if logs.is_dir():
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
        os.rename(logs, out / "tensorboard")
    seconds = sum(r["seconds"] for r in rows)
    meta = {
        **run_facts,
        "model_sha256": hash_file(out / "model.keras").sha256,
        "epochs": len(rows),
        "seconds": round(seconds, 3),
        "seconds_per_epoch": round(seconds / max(len(rows), 1), 3),
        "params": int(model.count_params()),
        "final": {k: v for k, v in rows[-1].items() if k != "epoch"} if rows else {},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(out / "train.json", meta)
    shutil.rmtree(work, ignore_errors=True)
    return meta
