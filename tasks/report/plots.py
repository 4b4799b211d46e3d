"""The report's pictures: matplotlib ``Figure`` objects on the Agg canvas (no pyplot, no global
state), returned as PNG bytes, and the ``data:`` URI that embeds one in a page. Pure: data in,
bytes out; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import hashlib
import io
import logging
import math
import pickle
import threading
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any

# Families tried, in order, for a character the first one lacks (matplotlib >= 3.6 falls back
# glyph by glyph along ``font.family``): CJK and other scripts where such a font is installed.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
                  "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
                  "AR PL UMing CN", "Noto Sans", "Noto Sans Arabic", "Noto Sans Hebrew",
                  "Noto Sans Devanagari", "Noto Sans Thai", "FreeSans", "Unifont")


@functools.cache
def font_families() -> tuple[str, ...]:
    """DejaVu Sans (matplotlib's own), then each installed fallback family."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed))


@functools.cache
def _covered() -> frozenset[int]:
    """Every code point some font of ``font_families()`` has a glyph for."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    points: set[int] = set()
    with _quiet_fonts():
        for family in font_families():
            try:
                path = font_manager.findfont(font_manager.FontProperties(family=family),
                                             fallback_to_default=False)
                points.update(FT2Font(path).get_charmap())
            except (ValueError, OSError, RuntimeError):  # listed but unreadable: it covers nothing
                continue
    return frozenset(points)


def missing_glyphs(texts) -> list[str]:
    """The characters of ``texts`` (class or pipeline names) that no installed font can draw:
    the pictures show them as empty boxes. Spaces and control characters are not counted."""
    covered = _covered()
    seen: dict[str, None] = {}
    for text in texts:
        for ch in str(text):
            if ch.isprintable() and not ch.isspace() and ord(ch) not in covered:
                seen[ch] = None
    return list(seen)


def _drawn(plot=None, *, drawn_from: Callable[..., tuple] | None = None):
    """Decorator for a plot function: its text is drawn as written (no mathtext, so a class named
    ``$\\foo$`` or ``price $5`` prints as is; no LaTeX even if a matplotlibrc asks for it), with
    the fallback fonts, and without matplotlib's missing-glyph warnings (the report says so).
    The same data drawn again in this process is not drawn again (``_drawings``). ``drawn_from``:
    the arguments cut down to what the picture shows (rows carry paths and links too); the memo is
    keyed by that, and the plot is given only that, so it cannot draw what the key leaves out."""
    if plot is None:
        return functools.partial(_drawn, drawn_from=drawn_from)

    @functools.wraps(plot)
    def draw(*args, **kwargs):
        import matplotlib

        if drawn_from is not None:
            args = drawn_from(*args, **kwargs)
            kwargs = {}
        key = _drawings.key(plot.__qualname__, args, kwargs)
        png = _drawings.get(key)
        if png is not None:
            return png
        style = {"text.parse_math": False, "text.usetex": False, "font.family": list(font_families())}
        with _quiet_fonts(), matplotlib.rc_context(style), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
            png = plot(*args, **kwargs)
        _drawings.put(key, png)
        return png
    return draw


class _Drawings:
    """The last ``size`` pictures drawn in this process, by a digest of what they were drawn from:
    the index is rendered again after every run (and a report after each promotion), and all
    but one pipeline's pictures are the same as last time; drawing one costs ~0.15 s. Bounded
    (a few MB); a picture whose inputs cannot be pickled is simply drawn every time."""

    def __init__(self, size: int = 64):
        self.size, self._items, self._lock = size, collections.OrderedDict(), threading.Lock()

    @staticmethod
    def key(name: str, args: tuple, kwargs: dict) -> str | None:
        try:
            blob = pickle.dumps((name, args, sorted(kwargs.items())), protocol=5)
        except Exception:  # noqa: BLE001 - not picklable: no memo, the plot is drawn
            return None
        return hashlib.blake2b(blob, digest_size=20).hexdigest()

    def get(self, key: str | None) -> bytes | None:
        if key is None:
            return None
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
            return png

    def put(self, key: str | None, png: bytes) -> None:
        if key is None or not isinstance(png, bytes):
            return
        with self._lock:
            self._items[key] = png
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_drawings = _Drawings()


@contextlib.contextmanager
def _quiet_fonts():
    """No "findfont: Failed to find font weight normal for ..." lines about a fallback font."""
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)
    try:
        yield
    finally:
        fonts.setLevel(level)


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


@_drawn
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


@_drawn
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


@_drawn
def plot_confusion(cm, classes: list[str], normalised: bool = False) -> bytes:
    """Heat map of the confusion matrix: counts, or (``normalised``) each row's share of the
    class's images, in whole percent, so the diagonal is each class's recall."""
    import numpy as np

    cm = np.asarray(cm, dtype=np.float64 if normalised else np.int64)
    n = len(classes)
    # The matrix itself, inches: 0.42 a class up to 40 classes, then at most 17 (255 classes
    # would otherwise make a 10,000-pixel square); values in the cells only while they fit.
    size = min(max(3.0, 0.42 * n), 17.0)
    fig = _figure(size + 2.6, size + 1.6, left=1.2, right=1.4, bottom=1.1, top=0.4)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalised else None)
    step = math.ceil(n / 80) if n else 1  # every class named up to 80 classes, then every step-th
    small = {"fontsize": max(4.0, min(10.0, 400 / max(n, 1)))}
    ax.set_xticks(range(0, n, step), labels=classes[::step], rotation=45, ha="right", **small)
    ax.set_yticks(range(0, n, step), labels=classes[::step], **small)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix, row-normalised (% of the true class)" if normalised
                 else "Confusion matrix (test split, counts)")
    threshold = (1 if normalised else cm.max()) / 2 if cm.size else 0
    for i in range(n if n <= 40 else 0):
        for j in range(n):
            text = f"{cm[i, j] * 100:.0f}" if normalised else str(cm[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")
    cax = fig.add_axes((1 - 1.15 / fig.get_figwidth(), ax.get_position().y0, 0.18 / fig.get_figwidth(),
                        ax.get_position().height))
    bar = fig.colorbar(im, cax=cax, label="share of the true class" if normalised else "images")
    if normalised:
        from matplotlib.ticker import PercentFormatter

        bar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    return _png(fig)


def reliability_figure(calibration: dict[str, Any]):
    """The reliability diagram: each bin's accuracy (bars) against its mean confidence, the
    diagonal of perfect calibration, and how many images each bin holds; the title states the
    ECE and the binning."""
    from matplotlib.ticker import PercentFormatter

    fig = _figure(10, 3.8, wspace=0.3)
    ax, ax_n = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3, 2)})
    bins = calibration.get("bins") or []
    full = [b for b in bins if b["count"]]
    width = 1 / max(len(bins), 1)
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfect calibration")
    ax.bar([b["lo"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
           color="#1f77b4", edgecolor="white", alpha=0.85, label="accuracy in the bin")
    ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], "o", color="#d62728", ms=4,
            label="mean confidence, accuracy")
    ece = calibration.get("ece")
    ece_text = "—" if ece is None or ece != ece else f"{ece * 100:.2f}%"
    ax.set_title(f"Reliability: ECE {ece_text} ({calibration.get('n_bins', len(bins))} equal-width bins)")
    ax_n.bar([b["lo"] for b in bins], [b["count"] for b in bins], width=width, align="edge",
             color="0.6", edgecolor="white")
    ax_n.set_title("Test images per confidence bin")
    ax_n.set_ylabel("images")
    for a in (ax, ax_n):
        a.set_xlim(0, 1)
        a.set_xlabel("confidence of the top class")
        a.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        a.grid(alpha=0.3)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.legend(loc="upper left", fontsize=8)
    return fig


@_drawn
def plot_reliability(calibration: dict[str, Any]) -> bytes:
    return _png(reliability_figure(calibration))


@_drawn
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
    # Each image drawn at most ~96 pixels wide: CIFAR's 32x32 at 3 pixels a pixel, large images of
    # an image folder taken every step-th pixel (2,000-pixel photos must not make a 1 GB mosaic).
    side = max(images.shape[1], images.shape[2])
    step = max(1, math.ceil(side / 96))
    images = images[:, ::step, ::step]
    scale = min(3, max(1, 96 // max(images.shape[1], images.shape[2])))  # screen pixels an image pixel
    pad, caption = 4, 46  # frame, caption height
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


def parse_time(s: str):
    """An ISO timestamp (``Z`` allowed) as a datetime, or None."""
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


@_drawn
def plot_schedule(points: list[list[float]], steps_per_epoch: int, total_steps: int) -> bytes:
    """The recipe's learning rate per optimizer step (its schedule's corner points, joined by
    straight lines), epoch boundaries marked."""
    fig = _figure(10, 3.0)
    ax = fig.subplots()
    steps = [p[0] for p in points]
    rates = [p[1] for p in points]
    ax.plot(steps, rates, "-", color="#1f77b4", lw=2)
    ax.plot(steps, rates, "o", color="#1f77b4", ms=4)
    for e in range(1, max(total_steps // max(steps_per_epoch, 1), 0) + 1):
        ax.axvline(e * steps_per_epoch, color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0, max(total_steps, 1))
    ax.set_ylim(bottom=0)
    ax.set_title(f"Learning rate per step ({steps_per_epoch} steps per epoch; grey lines: epoch ends)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    return _png(fig)
