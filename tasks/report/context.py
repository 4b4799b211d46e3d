"""What the report and the index show, as plain values for the templates: the headline and its
comparisons, per-class rows, the sampled test images, the layer table and its worked example,
the comparison with earlier runs, and the index's rows and pipeline pairs. Pictures arrive
already as PNG ``data:`` URIs from ``tasks.report.plots``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tasks.core import runs, verify
from tasks.core.hashing import to_jsonable
from tasks.report.changes import changes_since_champion
from tasks.report.config import ReportConfig
from tasks.report.links import flow_run_url
from tasks.report.plots import (
    data_uri,
    missing_glyphs,
    plot_comparison,
    plot_confusion,
    plot_history,
    plot_image_grid,
    plot_reliability,
    plot_schedule,
)

STAGE_ORDER = ("download", "prepare", "train", "save", "report")
CONFIG_ORDER = ("name", "description", "expect", "dataset", "prepare", "model", "training",
                "promote", "keep_last", "report", "schedule")
COMPARED_RUNS = 8  # earlier runs drawn in the comparison plot, newest first


def format_shape(shape: Any) -> str:
    """Keras output shape to text, the batch dimension dropped: [None, 32, 32, 3] -> (32, 32, 3)."""
    if shape is None:
        return ""
    if isinstance(shape, str):
        return shape
    dims = list(shape)
    if dims and dims[0] is None:
        dims = dims[1:]
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _last_dim(shape: Any) -> int | None:
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


def layer_table(model: dict[str, Any]) -> dict[str, Any]:
    """Rows of the layer table, their parameter total and whether it equals Keras's count."""
    rows = [{"name": l.get("name", ""), "class": l.get("class", ""),
             "output_shape": format_shape(l.get("output_shape")), "params": int(l.get("params", 0))}
            for l in model.get("layers", [])]
    total = sum(r["params"] for r in rows)
    expected = model.get("params")
    return {"rows": rows, "total": total, "keras_params": expected,
            "matches": expected is not None and int(expected) == total}


def first_conv_example(layers: list[dict[str, Any]], input_shape: Any) -> dict[str, Any] | None:
    """The notebook's worked example for the first convolution, derived from the layer table.

    Filters come from the layer's output shape, input channels from the previous layer's output
    (or the data's input shape); the kernel size from ``kernel_size`` when stored, else solved from
    params = k*k*channels*filters + filters (square kernels, with bias). None if there is no
    Conv2D layer or its numbers do not fit that formula.
    """
    channels = _last_dim(input_shape)
    for layer in layers:
        if layer.get("class") in ("Conv2D", "Convolution2D"):
            filters = _last_dim(layer.get("output_shape"))
            params = int(layer.get("params", 0))
            if not filters or not channels:
                return None
            if len(layer.get("kernel_size") or ()) == 2:
                kh, kw = layer["kernel_size"]
                bias = params - kh * kw * channels * filters
            else:
                weights = params - filters  # assume bias
                area = weights / (channels * filters)
                k = round(math.sqrt(area)) if area > 0 else 0
                if k < 1 or k * k * channels * filters != weights:
                    return None
                kh = kw = k
                bias = filters
            weights = kh * kw * channels * filters
            return {"layer": layer.get("name", ""), "kh": kh, "kw": kw, "channels": channels,
                    "filters": filters, "weights": weights, "biases": bias,
                    "params": weights + bias, "matches": weights + bias == params}
        shape_c = _last_dim(layer.get("output_shape"))
        if shape_c:
            channels = shape_c
    return None



