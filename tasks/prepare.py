"""Stage 2: scaling, one-hot encoding and the pandera data contract (issue: validation).

The cache holds the uint8 arrays once. ``scale_pixels`` and ``one_hot`` are pure and run on
NumPy arrays or inside ``tf.data`` (tf tensors), so no float copy of the whole set is ever made.
Validation proves the *prepared* data right before training spends a minute on it: it scales and
encodes chunk by chunk, reduces each chunk to a one-row-per-image (and one-row-per-label) summary
frame, and checks those frames with pandera ``DataFrameModel`` schemas (lazily: every failure at
once), plus dataset-level checks (sizes, classes present, balance, train/test duplicates).
"""

# No `from __future__ import annotations`: the pandera schemas below are built inside functions
# (pandas and pandera are imported only when validating) and pandera evaluates their annotations.
import functools
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks.core.settings import SETTINGS
from tasks.core.pixels import one_hot, scale_pixels
from tasks.core.datacache import DatasetRecord, cache_problems, load_dataset
from tasks.core.caching import VerifiedCache
from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_json, file_lock, read_json
from tasks.core.hashing import code_fingerprint, stable_hash
from tasks.core.logs import get_logger

CHUNK = 512  # images per chunk: 6 MB of float32 at 32x32x3; cache-sized chunks beat 4096 by 3-4x
FIRST = 5  # how many failing row indices a message shows


