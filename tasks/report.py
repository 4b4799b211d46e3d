"""Stage 5: the HTML report of one run and the index of every run (issue: report).

Reads only what the store stage wrote -- ``artifacts/<pipeline>/runs/<run_id>/`` (metadata.json,
metrics.json, history.json, predictions.npz), ``artifacts/<pipeline>/registry.json`` -- and the
test images of the dataset cache named in ``metadata.json["dataset"]["path"]``.

Pure functions first: loaders, table builders and the plots (matplotlib ``Figure`` objects on the
Agg canvas, imported lazily, returned as PNG bytes). Then the renderers, which embed every picture
as a ``data:`` URI, so the report is one self-contained file that opens from ``file://`` and mails
as one attachment: no script, font or style from anywhere. At the bottom, the Prefect task.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import re
import sys
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import task

from tasks.core.settings import SETTINGS
from tasks.core.caching import VerifiedCache
from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_text, read_json
from tasks.core.hashing import code_fingerprint, hash_file, stable_hash, to_jsonable
from tasks.core.logs import get_logger

TEMPLATES = Path(__file__).parent / "templates"
RUN_FILES = ("metadata.json", "metrics.json", "history.json", "predictions.npz")


@dataclass(frozen=True)
class ReportConfig:
    """``report:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    sample_images: int = 40  # test images shown with true/predicted labels
    confident_mistakes: int = 12

    def problems(self) -> list[tuple[str, str]]:
        return [(k, f"must be >= 0, got {getattr(self, k)}")
                for k in ("sample_images", "confident_mistakes") if getattr(self, k) < 0]


@dataclass(frozen=True)
class ReportRecord:
    report: str  # path of the run's report.html
    index: str  # path of artifacts/index.html


class ReportError(CifarError):
    """A run folder cannot be reported on (missing or unreadable files)."""


