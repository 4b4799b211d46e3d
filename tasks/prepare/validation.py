"""The validation itself: the prepared data checked against the contracts and the dataset-level
rules (sizes, classes present, balance, train/test duplicates, channel spread), reduced to one
summary; and, for a dataset cache, that summary kept on disk under its key and reused."""

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tasks.core import faults
from tasks.core.datacache import DatasetRecord, cache_problems, load_dataset
from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_json, file_lock, read_json
from tasks.core.hashing import closure_fingerprint, stable_hash
from tasks.core.logs import get_logger
from tasks.core.pixels import one_hot, scale_pixels
from tasks.core.records import ValidationRecord
from tasks.prepare import hints
from tasks.prepare.config import PrepareConfig
from tasks.prepare.contracts import (
    image_schema,
    label_schema,
    passed_detail,
    schema_failures,
)
from tasks.prepare.errors import DataValidationError
from tasks.prepare.summaries import (
    CHUNK,
    image_hashes,
    summarize_images,
    summarize_labels,
)

FIRST = 5  # how many failing row indices a detail shows


class CheckResult(NamedTuple):
    name: str
    passed: bool
    detail: str
    hint: str = ""  # shown only when the check failed; never in the summary


# --------------------------------------------------------------------------- the checks
def summary_frames(splits: dict[str, tuple[Any, Any]], scale: Callable | None, encode: Callable | None,
                   chunk: int) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Each split's image and label frames, and the train images' per-channel sums."""
    image_frames, label_frames, train_channels = {}, {}, None
    for split, (x, y) in splits.items():
        image_frames[split], channels = summarize_images(x, scale, chunk)
        label_frames[split] = summarize_labels(y, encode)
        if split == "train":
            train_channels = channels
    return image_frames, label_frames, train_channels


def schema_checks(kind: str, schema, frames: dict[str, Any], hint_for: Callable) -> list[CheckResult]:
    """One result per check of ``schema``, every split's failing rows in its detail."""
    results = {split: schema_failures(schema, frame) for split, frame in frames.items()}
    names = list(dict.fromkeys(name for names, _ in results.values() for name in names))
    out = []
    for name in names:
        failing = {split: failed[name] for split, (_, failed) in results.items() if name in failed}
        if not failing:
            out.append(CheckResult(f"{kind}: {name}", True, passed_detail(name, frames)))
            continue
        details = [f"{split}: {len(rows):,} of {len(frames[split]):,} rows failed "
                   f"(first: {_first_indices(rows)})" for split, rows in failing.items()]
        split_hints = (hint_for(name, frames[split], rows) for split, rows in failing.items())
        out.append(CheckResult(f"{kind}: {name}", False, "; ".join(details),
                               "; ".join(dict.fromkeys(h for h in split_hints if h))))
    return out


def _first_indices(rows) -> str:
    return ", ".join(map(str, rows[:FIRST])) + (", ..." if len(rows) > FIRST else "")


def lengths_check(splits: dict[str, tuple[Any, Any]]) -> CheckResult:
    detail = "; ".join(f"{s}: {len(x):,} images, {len(y):,} labels" for s, (x, y) in splits.items())
    return CheckResult("images and labels have equal lengths",
                       all(len(x) == len(y) for x, y in splits.values()), detail,
                       hints.LENGTHS_OUT_OF_STEP)


def sizes_check(sizes: dict[str, int], expected_sizes: dict[str, int]) -> CheckResult:
    return CheckResult("split sizes match the manifest",
                       all(sizes[s] == expected_sizes.get(s) for s in sizes),
                       ", ".join(f"{s}: {sizes[s]:,} (manifest {expected_sizes.get(s)})" for s in sizes),
                       hints.SIZES_CHANGED)