def headline(meta: dict[str, Any], metrics: dict[str, Any], artifacts_dir: Path) -> dict[str, Any]:
    """Test accuracy and its change vs the champion before this run and vs the previous run."""
    promo = meta.get("promotion") or {}
    pipeline = meta.get("pipeline", "")
    acc = float(metrics["test_accuracy"])
    metric = promo.get("metric", "test_accuracy")

    def other(run_key: str, value_key: str) -> dict[str, Any] | None:
        run_id = promo.get(run_key)
        if not run_id:
            return None
        folder = runs.run_dir(artifacts_dir, pipeline, run_id)
        value = runs.metric_of(folder, "test_accuracy")  # None unless its metrics.json verifies
        images = _images_of(folder) if value is not None else None
        rescored = promo.get("champion_rescored") or {}
        if run_key == "champion_before" and rescored.get("test_accuracy") is not None:
            value = float(rescored["test_accuracy"])  # on this run's test images, as compared
            images = rescored.get("images")
        if value is None and metric == "test_accuracy" and promo.get(value_key) is not None:
            value = float(promo[value_key])  # as recorded in this run's metadata when it was judged
        return {"run_id": run_id, "accuracy": value, "images": images,
                "other_images": images is not None and images != runs.test_images(metrics),
                "delta_pp": None if value is None else (acc - value) * 100}

    return {
        "accuracy": acc,
        "accuracy_repr": repr(acc),
        "accuracy_pct": f"{acc * 100:.2f}%",
        "images": runs.test_images(metrics),
        "loss": metrics.get("test_loss"),
        "champion": other("champion_before", "champion_value"),
        "previous": other("previous_run", "previous_value"),
        "promoted": bool(promo.get("promoted")),
        "reason": promo.get("reason", ""),
        "metric": metric,
        "metric_value": promo.get("value"),
    }


def _images_of(run_folder: Path) -> int | None:
    """How many test images a run's metrics.json says it was scored on (None when unreadable)."""
    from tasks.core.run_files import read_run_file

    metrics, _ = read_run_file(run_folder / runs.METRICS, "metrics")
    return runs.test_images(metrics) if metrics else None


def glyph_note(names) -> str | None:
    """What to tell the reader when names drawn in the pictures (classes, pipelines) have
    characters no installed font has (they show as empty boxes there), else None."""
    missing = missing_glyphs(names)
    if not missing:
        return None
    shown = " ".join(missing[:24]) + (" …" if len(missing) > 24 else "")
    return (f"No font installed on the machine that drew the pictures has the characters {shown}, so "
            "the pictures show them as empty boxes; the tables on this page show every name as "
            "written. Install a font that has them (for Chinese, Japanese or Korean: Debian's "
            "fonts-noto-cjk), then redraw the pictures with `cifar report PIPELINE/RUN_ID`.")


TTA_NAMES = {"off": "plain (1 view)", "mirror": "image + mirror (2 views)",
             "multi": "image + mirror, each also shifted 1 px two ways (6 views)"}