# =========================================================================== loading
def load_run(run_dir: str | Path, with_predictions: bool = True) -> dict[str, Any]:
    """The store stage's files of one run, checked for presence. Raises ReportError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist; list runs with `cifar runs` "
                          "or give the path of a folder under artifacts/<pipeline>/runs/")
    needed = RUN_FILES if with_predictions else RUN_FILES[:3]
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if missing:
        raise ReportError(f"run folder {run_dir} is incomplete: missing {', '.join(missing)}. "
                          "It was not written by a finished `cifar run`; run the pipeline again.")
    out: dict[str, Any] = {"dir": run_dir}
    for name in needed[:3]:
        try:
            out[name.removesuffix(".json")] = read_json(run_dir / name)
        except ValueError as exc:
            raise ReportError(f"{run_dir / name} is not valid JSON ({exc}); "
                              "run the pipeline again to rewrite the run") from exc
    if with_predictions:
        import numpy as np

        with np.load(run_dir / "predictions.npz", allow_pickle=False) as z:
            out["predictions"] = {k: z[k] for k in ("y_true", "y_pred", "probs")}
    registry = run_dir.parent.parent / "registry.json"
    out["registry"] = read_json(registry) if registry.is_file() else {"champion": None}
    return out


def run_dirs(artifacts_dir: str | Path, pipeline: str | None = None) -> list[Path]:
    """Every complete run folder (metadata.json present) under artifacts_dir, any order."""
    root = Path(artifacts_dir)
    pattern = f"{pipeline}/runs/*/metadata.json" if pipeline else "*/runs/*/metadata.json"
    return [p.parent for p in root.glob(pattern) if not p.parent.name.startswith(".")]


def run_summaries(artifacts_dir: str | Path, pipeline: str | None = None) -> list[dict[str, Any]]:
    """One small dict per run (for the index and comparisons), newest first."""
    rows = []
    champions: dict[str, str | None] = {}
    for d in run_dirs(artifacts_dir, pipeline):
        try:
            meta = read_json(d / "metadata.json")
            metrics = read_json(d / "metrics.json")
        except (OSError, ValueError):
            continue  # a half-deleted run: leave it out of the index rather than fail
        name = meta.get("pipeline", d.parent.parent.name)
        if name not in champions:
            reg = d.parent.parent / "registry.json"
            champ = (read_json(reg).get("champion") or {}) if reg.is_file() else {}
            champions[name] = champ.get("run_id")
        training = meta.get("training") or {}
        rows.append({
            "dir": d,
            "pipeline": name,
            "run_id": meta.get("run_id", d.name),
            "created_at": meta.get("created_at", ""),
            "model": (meta.get("model") or {}).get("name", ""),
            "epochs": training.get("epochs"),
            "seconds_per_epoch": training.get("seconds_per_epoch"),
            "train_seconds": training.get("seconds"),
            "test_accuracy": metrics.get("test_accuracy"),
            "test_loss": metrics.get("test_loss"),
            "champion": champions[name] == meta.get("run_id", d.name),
            "has_report": (d / "report.html").is_file(),
        })
    rows.sort(key=lambda r: (r["created_at"], r["run_id"]), reverse=True)
    return rows


def read_history(run_dir: str | Path) -> list[dict[str, Any]] | None:
    p = Path(run_dir) / "history.json"
    try:
        return read_json(p)["epochs"]
    except (OSError, ValueError, KeyError):
        return None


# =========================================================================== tables (pure)
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
            if layer.get("kernel_size"):
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


def _value_from_run(artifacts_dir: Path, pipeline: str, run_id: str | None) -> float | None:
    if not run_id:
        return None
    p = artifacts_dir / pipeline / "runs" / run_id / "metrics.json"
    try:
        return float(read_json(p)["test_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
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
        value = _value_from_run(artifacts_dir, pipeline, run_id)
        if value is None and metric == "test_accuracy" and promo.get(value_key) is not None:
            value = float(promo[value_key])
        return {"run_id": run_id, "accuracy": value,
                "delta_pp": None if value is None else (acc - value) * 100}

    return {
        "accuracy": acc,
        "accuracy_repr": repr(acc),
        "accuracy_pct": f"{acc * 100:.2f}%",
        "loss": metrics.get("test_loss"),
        "champion": other("champion_before", "champion_value"),
        "previous": other("previous_run", "previous_value"),
        "promoted": bool(promo.get("promoted")),
        "reason": promo.get("reason", ""),
        "metric": metric,
        "metric_value": promo.get("value"),
    }


def per_class_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"class": r.get("class", ""), "precision": r.get("precision"), "recall": r.get("recall"),
             "accuracy": r.get("accuracy"), "support": r.get("support")}
            for r in metrics.get("per_class", [])]


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


# =========================================================================== plots (pure)
def _figure(w: float, h: float, **margins: float):
    """A figure with fixed margins (inches): constrained/tight layout would cost ~0.3 s a plot."""
    from matplotlib.figure import Figure  # Agg canvas; no pyplot, no global state

    fig = Figure(figsize=(w, h), dpi=100)
    m = {"left": 0.75, "right": 0.2, "bottom": 0.55, "top": 0.4, "wspace": 0.25, **margins}
    fig.subplots_adjust(left=m["left"] / w, right=1 - m["right"] / w, bottom=m["bottom"] / h,
                        top=1 - m["top"] / h, wspace=m["wspace"])
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # zlib level 3: ~2x faster than PIL's default 6, files a few % larger
    fig.savefig(buf, format="png", dpi=100, pil_kwargs={"compress_level": 3})
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _epochs(history: list[dict[str, Any]]) -> list[int]:
    return [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]


def _epoch_ticks(ax) -> None:
    """Whole epochs on the x axis (matplotlib puts 0.6, 0.8, ... around a single epoch)."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = ax.get_xlim()
    if hi - lo <= 25:
        ax.set_xticks([e for e in range(1, int(hi) + 1) if e >= lo])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


STAGE_ORDER = ("download", "prepare", "train", "save", "report")