def class_counts(label_frames: dict[str, Any], classes: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Images per class in each split (rows that are not one-hot count for no class)."""
    counts = {}
    for split, frame in label_frames.items():
        labels = frame["label"][frame["label"] >= 0].to_numpy()
        n = np.bincount(labels, minlength=len(classes))[:len(classes)]
        counts[split] = {c: int(v) for c, v in zip(classes, n)}
    return counts


def presence_check(counts: dict[str, dict[str, int]], classes: tuple[str, ...]) -> CheckResult:
    """At least two classes (one class is learned perfectly by a constant), and every class with
    images in each split; the detail names the missing classes split by split."""
    problems = []
    if len(classes) < 2:
        names = ", ".join(repr(c) for c in classes) or "none"
        problems.append(f"{len(classes)} class(es) ({names}): a classifier needs at least two")
    absent = {s: [c for c in classes if counts[s][c] == 0] for s in counts}
    problems += [f"{s} has no {', '.join(repr(c) for c in names)}" for s, names in absent.items() if names]
    return CheckResult("at least two classes, every class present in both splits", not problems,
                       "; ".join(problems) or f"all {len(classes)} classes in train and test",
                       hints.TOO_FEW_CLASSES if len(classes) < 2 else hints.CLASS_MISSING)


def balance_check(counts: dict[str, dict[str, int]], tolerance: float) -> CheckResult:
    off = []  # every class count further than `tolerance` from its split's mean
    for split, per_class in counts.items():
        present = np.array([v for v in per_class.values() if v > 0], dtype=np.float64)
        if present.size == 0:
            continue
        mean = present.mean()
        for c, v in per_class.items():
            if v and abs(v - mean) / mean > tolerance:
                off.append(f"{split} {c!r}: {v} vs mean {mean:g} ({(v - mean) / mean:+.1%})")
    detail = ("; ".join(off[:FIRST]) + (f" (+{len(off) - FIRST} more)" if len(off) > FIRST else "")
              if off else "every class count within tolerance")
    return CheckResult(f"class balance within {tolerance:.0%} of the mean", not off, detail,
                       hints.UNBALANCED)


def train_test_duplicates(x_train, x_test, chunk: int) -> list[int]:
    """Indices of the test images whose bytes equal a train image's."""
    train_hashes = set(image_hashes(x_train, chunk))
    return [i for i, h in enumerate(image_hashes(x_test, chunk)) if h in train_hashes]


def duplicates_check(duplicates: list[int], limit: int | None) -> CheckResult:
    first = f" (first test indices: {', '.join(map(str, duplicates[:FIRST]))})" if duplicates else ""
    return CheckResult("train/test duplicate images" + (f" <= {limit}" if limit is not None else " (reported)"),
                       limit is None or len(duplicates) <= limit,
                       f"{len(duplicates)} test image(s) also in train{first}",
                       hints.TRAIN_TEST_DUPLICATES)


def channel_stats(channels) -> tuple[list[float] | None, list[float] | None]:
    """The train split's per-channel mean and std from its (count, sum, sum of squares)."""
    if channels is None:
        return None, None
    count, s1, s2 = channels
    m = s1 / count
    return [float(v) for v in m], [float(v) for v in np.sqrt(np.maximum(s2 / count - m**2, 0.0))]


def channel_spread_check(channel_std: list[float]) -> CheckResult:
    return CheckResult("every channel varies (std > 0)",
                       not any(v == 0 for v in channel_std),  # NaN/inf is the `pixels finite` check's
                       "train channel std " + ", ".join(f"{v:.4f}" for v in channel_std),
                       hints.CONSTANT_CHANNEL)


# --------------------------------------------------------------------------- the contract
def validate_arrays(
    x_train,
    y_train,
    x_test,
    y_test,
    classes: Sequence[str],
    *,
    scale: Callable | None = None,
    encode: Callable | None = None,
    expected_shape: Sequence[int] | None = None,
    expected_sizes: dict[str, int] | None = None,
    balance_tolerance: float = 0.1,
    max_train_test_duplicates: int | None = None,
    where: str = "dataset",
    chunk: int = CHUNK,
) -> dict[str, Any]:
    """Check the prepared data; return the summary dict, or raise DataValidationError naming
    every failed check (rows failed, first indices, a hint).

    ``scale``/``encode`` turn a chunk of ``x``/``y`` into the prepared pixels/one-hot labels
    (the stage passes ``scale_pixels`` and ``one_hot`` over the uint8 cache); None means the
    arrays are already prepared. ``expected_shape`` defaults to the train images' shape.
    Duplicates are hashed on the arrays as given.
    """
    started = time.perf_counter()
    classes = tuple(classes)
    if expected_shape is None:
        expected_shape = tuple(np.shape(x_train)[1:])
    splits = {"train": (x_train, y_train), "test": (x_test, y_test)}
    image_frames, label_frames, train_channels = summary_frames(splits, scale, encode, chunk)
    sizes = {s: len(x) for s, (x, _) in splits.items()}
    counts = class_counts(label_frames, classes)
    duplicates = train_test_duplicates(x_train, x_test, chunk)
    channel_mean, channel_std = channel_stats(train_channels)

    results = [
        *schema_checks("images", image_schema(tuple(int(d) for d in expected_shape)), image_frames,
                       hints.image_hint),
        *schema_checks("labels", label_schema(len(classes)), label_frames,
                       functools.partial(hints.label_hint, num_classes=len(classes))),
        lengths_check(splits),
        *([sizes_check(sizes, expected_sizes)] if expected_sizes is not None else []),
        presence_check(counts, classes),
        balance_check(counts, balance_tolerance),
        duplicates_check(duplicates, max_train_test_duplicates),
        *([channel_spread_check(channel_std)] if channel_std is not None else []),
    ]
    failures = [{"name": r.name, "detail": r.detail, "hint": r.hint} for r in results if not r.passed]
    if failures:
        raise DataValidationError(failures, where)
    return {
        "passed": True,
        "checks": [{"name": r.name, "passed": r.passed, "detail": r.detail} for r in results],
        "counts": counts,
        "sizes": sizes,
        "classes": list(classes),
        "shape": list(expected_shape),
        "channel_mean": channel_mean,
        "channel_std": channel_std,
        "train_test_duplicates": len(duplicates),
        "seconds": round(time.perf_counter() - started, 3),
    }


# --------------------------------------------------------------------------- the kept summary
def validation_code_version() -> str:
    """The code that decides the summary: this module and every project module it imports (the
    summary frames, the contracts, the pixel scaling/encoding, the hints, ...), not their
    comments, docstrings, log or error wording, nor the Prefect task. The import closure
    replaced a hand-kept list in issue 27, changing every key once (one re-validation)."""
    return closure_fingerprint("tasks.prepare.validation")


def validation_key(dataset: DatasetRecord, cfg: PrepareConfig) -> str:
    """The dataset, the settings and the code that decides the summary (``validation_code_version``)."""
    return stable_hash("validate", dataset.fingerprint, cfg, validation_code_version())


def validation_path(data_dir: str, key: str) -> Path:
    return Path(data_dir) / "validations" / f"{key}.json"


def read_summary(path: Path) -> dict[str, Any] | None:
    """The kept summary of a passed validation, or None when it is missing, unreadable or not passed."""
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("passed") else None


def validate_cached_dataset(dataset: DatasetRecord, cfg: PrepareConfig, data_dir: str) -> ValidationRecord:
    """Validate the dataset cache as the training input pipeline will see it (scaled float32,
    one-hot), once per dataset + settings + code: the summary is kept in
    <data_dir>/validations/<key>.json and reused while it and the dataset are there."""
    key = validation_key(dataset, cfg)
    out = validation_path(data_dir, key)
    if (summary := read_summary(out)) is not None:
        return ValidationRecord(dataset.fingerprint, summary)
    with file_lock(out.with_suffix(".lock"), f"validation of dataset {dataset.fingerprint}"):
        if (summary := read_summary(out)) is not None:  # another run did it while we waited
            return ValidationRecord(dataset.fingerprint, summary)
        problems = cache_problems(dataset.path, verify_checksums=False)
        if problems:
            raise CifarError(f"dataset cache {dataset.path} is not usable: {'; '.join(problems)}. "
                             "Rerun `cifar data PIPELINE` to rebuild it.")
        ds = load_dataset(dataset.path, mmap=True)
        summary = validate_arrays(
            ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.classes,
            scale=scale_pixels,
            encode=functools.partial(one_hot, num_classes=len(ds.classes)),
            expected_shape=dataset.input_shape,
            expected_sizes={"train": dataset.train_size, "test": dataset.test_size},
            balance_tolerance=cfg.balance_tolerance,
            max_train_test_duplicates=cfg.max_train_test_duplicates,
            where=f"dataset {dataset.path}",
        )
        summary = {"key": key, "fingerprint": dataset.fingerprint, **summary}
        faults.reached("validate.before-record")
        atomic_write_json(out, summary)
    get_logger().info(
        "validated %s: %d checks passed in %.2f s; %d train/test duplicates; channel mean %s",
        dataset.fingerprint, len(summary["checks"]), summary["seconds"],
        summary["train_test_duplicates"], [round(v, 4) for v in summary["channel_mean"] or []])
    return ValidationRecord(dataset.fingerprint, summary)
