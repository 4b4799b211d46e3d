"""Batch scoring's files: ``predictions.csv`` (one row per input file), ``predictions.html`` (a
self-contained page of thumbnails of what the model saw, with the predicted class; names
escaped) and ``manifest.json`` (counts, failures, each file's sha256), written into a folder
named by the scoring key: built under a dot-name and renamed into place when complete."""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tasks.core import faults
from tasks.core.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    fsync_tree,
    read_json,
)
from tasks.core.guards_text import csv_cell
from tasks.core.hashing import hash_file
from tasks.predict.imaging import png_data_uri
from tasks.predict.scoring import Failure, Prediction

CSV, PAGE, MANIFEST = "predictions.csv", "predictions.html", "manifest.json"
OUTPUTS = (CSV, PAGE)
MAX_THUMBNAILS = 500  # the page shows the first ones; every file is in the CSV
TEMPLATES = Path(__file__).parent / "templates"
CSV_COLUMNS = ("file", "class", "probability", "top_k", "error", "pipeline", "run_id", "model_sha256")


def csv_row(item: Prediction | Failure, title: dict[str, Any] | None = None) -> dict[str, str]:
    """``top_k`` is ``class:probability`` pairs joined by ``;``, best first; every row names the
    pipeline, run and model sha256 that answered (from ``title``). Text cells pass ``csv_cell``:
    a name such as ``=HYPERLINK(...)`` or ``+cmd|...`` is text, never a formula."""
    who = {k: csv_cell(str((title or {}).get(k) or "")) for k in ("pipeline", "run_id", "model_sha256")}
    if isinstance(item, Failure):
        return {"file": csv_cell(item.name), "class": "", "probability": "", "top_k": "",
                "error": csv_cell(item.error), **who}
    return {"file": csv_cell(item.name), "class": csv_cell(item.label), "probability": f"{item.probability:.6f}",
            "top_k": csv_cell(";".join(f"{c}:{p:.6f}" for c, p in item.top)), "error": "", **who}


def render_page(context: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("predictions.html.j2").render(**context)


def write_outputs(folder: Path, items: Iterable[Prediction | Failure], title: dict[str, Any]) -> dict[str, Any]:
    """Stream ``items`` into the folder's CSV, then the page and manifest.json; returns the
    manifest (images, scored, failed, class counts, failures, each file's sha256)."""
    counts: Counter[str] = Counter()
    thumbs, failures, total = [], [], 0
    with open(folder / CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for item in items:
            total += 1
            writer.writerow(csv_row(item, title))
            if isinstance(item, Failure):
                failures.append({"file": item.name, "error": item.error})
                continue
            counts[item.label] += 1
            if len(thumbs) < MAX_THUMBNAILS:
                thumbs.append({"name": item.name, "label": item.label, "probability": item.probability,
                               "top": item.top, "src": png_data_uri(item.pixels)})
    table = [{"class": c, "images": n} for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    atomic_write_text(folder / PAGE, render_page({
        **title, "thumbs": thumbs, "counts": table, "failures": failures, "total": total,
        "scored": total - len(failures), "max_thumbs": MAX_THUMBNAILS}))
    manifest = {**title, "images": total, "scored": total - len(failures), "failed": len(failures),
                "counts": table, "failures": failures,
                "files": {name: hash_file(folder / name).sha256 for name in OUTPUTS}}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def intact(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest when every output file is there with its recorded sha256."""
    try:
        manifest = read_json(folder / MANIFEST)
        files = manifest["files"]
        ok = all(hash_file(folder / name).sha256 == files[name] for name in OUTPUTS)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if ok else None


def build_folder(final: Path, items: Iterable[Prediction | Failure], title: dict[str, Any]) -> dict[str, Any]:
    """Write the outputs under ``.<name>.tmp-<pid>`` beside ``final``, then rename into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = write_outputs(tmp, items, title)
        faults.reached("score.before-publish")
        fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an altered earlier copy: replaced whole
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def publish_copy(built: Path, output: Path) -> dict[str, Path]:
    """Copy the CSV and the page into ``output`` (each written atomically); returns their paths."""
    out = {}
    for name in OUTPUTS:
        out[name] = atomic_write_bytes(output / name, (built / name).read_bytes())
    return out
