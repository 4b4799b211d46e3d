"""What a failed check probably means and how to fix it, in words for the person reading the
error. Hints go only into the DataValidationError's message, never into the validation summary,
so rewording one changes no cache key."""

# The dataset-level checks' hints.
LENGTHS_OUT_OF_STEP = "the arrays are out of step: rebuild the dataset cache"
SIZES_CHANGED = "the cache was altered after it was written: rebuild it"
CLASS_MISSING = ("a class with no images in a split cannot be learned or scored: add its images to "
                 "that split (image-folder: <split>/<class>/), or check the source and "
                 "limit_train/limit_test (a limit below the number of classes leaves some out)")
TOO_FEW_CLASSES = ("one class makes every prediction right (a 100% test accuracy that means "
                   "nothing): add class folders, or check that the source is the whole dataset")
UNBALANCED = "an unbalanced subset: check the source, or raise prepare.balance_tolerance"
TRAIN_TEST_DUPLICATES = "test accuracy is inflated by images the model trained on: deduplicate the source"
CONSTANT_CHANNEL = "a constant channel cannot be standardised: a grey-scale or broken source"


def image_hint(check: str, frame, rows) -> str:
    """The hint for a failed image-contract check, from the failing rows of the image frame."""
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
        return _dtype_hint(str(bad["dtype"].iloc[0]))
    if check.startswith("shape is"):
        return (f"images are {bad['shape'].iloc[0]}: a different dataset, or a channels-first / "
                "flattened layout")
    return ""


def _dtype_hint(got: str) -> str:
    if got == "float64":
        return ("float64 input: x / 255 on uint8 gives float64 (4x the memory of float32 "
                "and not what the model uses); use tasks.core.pixels.scale_pixels")
    if got.startswith(("uint", "int")):
        return f"{got} input: the pixels were not scaled; use tasks.core.pixels.scale_pixels"
    return f"{got} input: expected float32 from tasks.core.pixels.scale_pixels"


def label_hint(check: str, frame, rows, num_classes: int) -> str:
    """The hint for a failed label-contract check, from the failing rows of the label frame."""
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