def recipe_section(training: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The training recipe's extras (pipelines with ``training.recipe``): the learning-rate
    schedule as a picture, and the test accuracy at each level of test-time augmentation with
    the gain over plain prediction. None for a run trained without a recipe."""
    recipe = training.get("recipe")
    if not recipe:
        return None
    tta = metrics.get("tta") or {}
    accuracy = tta.get("accuracy") or {}
    order = [lv for lv in TTA_NAMES if lv in accuracy] + [lv for lv in accuracy if lv not in TTA_NAMES]
    rows = [{"level": lv, "views": TTA_NAMES.get(lv, lv), "accuracy": accuracy[lv]} for lv in order]
    schedule = recipe.get("schedule") or []
    return {
        "schedule_png": data_uri(plot_schedule(schedule, int(recipe.get("steps_per_epoch") or 1),
                                               int(recipe.get("total_steps") or 1))) if schedule else None,
        "peak_learning_rate": recipe.get("peak_learning_rate"),
        "steps_per_epoch": recipe.get("steps_per_epoch"),
        "total_steps": recipe.get("total_steps"),
        "lookahead": recipe.get("lookahead"),
        "tta_rows": rows,
        "tta_gain_pp": tta.get("gain_pp"),
        "tta_level": tta.get("level", recipe.get("tta")),
    }


def evaluation_section(pred: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The evaluation as an ML engineer reads it, recomputed from the run's predictions (so a run
    saved before metrics.json carried these shows them too): per-class precision, recall, F1 and
    support with the macro and weighted rows, top-k accuracy, calibration (ECE over
    ``ECE_BINS`` equal-width bins), and the pictures: the confusion matrix raw and
    row-normalised, and the reliability diagram."""
    from tasks.core import classification

    cm = classification.confusion(pred["y_true"], pred["y_pred"], len(classes))
    scores = classification.class_scores(cm, classes)
    calibration = classification.reliability(pred["probs"], pred["y_true"])
    return {**scores,
            "top_k": classification.top_k_table(pred["probs"], pred["y_true"]),
            "ece": calibration["ece"], "ece_bins": calibration["n_bins"],
            "confusion_png": data_uri(plot_confusion(cm.tolist(), classes)),
            "confusion_normalised_png": data_uri(plot_confusion(classification.row_normalised(cm), classes,
                                                                normalised=True)),
            "reliability_png": data_uri(plot_reliability(calibration))}


def pick_samples(y_true, y_pred, probs, n: int, k_mistakes: int, seed: int = 0):
    """Indices of a seeded sample of the test split and of the k most confident mistakes."""
    import numpy as np

    total = len(y_true)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(total, size=min(n, total), replace=False)) if n else np.array([], int)
    conf = probs[np.arange(total), y_pred]
    wrong = np.flatnonzero(y_true != y_pred)
    mistakes = wrong[np.argsort(-conf[wrong], kind="stable")[:k_mistakes]]
    return sample.astype(int), mistakes.astype(int), conf


def _yaml(obj: Any) -> str:
    """The resolved config as YAML, in pipelines.yaml's order (name and description first)."""
    import yaml

    if isinstance(obj, dict):
        obj = {**{k: obj[k] for k in CONFIG_ORDER if k in obj},
               **{k: v for k, v in obj.items() if k not in CONFIG_ORDER}}
    return yaml.safe_dump(to_jsonable(obj), sort_keys=False, default_flow_style=False,
                          allow_unicode=True)




