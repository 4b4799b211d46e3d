"""The data contract as pandera ``DataFrameModel`` schemas over the summary frames: what scaled
pixels and one-hot labels must look like, every failing row found at once (``lazy=True``), and
the detail a passed check records in the validation summary."""

# No `from __future__ import annotations`: the schemas are built inside functions (pandas and
# pandera are imported only when validating) and pandera evaluates their annotations.
import functools

import numpy as np

from tasks.prepare.summaries import shape_text


@functools.cache
def image_schema(expected_shape: tuple[int, ...], expected_dtype: str = "float32"):
    """The contract on the scaled pixels, one row per image."""
    import pandera.pandas as pa
    from pandera.typing.pandas import Series

    want_shape = shape_text(expected_shape)  # not `shape`: that name is a column in the class body

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


def schema_failures(schema, frame) -> tuple[list[str], dict[str, np.ndarray]]:
    """Validate lazily; return (every check name, {failed check name: failing row indices})."""
    import pandera.pandas as pa

    spec = schema.to_schema()
    names = [c.name for col in spec.columns.values() for c in col.checks] + [c.name for c in spec.checks]
    try:
        schema.validate(frame, lazy=True)
        return names, {}
    except pa.errors.SchemaErrors as exc:
        failure_cases = exc.failure_cases
    failed: dict[str, np.ndarray] = {}
    for check, group in failure_cases.groupby("check", sort=False):
        failed[str(check)] = np.unique(group["index"].dropna().to_numpy(dtype=np.int64))
        if str(check) not in names:  # a column/dtype problem of the frame itself
            names.append(str(check))
    return names, failed


def passed_detail(check: str, frames) -> str:
    """What a passed schema check records in the summary, over every split's frame."""
    def per_split(stat) -> str:
        return ", ".join(f"{split} {stat(frame)}" for split, frame in frames.items())

    if check == "pixels >= 0":
        return "min " + per_split(lambda f: f"{f['min'].min():.4g}")
    if check == "pixels <= 1":
        return "max " + per_split(lambda f: f"{f['max'].max():.4g}")
    if check == "pixels finite" or check == "exactly one 1 per label row":
        return per_split(lambda f: f"{len(f):,} rows")
    if check == "image not constant":
        return "smallest image std " + per_split(lambda f: f"{f['std'].min():.4g}")
    if check.startswith(("dtype", "shape", "label width", "label values")):
        return "all rows"
    return ""
