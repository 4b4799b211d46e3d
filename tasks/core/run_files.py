"""What a run's JSON files hold, and reading one without ever raising for a bad file.

The fields that readers use (the report, the index, ``cifar runs``, the promotion rule), with
their JSON types, are checked strictly (an int is no "5" and no true). An older run may lack a
field; one present with the wrong type makes the file unusable: ``read_run_file`` says which file
and key, and the caller skips that run (or that registry) with a warning instead of failing.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from typing_extensions import Required, TypedDict  # pydantic needs these before Python 3.12

from tasks.core.files import read_json
from tasks.core.logs import get_logger


class _Layer(TypedDict("_LayerClass", {"class": str}, total=False), total=False):
    name: str
    output_shape: list[int | None] | str | None
    params: int
    kernel_size: list[int]


class _Check(TypedDict, total=False):
    name: str
    passed: bool
    detail: str


class _Dataset(TypedDict, total=False):
    path: str | None
    source: str | None
    format: str | None
    fingerprint: str | None
    archive_sha256: str | None
    classes: list[str]
    counts: dict[str, dict[str, int]] | None
    shapes: dict[str, list[int]] | None


class _Config(TypedDict, total=False):
    description: str
    expect: str
    report: TypedDict("_Report", {"sample_images": int, "confident_mistakes": int}, total=False) | None


class _Metadata(TypedDict, total=False):
    pipeline: str
    run_id: str
    seq: int
    created_at: Required[str]
    config: _Config
    dataset: _Dataset
    validation: TypedDict("_Validation", {"checks": list[_Check], "channel_mean": list[float],
                                          "channel_std": list[float]}, total=False) | None
    cache_keys: dict[str, str | None]
    flow_run_id: str | None
    versions: dict[str, str]
    devices: list[str] | None
    stages: dict[str, TypedDict("_Stage", {"seconds": float | None, "cache_hit": bool}, total=False)]
    model: TypedDict("_Model", {"name": str | None, "params": int | None, "layers": list[_Layer]},
                     total=False)
    training: TypedDict("_Training", {
        "epochs": int | None, "seconds": float | None, "seconds_per_epoch": float | None,
        "resumed_from_epoch": int | None, "strategy": str | None, "precision": str | None,
        "xla": bool | str | None, "devices": list[str] | None,
        "recipe": dict[str, Any] | None}, total=False)
    promotion: TypedDict("_Promotion", {
        "promoted": bool, "reason": str, "metric": str, "value": float | None,
        "champion_before": str | None, "champion_value": float | None,
        "previous_run": str | None, "previous_value": float | None}, total=False)
    files: dict[str, str]


_ClassRow = TypedDict("_ClassRow", {"class": str, "precision": float | None, "recall": float | None,
                                    "f1": float | None, "accuracy": float | None, "support": int}, total=False)


class _Metrics(TypedDict, total=False):
    test_accuracy: Required[float]
    test_loss: float | None
    test_size: int
    classes: list[str]
    per_class: list[_ClassRow]
    confusion_matrix: list[list[int]]
    tta: dict[str, Any] | None
    macro_avg: dict[str, Any]
    weighted_avg: dict[str, Any]
    top_k_accuracy: dict[str, float]
    calibration: dict[str, Any]


class _History(TypedDict):
    epochs: list[TypedDict("_Epoch", {"epoch": int, "loss": float | None, "accuracy": float | None,
                                      "val_loss": float | None, "val_accuracy": float | None,
                                      "seconds": float | None}, total=False)]


class _Champion(TypedDict, total=False):
    run_id: Required[str]
    metric: str
    value: float | None
    promoted_at: str
    reason: str
    by: str


_Decision = TypedDict("_Decision", {"run_id": str, "at": str, "by": str, "reason": str,
                                    "replaced": str | None}, total=False)


class _Registry(TypedDict, total=False):
    champion: _Champion | None
    history: list[_Decision]
    sha256: str


_SHAPES = {"metadata": TypeAdapter(_Metadata), "metrics": TypeAdapter(_Metrics),
           "history": TypeAdapter(_History), "registry": TypeAdapter(_Registry)}
MAX_JSON_BYTES = 64 << 20  # no run file comes near this; a bigger one was not written by a run


_WORDS = {"dict_type": "expected a JSON object", "list_type": "expected a list", "missing": "missing",
          "string_type": "expected a string", "int_type": "expected an integer",
          "float_type": "expected a number", "bool_type": "expected true or false"}


def _key_path(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"


def shape_problems(name: str, obj: Any) -> list[str]:
    """What is wrong with the content of a run file of kind ``name`` (metadata, metrics, history,
    registry): ``key.path: problem (got value)``, at most five."""
    try:
        _SHAPES[name].validate_python(obj, strict=True)
        out = []
    except ValidationError as exc:
        out = [f"{_key_path(e['loc'])}: {_WORDS.get(e['type'], e['msg'].lower())}"
               + ("" if e["type"] == "missing" else f", got {_short(e['input'])}")
               for e in exc.errors(include_url=False)]
    if name == "metadata" and not out and parse_iso(obj["created_at"]) is None:
        out.append(f"created_at: expected an ISO date-time, got {_short(obj['created_at'])}")
    if name == "metrics" and not out and "classes" in obj and "confusion_matrix" in obj:
        n, cm = len(obj["classes"]), obj["confusion_matrix"]
        if len(cm) != n or any(len(row) != n for row in cm):
            out.append(f"confusion_matrix: is not {n} x {n} for the {n} classes")
    return out[:5]


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters."""
    return _clip(repr(value), width)


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_iso(value: Any) -> datetime | None:
    """An ISO timestamp (``Z`` allowed) as a datetime, or None."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        return None


def read_run_file(path: str | os.PathLike, shape: str | None = None) -> tuple[Any, str | None]:
    """(content, None), or (None, why it is unusable) for a run file that is missing, too big,
    not JSON, or not of its ``shape`` (see ``shape_problems``). Never raises for a bad file."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a folder, or a FIFO a read would block on
            return None, f"{path} is not a regular file"
        if path.stat().st_size > MAX_JSON_BYTES:
            return None, f"{path} is {path.stat().st_size:,} bytes, more than a run ever writes"
        obj = read_json(path)
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        return None, f"{path} is not readable JSON ({type(exc).__name__}: {_clip(str(exc), 120)})"
    problems = shape_problems(shape, obj) if shape else []
    if problems:
        return None, f"{path} does not hold what a run writes: {'; '.join(problems)}"
    return obj, None


_warned: set[tuple[str, str]] = set()


def warn_once(path: Path, text: str) -> None:
    """Log ``text`` as a warning once per file state (a long-lived process repeats nothing)."""
    try:
        stamp = f"{path.stat().st_mtime_ns}-{path.stat().st_size}"
    except OSError:
        stamp = "gone"
    if (key := (f"{path}@{stamp}", text)) not in _warned:
        _warned.add(key)
        get_logger().warning("%s", text)