def index_rows(artifacts_dir: str | Path, pipeline: str | None = None,
               skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """One small dict per published run (for the index and comparisons), newest first; runs
    left out for a damaged file are named in ``skipped``."""
    rows = []
    for run in runs.published_runs(artifacts_dir, pipeline, skipped):
        meta, metrics = run.metadata, run.metrics
        training = meta.get("training") or {}
        rows.append({
            "dir": run.dir,
            "pipeline": run.pipeline,
            "run_id": run.run_id,
            "order": run.order,  # within its pipeline (runs.run_order: by sequence, not by clock)
            "created_at": meta.get("created_at", ""),
            "model": (meta.get("model") or {}).get("name", ""),
            "epochs": training.get("epochs"),
            "seconds_per_epoch": training.get("seconds_per_epoch"),
            "train_seconds": training.get("seconds"),
            # a value shown only from a metrics.json that verifies (tasks.core.verify)
            "test_accuracy": metrics.get("test_accuracy") if run.value_verified else None,
            "test_loss": metrics.get("test_loss") if run.value_verified else None,
            "test_images": run.test_images if run.value_verified else None,
            "champion": run.champion,
            "damaged": run.damaged,
            "has_report": (run.dir / runs.REPORT).is_file(),
        })
    return rows


def size_note(sizes: list[int | None], what: str = "these runs") -> str | None:
    """A sentence saying ``what`` were measured on test sets of different sizes, or None."""
    known = sorted({n for n in sizes if n is not None})
    if len(known) < 2:
        return None
    return (f"The accuracies of {what} were measured on test sets of different sizes "
            f"({', '.join(f'{n:,}' for n in known)} images): they are not comparable.")


def decision_of(pipeline_folder: Path, run_id: str | None = None) -> dict[str, Any] | None:
    """The registry's champion as the pages show it: run_id, by, when, why; None without one
    (or when ``run_id`` is given and is not the champion)."""
    champion = runs.read_registry(pipeline_folder).get("champion") or {}
    if not champion or (run_id is not None and champion.get("run_id") != run_id):
        return None
    by = champion.get("by", "rule")
    return {"run_id": champion.get("run_id"), "by": by, "at": champion.get("promoted_at", ""),
            "reason": champion.get("reason", ""),
            "by_person": by in ("person", "rollback"),
            "who": {"person": "a person (cifar promote)", "rollback": "a person's rollback (cifar promote --previous)",
                    "stand-in": "the store, standing in for a damaged champion",
                    "rebuild": "the store, rebuilding a damaged registry.json"}.get(by, "the promotion rule")}


def _comparison(meta: dict[str, Any], history: list[dict[str, Any]], artifacts_dir: Path):
    """The plot of this run's validation accuracy vs the champion before it and the previous runs
    of its pipeline: (PNG data URI or None, champion shown or None, previous run ids shown,
    the test-set sizes of the runs shown)."""
    pipeline, run_id = meta.get("pipeline", ""), meta.get("run_id", "")
    champ_id = (meta.get("promotion") or {}).get("champion_before")
    champ_hist = runs.read_history(runs.run_dir(artifacts_dir, pipeline, champ_id)) if champ_id else None
    rows = index_rows(artifacts_dir, pipeline)
    earlier = [r for r in rows
               if r["order"] < runs.run_order(meta, run_id)
               and r["run_id"] != champ_id and not r["damaged"]][:COMPARED_RUNS]
    prev = [(r["run_id"], h) for r in earlier if (h := runs.read_history(r["dir"]))]
    png = None
    if champ_hist or prev:
        png = data_uri(plot_comparison((run_id, history), (champ_id, champ_hist) if champ_hist else None, prev))
    shown = {p[0] for p in prev} | ({champ_id} if champ_hist else set())
    sizes = [r["test_images"] for r in rows if r["run_id"] in shown]
    return png, champ_id if champ_hist else None, [p[0] for p in prev], sizes


def _test_pictures(pred: dict[str, Any], images, cfg: ReportConfig, classes: list[str], data_path: Any):
    """The seeded sample and the most confident mistakes as image grids, or the note saying why
    there are none: (grid URI, mistakes URI, note)."""
    y_true, y_pred, probs = pred["y_true"], pred["y_pred"], pred["probs"]
    sample, mistakes, conf = pick_samples(y_true, y_pred, probs, cfg.sample_images, cfg.confident_mistakes)
    if images is None:
        return None, None, (f"The dataset cache {data_path} is not on this machine, so the "
                            "test images cannot be shown.")
    if len(images) != len(y_true):
        return None, None, (f"The dataset cache holds {len(images)} test images but the run predicted "
                            f"{len(y_true)}: it is not the data this run used, so no images are shown.")
    grid = worst = None
    if len(sample):
        grid = data_uri(plot_image_grid(images[sample], y_true[sample], y_pred[sample], conf[sample], classes,
                                        f"{len(sample)} random test images (seeded)"))
    if len(mistakes):
        worst = data_uri(plot_image_grid(images[mistakes], y_true[mistakes], y_pred[mistakes], conf[mistakes],
                                         classes, f"The {len(mistakes)} most confident mistakes"))
    return grid, worst, None


def holdout_section(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the run was validated on, and how it scored there: the held-out training images
    (``dataset.validation``) or, under ``validation: test`` and for runs saved before validation
    splits, the test split itself -- which the report then says."""
    record = runs.validation_record(metrics)
    if not record:
        return {"protocol": "test", "described": "the test split (saved before validation splits existed)",
                "accuracy": metrics.get("test_accuracy"), "loss": metrics.get("test_loss"),
                "images": metrics.get("test_size")}
    return {"protocol": record.get("protocol"), "described": record.get("described", ""),
            "accuracy": metrics.get("validation_accuracy"), "loss": metrics.get("validation_loss"),
            "images": metrics.get("validation_size")}


def build_report_context(run: dict[str, Any], cfg: ReportConfig, artifacts_dir: Path,
                         images=None) -> dict[str, Any]:
    """Everything the report template shows, pictures already PNG data URIs. Pure given inputs;
    ``images`` is the test split (N,H,W,C) uint8 or None when the dataset cache is gone."""
    meta, metrics, history = run["metadata"], run["metrics"], run["history"]["epochs"]
    pred = run["predictions"]
    pipeline, run_id = meta.get("pipeline", ""), meta.get("run_id", "")
    classes = list(metrics.get("classes") or meta.get("dataset", {}).get("classes", []))
    dataset = meta.get("dataset") or {}
    model = meta.get("model") or {}
    training = meta.get("training") or {}
    comparison, compared_champion, compared_previous, compared_sizes = _comparison(meta, history, artifacts_dir)
    grid, worst, images_note = _test_pictures(pred, images, cfg, classes, dataset.get("path"))
    shapes = dataset.get("shapes") or {}
    counts = dataset.get("counts") or {}
    seconds = [h.get("seconds") for h in history]
    return {
        "title": f"{pipeline} · {run_id}",
        "glyph_note": glyph_note([*classes, pipeline]),
        "pipeline": pipeline,
        "run_id": run_id,
        "created_at": meta.get("created_at", ""),
        "config": meta.get("config") or {},
        "head": headline(meta, metrics, artifacts_dir),
        "holdout": holdout_section(metrics),
        "wrong": int((pred["y_true"] != pred["y_pred"]).sum()),
        "n_test": int(len(pred["y_true"])),
        "history": history,
        "history_png": data_uri(plot_history(history)),
        "recipe": recipe_section(training, metrics),
        "comparison_png": comparison,
        "comparison_runs": {"champion": compared_champion, "previous": compared_previous},
        "comparison_note": size_note([runs.test_images(metrics), *compared_sizes], "the runs in this plot"),
        "damaged": verify.damage_text(verify.run_damage(run["dir"], meta)),
        "what_to_do": verify.WHAT_TO_DO,
        "decision": decision_of(runs.pipeline_dir(artifacts_dir, pipeline), run_id),
        "evaluation": evaluation_section(pred, classes),
        "grid_png": grid,
        "mistakes_png": worst,
        "images_note": images_note,
        "layers": layer_table(model),
        "model_name": model.get("name", ""),
        # the course notebook's teaching text: only where the pipeline asks (report.teaching)
        "example": first_conv_example(model.get("layers", []), shapes.get("x_test", shapes.get("x_train")))
        if cfg.teaching else None,
        "dataset": dataset,
        "classes": classes,
        "counts_rows": [{"class": c, "train": (counts.get("train") or {}).get(c),
                         "test": (counts.get("test") or {}).get(c)} for c in classes],
        "validation": meta.get("validation") or {},
        "stages": dict(sorted((meta.get("stages") or {}).items(),
                              key=lambda kv: STAGE_ORDER.index(kv[0]) if kv[0] in STAGE_ORDER else 99)),
        "training": training,
        "epoch_seconds_total": sum(s for s in seconds if s is not None),
        "versions": meta.get("versions") or {},
        "devices": meta.get("devices") or training.get("devices") or [],
        "config_yaml": _yaml(meta.get("config") or {}),
        "cache_keys": meta.get("cache_keys") or {},
        "files": meta.get("files") or {},
        "flow_run_id": meta.get("flow_run_id"),
        "flow_run_url": flow_run_url(meta.get("flow_run_id")),  # its page in Prefect's UI, on a server
        "index_href": runs.index_href(),
        "changes": changes_since_champion(meta, artifacts_dir),
    }