def plot_history(history: list[dict[str, Any]]) -> bytes:
    """Accuracy and loss per epoch, train vs validation: the notebook's plot done right."""

    fig = _figure(10, 3.6)
    ep = _epochs(history)
    for ax, key, title in zip(fig.subplots(1, 2), ("accuracy", "loss"), ("Accuracy", "Loss")):
        ax.plot(ep, [h.get(key) for h in history], "o-", label=f"train {key}", color="#1f77b4")
        ax.plot(ep, [h.get(f"val_{key}") for h in history], "s--", label=f"validation {key}",
                color="#ff7f0e")
        ax.set_title(f"{title} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        _epoch_ticks(ax)
        ax.set_xlim(0.5, max(ep, default=1) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def plot_comparison(this: tuple[str, list], champion: tuple[str, list] | None,
                    previous: list[tuple[str, list]]) -> bytes:
    """Validation accuracy per epoch: this run vs the champion (before it) and previous runs."""

    fig = _figure(10, 3.6)
    ax = fig.subplots()
    for i, (label, hist) in enumerate(previous):
        ax.plot(_epochs(hist), [h.get("val_accuracy") for h in hist], ".-", color="0.6",
                alpha=0.9, lw=1, label="previous runs" if i == 0 else None)
    if champion:
        ax.plot(_epochs(champion[1]), [h.get("val_accuracy") for h in champion[1]], "D--", ms=6,
                color="#d4a017", lw=2, label=f"champion {champion[0]}")
    ax.plot(_epochs(this[1]), [h.get("val_accuracy") for h in this[1]], "o-", color="#1f77b4",
            lw=2.2, label=f"this run {this[0]}")
    ax.set_title("Validation accuracy per epoch: this run vs earlier runs")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    _epoch_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _png(fig)


def plot_confusion(cm: list[list[int]], classes: list[str]) -> bytes:
    """Heat map of the confusion matrix, counts written in every cell."""
    import numpy as np

    cm = np.asarray(cm, dtype=np.int64)
    n = len(classes)
    size = max(3.0, 0.42 * n)  # the matrix itself, inches
    fig = _figure(size + 2.6, size + 1.6, left=1.2, right=1.4, bottom=1.1, top=0.4)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (test split, counts)")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")
    cax = fig.add_axes((1 - 1.15 / fig.get_figwidth(), ax.get_position().y0, 0.18 / fig.get_figwidth(),
                        ax.get_position().height))
    fig.colorbar(im, cax=cax, label="images")
    return _png(fig)


def plot_image_grid(images, y_true, y_pred, conf, classes, title: str, cols: int = 8) -> bytes:
    """Test images with true label, predicted label and confidence; mistakes framed in red.

    One mosaic array and one imshow (not an axes per image): fast even for many images.
    """
    import numpy as np

    n = len(images)
    if n == 0:
        fig = _figure(4, 1)
        fig.text(0.5, 0.5, "no images", ha="center", va="center")
        return _png(fig)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    scale, pad, caption = 3, 4, 46  # pixels per image pixel, frame, caption height
    h, w = images.shape[1] * scale, images.shape[2] * scale
    cw, ch = w + 2 * pad + 24, h + 2 * pad + caption
    mosaic = np.full((rows * ch, cols * cw, 3), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        y0, x0 = r * ch, c * cw
        img = np.asarray(images[k])
        if img.ndim == 2 or img.shape[-1] == 1:
            img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
        big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
        frame = (214, 39, 40) if y_true[k] != y_pred[k] else (44, 160, 44)
        mosaic[y0:y0 + h + 2 * pad, x0:x0 + w + 2 * pad] = frame
        mosaic[y0 + pad:y0 + pad + h, x0 + pad:x0 + pad + w] = big
    dpi = 100
    fig = _figure(mosaic.shape[1] / dpi, mosaic.shape[0] / dpi + 0.4)
    ax = fig.add_axes((0, 0, 1, mosaic.shape[0] / (mosaic.shape[0] + 40)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, y=0.995, fontsize=11)
    for k in range(n):
        r, c = divmod(k, cols)
        y0, x0 = r * ch + h + 2 * pad + 2, c * cw
        wrong = y_true[k] != y_pred[k]
        color = "#d62728" if wrong else "#2c7a2c"
        ax.text(x0, y0, f"true: {classes[y_true[k]]}", fontsize=7, va="top")
        ax.text(x0, y0 + 11, f"pred: {classes[y_pred[k]]}", fontsize=7, va="top", color=color,
                fontweight="bold" if wrong else "normal")
        ax.text(x0, y0 + 22, f"{conf[k]:.0%} sure{'  ✗ wrong' if wrong else ''}", fontsize=7,
                va="top", color=color, fontweight="bold" if wrong else "normal")
    return _png(fig)


def _parse_time(s: str):
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def plot_index_accuracy(rows: list[dict[str, Any]]) -> bytes:
    """Test accuracy over time, one line per pipeline; champions ringed."""
    fig = _figure(10, 3.8, bottom=0.95)
    ax = fig.subplots()
    by_pipe: dict[str, list] = {}
    for r in rows:
        t = _parse_time(r["created_at"])
        if t is not None and r["test_accuracy"] is not None:
            by_pipe.setdefault(r["pipeline"], []).append((t, r["test_accuracy"], r["champion"]))
    for name, pts in sorted(by_pipe.items()):
        pts.sort()
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        champ = [p for p in pts if p[2]]
        if champ:
            ax.plot([p[0] for p in champ], [p[1] for p in champ], "o", ms=13, mfc="none",
                    mec=line.get_color(), mew=2)
    ax.set_title("Test accuracy of every run over time (ringed: the pipeline's champion)")
    ax.set_xlabel("run date (UTC)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    if by_pipe:
        ax.legend(loc="best")
    fig.autofmt_xdate(bottom=0.95 / 3.8)
    return _png(fig)


def plot_pair(a: dict[str, Any], b: dict[str, Any]) -> bytes:
    """Two pipelines' latest runs side by side: val accuracy, val loss, seconds per epoch."""

    fig = _figure(12, 3.4, wspace=0.3)
    ax_acc, ax_loss, ax_t = fig.subplots(1, 3)
    colors = ("#1f77b4", "#ff7f0e")
    for run, color in zip((a, b), colors):
        hist = run["history"] or []
        ep = _epochs(hist)
        label = run["pipeline"]
        ax_acc.plot(ep, [h.get("val_accuracy") for h in hist], "o-", color=color, label=label)
        ax_acc.plot(ep, [h.get("accuracy") for h in hist], ":", color=color, alpha=0.7,
                    label=f"{label} (train)")
        ax_loss.plot(ep, [h.get("val_loss") for h in hist], "o-", color=color, label=label)
        ax_loss.plot(ep, [h.get("loss") for h in hist], ":", color=color, alpha=0.7,
                     label=f"{label} (train)")
        ax_t.plot(ep, [h.get("seconds") for h in hist], "o-", color=color, label=label)
    for ax, title, ylabel in ((ax_acc, "Accuracy per epoch", "accuracy"),
                              (ax_loss, "Loss per epoch", "loss"),
                              (ax_t, "Time per epoch", "seconds")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        _epoch_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_ylim(bottom=0)
    return _png(fig)


# =========================================================================== rendering
def _jinja_env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"),
                                            default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v, d=2: "—" if v is None else f"{float(v) * 100:.{d}f}%"
    env.filters["num"] = lambda v, d=3: "—" if v is None else f"{float(v):.{d}f}"
    env.filters["secs"] = _fmt_seconds
    env.filters["thousands"] = lambda v: "—" if v is None else f"{int(v):,}"
    env.filters["signed_pp"] = lambda v: "—" if v is None else f"{v:+.2f} pp"
    env.filters["when"] = _fmt_when
    return env


def _fmt_seconds(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    if v < 60:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _fmt_when(s: str) -> str:
    t = _parse_time(s)
    return t.strftime("%Y-%m-%d %H:%M UTC") if t else (s or "—")


def template_version() -> str:
    """Hash of this module and the templates: part of the report's cache key."""
    return code_fingerprint(sys.modules[__name__], *sorted(TEMPLATES.glob("*.j2")))


CONFIG_ORDER = ("name", "description", "expect", "dataset", "prepare", "model", "training",
                "promote", "keep_last", "report", "schedule")


def _yaml(obj: Any) -> str:
    """The resolved config as YAML, in pipelines.yaml's order (name and description first)."""
    import yaml

    if isinstance(obj, dict):
        obj = {**{k: obj[k] for k in CONFIG_ORDER if k in obj},
               **{k: v for k, v in obj.items() if k not in CONFIG_ORDER}}
    return yaml.safe_dump(to_jsonable(obj), sort_keys=False, default_flow_style=False,
                          allow_unicode=True)


def _href(*parts: str) -> str:
    return "/".join(urllib.parse.quote(p, safe="") for p in parts)


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
    head = headline(meta, metrics, artifacts_dir)

    # comparison with the champion before this run and the previous runs of this pipeline
    promo = meta.get("promotion") or {}
    champ_id = promo.get("champion_before")
    champ_hist = read_history(artifacts_dir / pipeline / "runs" / champ_id) if champ_id else None
    earlier = [r for r in run_summaries(artifacts_dir, pipeline)
               if (r["created_at"], r["run_id"]) < (meta.get("created_at", ""), run_id)
               and r["run_id"] != champ_id][:8]
    prev = [(r["run_id"], h) for r in earlier if (h := read_history(r["dir"]))]
    comparison = None
    if champ_hist or prev:
        comparison = data_uri(plot_comparison((run_id, history),
                                              (champ_id, champ_hist) if champ_hist else None, prev))

    # pictures of test images
    y_true, y_pred, probs = pred["y_true"], pred["y_pred"], pred["probs"]
    sample, mistakes, conf = pick_samples(y_true, y_pred, probs, cfg.sample_images,
                                          cfg.confident_mistakes)
    images_note = None
    grid = worst = None
    if images is None:
        images_note = (f"The dataset cache {dataset.get('path')} is not on this machine, so the "
                       "test images cannot be shown.")
    elif len(images) != len(y_true):
        images_note = (f"The dataset cache holds {len(images)} test images but the run predicted "
                       f"{len(y_true)}: it is not the data this run used, so no images are shown.")
    else:
        if len(sample):
            grid = data_uri(plot_image_grid(images[sample], y_true[sample], y_pred[sample],
                                            conf[sample], classes,
                                            f"{len(sample)} random test images (seeded)"))
        if len(mistakes):
            worst = data_uri(plot_image_grid(images[mistakes], y_true[mistakes], y_pred[mistakes],
                                             conf[mistakes], classes,
                                             f"The {len(mistakes)} most confident mistakes"))
    shapes = dataset.get("shapes") or {}
    input_shape = shapes.get("x_test", shapes.get("x_train"))
    layers = model.get("layers", [])
    validation = meta.get("validation") or {}
    counts = dataset.get("counts") or {}
    seconds = [h.get("seconds") for h in history]
    return {
        "title": f"{pipeline} · {run_id}",
        "pipeline": pipeline,
        "run_id": run_id,
        "created_at": meta.get("created_at", ""),
        "config": meta.get("config") or {},
        "head": head,
        "wrong": int((y_true != y_pred).sum()),
        "n_test": int(len(y_true)),
        "history": history,
        "history_png": data_uri(plot_history(history)),
        "comparison_png": comparison,
        "comparison_runs": {"champion": champ_id if champ_hist else None,
                            "previous": [p[0] for p in prev]},
        "confusion_png": data_uri(plot_confusion(metrics.get("confusion_matrix", []), classes)),
        "per_class": per_class_rows(metrics),
        "grid_png": grid,
        "mistakes_png": worst,
        "images_note": images_note,
        "layers": layer_table(model),
        "model_name": model.get("name", ""),
        "example": first_conv_example(layers, input_shape),
        "dataset": dataset,
        "classes": classes,
        "counts_rows": [{"class": c, "train": (counts.get("train") or {}).get(c),
                         "test": (counts.get("test") or {}).get(c)} for c in classes],
        "validation": validation,
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
        "index_href": "../../../index.html",
    }


def _load_test_images(meta: dict[str, Any]):
    from tasks.core.datacache import load_dataset

    path = (meta.get("dataset") or {}).get("path")
    if not path or not (Path(path) / "manifest.json").is_file():
        return None
    try:
        return load_dataset(path, mmap=True).x_test
    except (OSError, ValueError, KeyError) as exc:
        get_logger().warning("cannot open the test images in %s: %s", path, exc)
        return None


def render_report(run_dir: str | Path, cfg: ReportConfig | None = None,
                  artifacts_dir: str | Path | None = None) -> Path:
    """Write ``<run_dir>/report.html`` (atomically) and return its path."""
    run_dir = Path(run_dir).resolve()
    run = load_run(run_dir)
    meta = run["metadata"]
    if cfg is None:
        cfg = ReportConfig(**{k: v for k, v in ((meta.get("config") or {}).get("report") or {}).items()
                              if k in ReportConfig.__dataclass_fields__})
    artifacts_dir = Path(artifacts_dir) if artifacts_dir else run_dir.parent.parent.parent
    ctx = build_report_context(run, cfg, artifacts_dir, _load_test_images(meta))
    html = _jinja_env().get_template("report.html.j2").render(**ctx)
    return atomic_write_text(run_dir / "report.html", html)


def build_index_context(artifacts_dir: str | Path) -> dict[str, Any]:
    artifacts_dir = Path(artifacts_dir)
    rows = run_summaries(artifacts_dir)
    for r in rows:
        r["href"] = _href(r["pipeline"], "runs", r["run_id"], "report.html")
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:  # newest first: the first seen is each pipeline's latest run
        if r["pipeline"] not in latest:
            latest[r["pipeline"]] = {**r, "history": read_history(r["dir"]) or []}
    pipelines = sorted(latest)
    pairs = []
    for a, b in itertools.combinations(pipelines, 2):
        ra, rb = latest[a], latest[b]
        pairs.append({
            "id": "cmp-" + re.sub(r"[^a-z0-9-]+", "-", f"{a}--vs--{b}".lower()) + "-"
                  + stable_hash(a, b, length=6),
            "a": ra, "b": rb,
            "png": data_uri(plot_pair(ra, rb)),
        })
    return {
        "rows": rows,
        "pipelines": pipelines,
        "latest": [latest[p] for p in pipelines],
        "chart_png": data_uri(plot_index_accuracy(rows)) if rows else None,
        "pairs": pairs,
        "generated_at": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def render_index(artifacts_dir: str | Path) -> Path:
    """Write ``<artifacts_dir>/index.html`` (atomically) listing every run; return its path."""
    artifacts_dir = Path(artifacts_dir).resolve()
    html = _jinja_env().get_template("index.html.j2").render(**build_index_context(artifacts_dir))
    return atomic_write_text(artifacts_dir / "index.html", html)


def resolve_run_dir(run: str | Path, artifacts_dir: str | Path) -> Path:
    """A run given as a folder path, ``pipeline/run_id`` or a bare run id -> its folder."""
    p = Path(run)
    if (p / "metadata.json").is_file():
        return p
    root = Path(artifacts_dir)
    parts = str(run).strip("/").split("/")
    if len(parts) == 2 and (root / parts[0] / "runs" / parts[1] / "metadata.json").is_file():
        return root / parts[0] / "runs" / parts[1]
    hits = [d for d in run_dirs(root) if d.name == str(run)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ReportError(f"run id {run!r} exists in several pipelines "
                          f"({', '.join(d.parent.parent.name for d in hits)}); "
                          "give it as PIPELINE/RUN_ID")
    raise ReportError(f"no run {run!r}: not a run folder and not a run id under {root}; "
                      "give a folder artifacts/<pipeline>/runs/<run_id> or PIPELINE/RUN_ID")


def regenerate(run_dir: str | Path, artifacts_dir: str | Path | None = None) -> tuple[Path, Path]:
    """`cifar report RUN`: rewrite a run's report and the index from its folder, no retraining."""
    run_dir = resolve_run_dir(run_dir, artifacts_dir or ".").resolve()
    artifacts_dir = Path(artifacts_dir).resolve() if artifacts_dir else run_dir.parents[2]
    report = render_report(run_dir, artifacts_dir=artifacts_dir)
    return report, render_index(artifacts_dir)


# =========================================================================== Prefect
def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "report"


def headline_markdown(meta: dict[str, Any], metrics: dict[str, Any], head: dict[str, Any],
                      report: Path) -> str:
    def esc(s: Any) -> str:  # markdown table cells: no pipes or newlines from config text
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = [f"### {esc(meta.get('pipeline'))} · run {esc(meta.get('run_id'))}", "",
             "| | |", "|---|---|",
             f"| Test accuracy | **{head['accuracy_pct']}** |",
             f"| Test loss | {metrics.get('test_loss', float('nan')):.4f} |"]
    for name in ("champion", "previous"):
        o = head[name]
        if o and o["delta_pp"] is not None:
            lines.append(f"| vs {name} {esc(o['run_id'])} | {o['delta_pp']:+.2f} pp |")
    lines += [f"| Promoted | {'yes' if head['promoted'] else 'no'}: {esc(head['reason'])} |",
              f"| Report | `{report}` |"]
    return "\n".join(lines) + "\n"


def publish_artifacts(meta: dict[str, Any], metrics: dict[str, Any], report: Path,
                      artifacts_dir: Path) -> None:
    """Markdown (headline) and link (report file) artifacts, when inside a Prefect run."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    pipeline = meta.get("pipeline", "")
    head = headline(meta, metrics, artifacts_dir)
    create_markdown_artifact(key=artifact_key("report", pipeline),
                             markdown=headline_markdown(meta, metrics, head, report),
                             description=f"Headline metrics of run {meta.get('run_id')}")
    create_link_artifact(key=artifact_key("report-link", pipeline), link=report.as_uri(),
                         link_text=f"report {pipeline} {meta.get('run_id')}",
                         description="The run's HTML report (a local file)")


def _report_key(inputs: dict[str, Any]) -> str:
    run_dir = Path(inputs["run"].path)
    return stable_hash("report", hash_file(run_dir / "metadata.json").sha256,
                       hash_file(run_dir / "metrics.json").sha256, inputs["cfg"], template_version())


def _report_valid(inputs: dict[str, Any], key: str) -> bool:
    return ((Path(inputs["run"].path) / "report.html").is_file()
            and (Path(inputs["artifacts_dir"]) / "index.html").is_file())


def _transient(task, task_run, state) -> bool:
    """Retry I/O hiccups, never a ReportError (a broken run folder stays broken)."""
    return not isinstance(state.data, CifarError)


@task(name="build-report", retries=2, retry_delay_seconds=1, retry_condition_fn=_transient,
      persist_result=True, cache_policy=VerifiedCache(key_fn=_report_key, valid_fn=_report_valid))
def build_report(run: Any, cfg: ReportConfig, artifacts_dir: str) -> ReportRecord:
    """Render the run's report.html and artifacts/index.html; publish Prefect artifacts."""
    log = get_logger()
    run_dir = Path(run.path)
    report = render_report(run_dir, cfg, artifacts_dir)
    index = render_index(artifacts_dir)
    meta = read_json(run_dir / "metadata.json")
    publish_artifacts(meta, read_json(run_dir / "metrics.json"), report, Path(artifacts_dir))
    log.info("report for %s run %s: %s", run.pipeline, run.run_id, report)
    return ReportRecord(report=str(report), index=str(index))