@dataclass(frozen=True)
class PrepareConfig:
    """``prepare:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    standardize: bool = False  # per-channel (x - mean) / std after scaling to [0, 1]
    balance_tolerance: float = 0.1  # max relative deviation of a class count from the mean
    # None: train/test duplicate images are counted and reported only; a number: more fail.
    max_train_test_duplicates: int | None = None

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not 0 <= self.balance_tolerance <= 1:
            out.append(("balance_tolerance", f"must be within [0, 1], got {self.balance_tolerance}"))
        if self.max_train_test_duplicates is not None and self.max_train_test_duplicates < 0:
            out.append(("max_train_test_duplicates",
                        f"must be >= 0 (or null to only report), got {self.max_train_test_duplicates}"))
        return out


class DataValidationError(CifarError):
    """The prepared data broke the contract. ``failures``: one dict per failed check."""

    def __init__(self, failures: list[dict[str, Any]], where: str = "dataset"):
        self.failures = failures
        lines = [f"{where}: {len(failures)} validation check(s) failed:"]
        for f in failures:
            line = f"  - {f['name']}: {f['detail']}"
            if f.get("hint"):
                line += f"\n      hint: {f['hint']}"
            lines.append(line)
        lines.append("Nothing was trained on this data. Fix the data (or the preparation code) and "
                     "rerun; `cifar data PIPELINE` shows the full validation summary.")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ValidationRecord:
    fingerprint: str  # the dataset's
    summary: dict[str, Any]


# --------------------------------------------------------------------------- scaling, encoding
# --------------------------------------------------------------------------- summary frames
def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def summarize_images(x, transform: Callable | None = None, chunk: int = CHUNK):
    """One row per image of ``transform(x)`` (the prepared pixels), built chunk by chunk.

    Returns ``(frame, channel_sums)``: frame columns min, max, mean, std (float64 statistics of
    the image's values, min/max over its finite values), finite, dtype, shape; channel_sums is
    ``(count, sum, sum of squares)`` per channel (float64), or None when x is not (N, H, W, C).
    """
    import pandas as pd

    n = len(x)
    cols = {k: np.empty(n, dtype=np.float64) for k in ("min", "max", "mean", "std")}
    finite = np.empty(n, dtype=bool)
    dtype = shape = None
    ch_sum = ch_sq = None
    for a, b in _chunks(n, chunk):
        c = np.asarray(x[a:b]) if transform is None else transform(x[a:b])
        dtype, shape = c.dtype.name, c.shape[1:]
        flat = c.reshape(len(c), -1)
        # Per image and channel sums of the values and their squares, in the data's float type
        # (an image's sum has ~1k terms), accumulated across images in float64. One strided
        # reduction per channel: no float64 copy, no BLAS (its threads thrash on small cores).
        f = c.astype(np.result_type(c.dtype, np.float32), copy=False)
        f = f if f.ndim == 4 else f.reshape(len(f), -1, 1, 1)
        sq = np.square(f)
        s1 = np.stack([f[..., k].sum(axis=(1, 2)) for k in range(f.shape[-1])], 1).astype(np.float64)
        s2 = np.stack([sq[..., k].sum(axis=(1, 2)) for k in range(f.shape[-1])], 1).astype(np.float64)
        del sq
        size = flat.shape[1]
        mean = s1.sum(axis=1) / size
        cols["mean"][a:b] = mean
        cols["std"][a:b] = np.sqrt(np.maximum(s2.sum(axis=1) / size - mean**2, 0.0))
        fin = np.isfinite(flat).all(axis=1)
        finite[a:b] = fin
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        for i in np.flatnonzero(~fin):  # rare: min/max over the finite values only
            good = flat[i][np.isfinite(flat[i])]
            lo[i], hi[i] = (good.min(), good.max()) if good.size else (np.nan, np.nan)
        cols["min"][a:b], cols["max"][a:b] = lo, hi
        if c.ndim == 4:
            ch_sum = s1.sum(axis=0) if ch_sum is None else ch_sum + s1.sum(axis=0)
            ch_sq = s2.sum(axis=0) if ch_sq is None else ch_sq + s2.sum(axis=0)
    frame = pd.DataFrame(cols)
    frame["finite"] = finite
    # The same string object in every row: 8 bytes a row.
    frame["dtype"] = np.full(n, dtype or str(np.asarray(x[:0]).dtype), dtype=object)
    frame["shape"] = np.full(n, _shape_str(shape if shape is not None else x.shape[1:]), dtype=object)
    channels = None
    if ch_sum is not None:
        count = n * int(np.prod(shape[:-1]))
        channels = (count, ch_sum, ch_sq)
    return frame, channels


def summarize_labels(y, transform: Callable | None = None, chunk: int = CHUNK * 4):
    """One row per label of ``transform(y)`` (the one-hot rows): width, ones (entries equal to
    1), other (entries neither 0 nor 1, NaN included), label (argmax, -1 unless exactly one 1)."""
    import pandas as pd

    n = len(y)
    cols = {k: np.empty(n, dtype=np.int64) for k in ("width", "ones", "other", "label")}
    for a, b in _chunks(n, chunk):
        c = np.asarray(y[a:b]) if transform is None else transform(y[a:b])
        if c.ndim == 1:
            c = c[:, None]
        c = c.reshape(len(c), -1)
        is1 = c == 1
        ones = is1.sum(axis=1)
        cols["width"][a:b] = c.shape[1]
        cols["ones"][a:b] = ones
        cols["other"][a:b] = ((c != 0) & ~is1).sum(axis=1)
        cols["label"][a:b] = np.where(ones == 1, is1.argmax(axis=1), -1)
    return pd.DataFrame(cols)


# --------------------------------------------------------------------------- pandera schemas
@functools.cache
def image_schema(expected_shape: tuple[int, ...], expected_dtype: str = "float32"):
    """The contract on the scaled pixels, one row per image."""
    import pandera.pandas as pa
    from pandera.typing.pandas import Series

    want_shape = _shape_str(expected_shape)  # not `shape`: that name is a column in the class body

    class ScaledImages(pa.DataFrameModel):
        min: Series[float] = pa.Field(nullable=True)
        max: Series[float] = pa.Field(nullable=True)
        mean: Series[float] = pa.Field(nullable=True)
        std: Series[float] = pa.Field(nullable=True)
        finite: Series[bool]
        dtype: Series[str]
        shape: Series[str]

        # NaN/inf are the `finite` check's to report; min/max are over an image's finite values.
        @pa.check("min", name="pixels >= 0")
        def min_ge_0(cls, s):
            return ~(s < 0)

        @pa.check("max", name="pixels <= 1")
        def max_le_1(cls, s):
            return ~(s > 1)

        @pa.check("finite", name="pixels finite")
        def all_finite(cls, s):
            return s

        @pa.dataframe_check(name="image not constant")
        def not_constant(cls, df):
            return ~(df["max"] <= df["min"])

        @pa.check("dtype", name=f"dtype is {expected_dtype}")
        def dtype_ok(cls, s):
            return s == expected_dtype

        @pa.check("shape", name=f"shape is {want_shape}")
        def shape_ok(cls, s):
            return s == want_shape

        class Config:
            strict = True

    return ScaledImages


@functools.cache
def label_schema(num_classes: int):
    """The contract on the one-hot labels, one row per label."""
    import pandera.pandas as pa
    from pandera.typing.pandas import Series

    class OneHotLabels(pa.DataFrameModel):
        width: Series[int]
        ones: Series[int]
        other: Series[int]
        label: Series[int]

        @pa.check("other", name="label values in {0, 1}")
        def binary(cls, s):
            return s == 0

        @pa.check("ones", name="exactly one 1 per label row")
        def exactly_one(cls, s):
            return s == 1

        @pa.check("width", name=f"label width is {num_classes} classes")
        def width_ok(cls, s):
            return s == num_classes

        class Config:
            strict = True

    return OneHotLabels


def _schema_failures(schema, frame) -> tuple[list[str], dict[str, np.ndarray]]:
    """Validate lazily; return (every check name, {failed check name: failing row indices})."""
    import pandera.pandas as pa

    spec = schema.to_schema()
    names = [c.name for col in spec.columns.values() for c in col.checks] + [c.name for c in spec.checks]
    try:
        schema.validate(frame, lazy=True)
        return names, {}
    except pa.errors.SchemaErrors as exc:
        fc = exc.failure_cases
    failed: dict[str, np.ndarray] = {}
    for check, group in fc.groupby("check", sort=False):
        failed[str(check)] = np.unique(group["index"].dropna().to_numpy(dtype=np.int64))
        if str(check) not in names:  # a column/dtype problem of the frame itself
            names.append(str(check))
    return names, failed


# --------------------------------------------------------------------------- hints
def _image_hint(check: str, frame, rows) -> str:
    bad = frame.loc[rows] if len(rows) else frame
    if check == "pixels <= 1":
        top = float(bad["max"].max())
        if top > 10:
            return (f"max is {top:g}: the pixels look unscaled (0..255); scale them with "
                    "tasks.core.pixels.scale_pixels (x / 255 as float32)")
        return (f"max is {top:g}: values above 1 after scaling: standardised data where [0, 1] "
                "pixels are expected, a source that is not 8-bit, or a wrong scale factor")
    if check == "pixels >= 0":
        return (f"min is {float(bad['min'].min()):g}: negative pixels: standardised data where "
                "[0, 1] pixels are expected, or a corrupt decode")
    if check == "pixels finite":
        return "NaN or inf pixels: a corrupt decode or a division by zero; rebuild the dataset cache"
    if check == "image not constant":
        return (f"every pixel of the image equals {float(bad['min'].iloc[0]):g}: a blank image "
                "or a failed decode")
    if check.startswith("dtype is"):
        got = str(bad["dtype"].iloc[0])
        if got == "float64":
            return ("float64 input: x / 255 on uint8 gives float64 (4x the memory of float32 "
                    "and not what the model uses); use tasks.core.pixels.scale_pixels")
        if got.startswith(("uint", "int")):
            return f"{got} input: the pixels were not scaled; use tasks.core.pixels.scale_pixels"
        return f"{got} input: expected float32 from tasks.core.pixels.scale_pixels"
    if check.startswith("shape is"):
        return (f"images are {bad['shape'].iloc[0]}: a different dataset, or a channels-first / "
                "flattened layout")
    return ""


def _label_hint(check: str, frame, rows, num_classes: int) -> str:
    bad = frame.loc[rows] if len(rows) else frame
    if check == "label values in {0, 1}":
        return "entries other than 0 and 1: labels look smoothed or are not one-hot; use one_hot()"
    if check == "exactly one 1 per label row":
        multi, zero = int((bad["ones"] > 1).sum()), int((bad["ones"] == 0).sum())
        parts = []
        if multi:
            parts.append(f"{multi} row(s) have two or more 1s: labels look multi-hot")
        if zero:
            parts.append(f"{zero} row(s) are all zero: a label outside 0..{num_classes - 1} "
                         "(one_hot gives zeros for those)")
        return "; ".join(parts)
    if check.startswith("label width"):
        return (f"labels have {int(bad['width'].iloc[0])} columns but the dataset has "
                f"{num_classes} classes: one_hot got the wrong num_classes, or the classes list "
                "does not match the labels")
    return ""


# --------------------------------------------------------------------------- hashing
def image_hashes(x, chunk: int = CHUNK) -> list[bytes]:
    """A 128-bit blake2b digest of each image's bytes (rows of the array, in order)."""
    out: list[bytes] = []
    for a, b in _chunks(len(x), chunk):
        buf = memoryview(np.ascontiguousarray(x[a:b])).cast("B")
        step = len(buf) // (b - a)
        out.extend(hashlib.blake2b(buf[i:i + step], digest_size=16).digest()
                   for i in range(0, len(buf), step))
    return out


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
    t0 = time.perf_counter()
    classes = tuple(classes)
    k = len(classes)
    if expected_shape is None:
        expected_shape = tuple(np.shape(x_train)[1:])
    ischema, lschema = image_schema(tuple(int(d) for d in expected_shape)), label_schema(k)

    checks: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []

    def record(name: str, passed: bool, detail: str, hint: str = "") -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})
        if not passed:
            failures.append({"name": name, "detail": detail, "hint": hint})

    splits = {"train": (x_train, y_train), "test": (x_test, y_test)}
    img_frames, lab_frames, channels = {}, {}, None
    for split, (x, y) in splits.items():
        img_frames[split], ch = summarize_images(x, scale, chunk)
        lab_frames[split] = summarize_labels(y, encode)
        if split == "train":
            channels = ch

    # Schema checks: one entry per check, both splits in its detail.
    for kind, schema, frames in (("images", ischema, img_frames), ("labels", lschema, lab_frames)):
        results = {s: _schema_failures(schema, f) for s, f in frames.items()}
        names = list(dict.fromkeys(n for r in results.values() for n in r[0]))
        for name in names:
            bad = {s: r[1][name] for s, r in results.items() if name in r[1]}
            if not bad:
                record(f"{kind}: {name}", True, _passed_detail(name, frames))
                continue
            parts, hints = [], []
            for s, rows in bad.items():
                first = ", ".join(map(str, rows[:FIRST])) + (", ..." if len(rows) > FIRST else "")
                parts.append(f"{s}: {len(rows):,} of {len(frames[s]):,} rows failed (first: {first})")
                hint = (_image_hint(name, frames[s], rows) if kind == "images"
                        else _label_hint(name, frames[s], rows, k))
                if hint and hint not in hints:
                    hints.append(hint)
            record(f"{kind}: {name}", False, "; ".join(parts), "; ".join(hints))

    # Dataset-level checks.
    sizes = {s: len(x) for s, (x, _) in splits.items()}
    detail = [f"{s}: {len(x):,} images, {len(y):,} labels" for s, (x, y) in splits.items()]
    lengths_ok = all(len(x) == len(y) for x, y in splits.values())
    record("images and labels have equal lengths", lengths_ok, "; ".join(detail),
           "" if lengths_ok else "the arrays are out of step: rebuild the dataset cache")
    if expected_sizes is not None:
        ok = all(sizes[s] == expected_sizes.get(s) for s in sizes)
        record("split sizes match the manifest", ok,
               ", ".join(f"{s}: {sizes[s]:,} (manifest {expected_sizes.get(s)})" for s in sizes),
               "" if ok else "the cache was altered after it was written: rebuild it")

    counts = {}
    for s, f in lab_frames.items():
        n = np.bincount(f["label"][f["label"] >= 0].to_numpy(), minlength=k)[:k]
        counts[s] = {c: int(v) for c, v in zip(classes, n)}
    missing = {s: [c for c in classes if counts[s][c] == 0] for s in counts}
    ok = not any(missing.values())
    record("every class present in both splits", ok,
           "; ".join(f"{s} has no {', '.join(repr(c) for c in m)}" for s, m in missing.items() if m)
           or f"all {k} classes in train and test",
           "" if ok else "a filtered or truncated dataset: check limit_train/limit_test and the source")

    worst = []
    for s, cnt in counts.items():
        present = np.array([v for v in cnt.values() if v > 0], dtype=np.float64)
        if present.size == 0:
            continue
        mean = present.mean()
        for c, v in cnt.items():
            if v and abs(v - mean) / mean > balance_tolerance:
                worst.append(f"{s} {c!r}: {v} vs mean {mean:g} ({(v - mean) / mean:+.1%})")
    record(f"class balance within {balance_tolerance:.0%} of the mean", not worst,
           "; ".join(worst[:FIRST]) + (f" (+{len(worst) - FIRST} more)" if len(worst) > FIRST else "")
           if worst else "every class count within tolerance",
           "" if not worst else "an unbalanced subset: check the source, or raise prepare.balance_tolerance")

    train_hashes = set(image_hashes(x_train, chunk))
    dup_idx = [i for i, h in enumerate(image_hashes(x_test, chunk)) if h in train_hashes]
    dups = len(dup_idx)
    first = f" (first test indices: {', '.join(map(str, dup_idx[:FIRST]))})" if dups else ""
    limit = max_train_test_duplicates
    record("train/test duplicate images" + (f" <= {limit}" if limit is not None else " (reported)"),
           limit is None or dups <= limit, f"{dups} test image(s) also in train{first}",
           "test accuracy is inflated by images the model trained on: deduplicate the source")

    channel_mean = channel_std = None
    if channels is not None:
        count, s1, s2 = channels
        m = s1 / count
        channel_mean = [float(v) for v in m]
        channel_std = [float(v) for v in np.sqrt(np.maximum(s2 / count - m**2, 0.0))]
        ok = not any(v == 0 for v in channel_std)  # NaN/inf is the `pixels finite` check's
        record("every channel varies (std > 0)", ok,
               "train channel std " + ", ".join(f"{v:.4f}" for v in channel_std),
               "" if ok else "a constant channel cannot be standardised: a grey-scale or broken source")

    if failures:
        raise DataValidationError(failures, where)
    return {
        "passed": True,
        "checks": checks,
        "counts": counts,
        "sizes": sizes,
        "classes": list(classes),
        "shape": list(expected_shape),
        "channel_mean": channel_mean,
        "channel_std": channel_std,
        "train_test_duplicates": dups,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _passed_detail(name: str, frames) -> str:
    def both(fn) -> str:
        return ", ".join(f"{s} {fn(f)}" for s, f in frames.items())

    if name == "pixels >= 0":
        return "min " + both(lambda f: f"{f['min'].min():.4g}")
    if name == "pixels <= 1":
        return "max " + both(lambda f: f"{f['max'].max():.4g}")
    if name == "pixels finite" or name == "exactly one 1 per label row":
        return both(lambda f: f"{len(f):,} rows")
    if name == "image not constant":
        return "smallest image std " + both(lambda f: f"{f['std'].min():.4g}")
    if name.startswith(("dtype", "shape", "label width", "label values")):
        return "all rows"
    return ""


# --------------------------------------------------------------------------- the stage
def validation_key(dataset: DatasetRecord, cfg: PrepareConfig) -> str:
    return stable_hash("validate", dataset.fingerprint, cfg, code_fingerprint(sys.modules[__name__]))


def validation_path(data_dir: str, key: str) -> Path:
    return Path(data_dir) / "validations" / f"{key}.json"


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("passed") else None


def validate_cached_dataset(dataset: DatasetRecord, cfg: PrepareConfig, data_dir: str) -> ValidationRecord:
    """Validate the dataset cache as the training input pipeline will see it (scaled float32,
    one-hot), once per dataset + settings + code: the summary is kept in
    <data_dir>/validations/<key>.json and reused while it and the dataset are there."""
    log = get_logger()
    key = validation_key(dataset, cfg)
    out = validation_path(data_dir, key)
    if (summary := _read_summary(out)) is not None:
        return ValidationRecord(dataset.fingerprint, summary)
    with file_lock(out.with_suffix(".lock"), f"validation of dataset {dataset.fingerprint}"):
        if (summary := _read_summary(out)) is not None:  # another run did it while we waited
            return ValidationRecord(dataset.fingerprint, summary)
        problems = cache_problems(dataset.path, verify_checksums=False)
        if problems:
            raise CifarError(f"dataset cache {dataset.path} is not usable: {'; '.join(problems)}. "
                             "Rerun `cifar data PIPELINE` to rebuild it.")
        ds = load_dataset(dataset.path, mmap=True)
        k = len(ds.classes)
        summary = validate_arrays(
            ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.classes,
            scale=scale_pixels,
            encode=functools.partial(one_hot, num_classes=k),
            expected_shape=dataset.input_shape,
            expected_sizes={"train": dataset.train_size, "test": dataset.test_size},
            balance_tolerance=cfg.balance_tolerance,
            max_train_test_duplicates=cfg.max_train_test_duplicates,
            where=f"dataset {dataset.path}",
        )
        summary = {"key": key, "fingerprint": dataset.fingerprint, **summary}
        atomic_write_json(out, summary)
    log.info("validated %s: %d checks passed in %.2f s; %d train/test duplicates; channel mean %s",
             dataset.fingerprint, len(summary["checks"]), summary["seconds"],
             summary["train_test_duplicates"], [round(v, 4) for v in summary["channel_mean"] or []])
    return ValidationRecord(dataset.fingerprint, summary)


def _key(inputs: dict[str, Any]) -> str:
    return validation_key(inputs["dataset"], inputs["cfg"])


def _valid(inputs: dict[str, Any], key: str) -> bool:
    dataset = inputs["dataset"]
    return (_read_summary(validation_path(inputs["data_dir"], key)) is not None
            and (Path(dataset.path) / "manifest.json").is_file())


@task(
    name="validate-dataset",
    retries=0,  # a broken contract is never transient: retrying hits the same wall
    cache_policy=VerifiedCache(key_fn=_key, valid_fn=_valid),
    persist_result=True,
)
def validate_dataset(dataset: DatasetRecord, cfg: PrepareConfig, data_dir: str) -> ValidationRecord:
    """Scale, one-hot and validate the cached dataset (pandera); cached by dataset + settings + code."""
    return validate_cached_dataset(dataset, cfg, data_dir)
