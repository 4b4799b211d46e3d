"""Batch scoring, keyed by content: the model's sha256, the input's content hash and top-k (and
the code that decides the output). Its files live in ``<data_dir>/predictions/<key>/``; a second
call with the same key returns them without loading the model, while they are intact."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.files import file_lock
from tasks.core.guards_text import escape
from tasks.core.hashing import closure_fingerprint, stable_hash
from tasks.core.logs import get_logger
from tasks.predict import batch, scoring
from tasks.predict.engine import Scorer
from tasks.predict.inputs import InputRecord, iter_sources
from tasks.predict.resolve import ModelRef


@dataclass(frozen=True)
class ScoreRecord:
    """What the scoring task hands on: the folder of predictions.csv and the page, and counts."""

    key: str
    path: str
    images: int
    scored: int
    failed: int
    counts: list[dict[str, Any]]


def relative_name(name: str, root: str) -> str:
    """A file's name within the input: ``sub/x.png`` in a folder, ``member.png`` in an archive."""
    if name == root:
        return Path(root).name
    for sep in ("/", ":"):
        if name.startswith(root.rstrip("/") + sep):
            return name[len(root.rstrip("/")) + 1:]
    return name


def _named_within(items: Iterable, root: str) -> Iterator:
    root = escape(root)  # the items' names were escaped when scored
    for item in items:
        yield dataclasses.replace(item, name=relative_name(item.name, root))


def scoring_code_version() -> str:
    """The code that decides the predictions' files: this module and every project module it
    imports (the scoring, the imaging, the inputs, the page, ...) and the page's template. The
    import closure replaced a hand-kept list in issue 27, changing every scoring key once."""
    return closure_fingerprint("tasks.predict.jobs", batch.TEMPLATES / "predictions.html.j2")


def scoring_key(model: ModelRef, source: InputRecord, top_k: int) -> str:
    return stable_hash(
        "predict", model.model_sha256, model.sha256.get("classes.json"), source.sha256, int(top_k),
        scoring_code_version(),
    )


def scores_dir(data_dir: str | os.PathLike, key: str) -> Path:
    return Path(data_dir) / "predictions" / key


def _record(key: str, folder: Path, manifest: dict[str, Any]) -> ScoreRecord:
    return ScoreRecord(key=key, path=str(folder), images=manifest["images"], scored=manifest["scored"],
                       failed=manifest["failed"], counts=manifest["counts"])


def existing_scores(data_dir: str | os.PathLike, key: str) -> ScoreRecord | None:
    folder = scores_dir(data_dir, key)
    manifest = batch.intact(folder)
    return None if manifest is None else _record(key, folder, manifest)


def score_input(model: ModelRef, source: InputRecord, top_k: int, data_dir: str | os.PathLike,
                label: str | None = None) -> ScoreRecord:
    """Score every image of ``source`` with ``model``, or return the scores already made for the
    same key. ``label`` (the URL or path as given) only titles the page."""
    log = get_logger()
    key = scoring_key(model, source, top_k)
    folder = scores_dir(data_dir, key)
    with file_lock(folder.parent / f".{key}.lock", f"scoring {source.path}"):
        found = existing_scores(data_dir, key)
        if found is not None:
            log.info("%s was already scored by this model (key %s): reusing %s", source.path, key, folder)
            return found
        scorer = Scorer(model)
        title = {"pipeline": model.pipeline, "run_id": model.run_id, "model_sha256": model.model_sha256,
                 "input": label or source.path, "input_sha256": source.sha256, "top_k": int(top_k),
                 "input_shape": list(scorer.input_shape)}
        items = scoring.predict_sources(scorer, iter_sources([source.path]), top_k, keep_pixels=True,
                                        progress=log.info)
        items = _named_within(items, source.path)  # the CSV and the page name files within the input
        manifest = batch.build_folder(folder, items, title)
    log.info("scored %d of %d file(s) from %s with %s run %s", manifest["scored"], manifest["images"],
             label or source.path, model.pipeline, model.run_id)
    for failure in manifest["failures"][:20]:
        log.warning("skipped %s", failure["error"])
    return _record(key, folder, manifest)


KEEP_SCORES = 50  # scoring folders kept in <data_dir>/predictions (the newest; outputs are copied out)


def prune_scores(data_dir: str | os.PathLike, keep: int = KEEP_SCORES, current: str | None = None) -> list[str]:
    """Remove all but the ``keep`` newest scoring folders (never ``current``), and the leftovers
    of interrupted ones (``.<key>.tmp-<pid>`` older than a day); returns the keys removed. A pruned
    key is scored again when asked for (its files are gone, so the cache record is not trusted)."""
    import shutil
    import time

    root = Path(data_dir) / "predictions"
    if not root.is_dir():
        return []
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for p in folders[keep:]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    for p in root.glob(".*.tmp-*"):
        if p.is_dir() and time.time() - p.stat().st_mtime > 86_400:
            shutil.rmtree(p, ignore_errors=True)
    return removed
