"""Trusting a run: the one check every reader makes before it uses a run's value or serves its
model. metadata.json records, when the store saves a run, the sha256 of each file it wrote
(``files``: metrics.json, model.keras, model.tflite, classes.json, and the tree hash of
savedmodel/). A run verifies when each file below still has that hash:

- ``metrics.json``: the value the registry and every table read (test accuracy, loss, size);
- ``model.keras``: what a re-save and the champion's re-scoring load;
- ``savedmodel/``: what the champion is re-scored with when the test split changes;
- ``model.tflite`` and ``classes.json``: what ``cifar predict`` and the predict flow serve.

metrics.json and model.keras must have a recorded sha256 (every run the store saved records
them); the serving export is checked where metadata.json records it (runs saved before the
export existed have none, and ``cifar predict`` refuses them for that reason). A run that does
not verify is *damaged*: shown so everywhere runs are shown, never champion nor stand-in.

Hashing is cached for the process by each file's (path, size, mtime_ns, ctime_ns, inode): a
listing that verifies every run reads each byte once, and a rewrite of a file misses the cache
(a user cannot set ctime). metadata.json itself is the record trusted; it is not checked here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tasks.core.hashing import hash_file, tree_files

METRICS = "metrics.json"
MODEL = "model.keras"
SAVEDMODEL = "savedmodel"
TFLITE = "model.tflite"
CLASSES = "classes.json"
CHECKED = (METRICS, MODEL, SAVEDMODEL, TFLITE, CLASSES)  # in the order problems are reported
REQUIRED = (METRICS, MODEL)  # every run the store saved records their sha256
TREES = (SAVEDMODEL,)
WHAT_TO_DO = ("restore the run folder from a backup, or delete it (`cifar runs` lists the runs); a "
              "damaged run is never champion, and the next run of the pipeline replaces a damaged "
              "champion with the best run that verifies")

_digests: dict[tuple, str] = {}


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def file_sha256(path: str | os.PathLike) -> str:
    """``hash_file(path).sha256``, remembered for this process while the file is unchanged."""
    path = Path(path)
    key = _stamp(path)
    if key not in _digests:
        _digests[key] = hash_file(path).sha256
    return _digests[key]


def tree_sha256(root: str | os.PathLike) -> str:
    """``hash_tree(root).sha256`` (the same bytes: each file's relative path and sha256, in path
    order), each file's hash remembered as in ``file_sha256``."""
    h = hashlib.sha256()
    for rel, path in tree_files(root):
        h.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


def forget() -> None:
    """Drop the remembered hashes (tests; a process that must re-read every byte)."""
    _digests.clear()


def _short(sha: Any) -> str:
    return f"{str(sha)[:12]}..."


def file_problem(run_dir: str | os.PathLike, name: str, recorded: str | None) -> str | None:
    """Why the run's file ``name`` does not verify against ``recorded`` (its sha256 in
    metadata.json), naming the file, the check and both values; None when it verifies. A file
    that is not required and was not recorded is not checked (None)."""
    path = Path(run_dir) / name
    tree = name in TREES
    if not recorded:
        if name in REQUIRED:
            return f"{path}: metadata.json records no sha256 for it, so its content cannot be verified"
        return None
    if not (path.is_dir() if tree else path.is_file()):
        return f"{path} is missing (metadata.json records sha256 {_short(recorded)})"
    try:
        actual = tree_sha256(path) if tree else file_sha256(path)
    except OSError as exc:
        return f"{path} cannot be read ({type(exc).__name__}: {exc})"
    if actual != recorded:
        kind = "tree sha256" if tree else "sha256"
        return (f"{path}: {kind} {_short(actual)} differs from {_short(recorded)} recorded in metadata.json "
                "when the run was saved (the file was edited, truncated or replaced)")
    return None


def run_damage(run_dir: str | os.PathLike, metadata: dict[str, Any],
               names: tuple[str, ...] = CHECKED) -> dict[str, str]:
    """{file name: why it does not verify} for each of ``names`` in the run folder; empty when
    the run verifies. ``metadata``: the run's metadata.json, already read."""
    recorded = metadata.get("files") if isinstance(metadata.get("files"), dict) else {}
    out = {}
    for name in names:
        if problem := file_problem(run_dir, name, recorded.get(name)):
            out[name] = problem
    return out


def damage_text(damage: dict[str, str] | tuple[tuple[str, str], ...]) -> str | None:
    """The problems as one sentence (None when there are none), without the remedy."""
    items = dict(damage)
    return "; ".join(items.values()) if items else None
