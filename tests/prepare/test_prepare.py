"""Stage 2: the pandera data contract (scaling and one-hot: tests/core/test_pixels.py).

A tiny hand-made dataset (2 classes, 2x2x3 images) whose summary is computable by hand; each
broken variant must fail with its own check and hint, and nothing else. Engine tests run the
cached @task for real on a dataset cache written by tasks.core.datacache.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.core.datacache import write_dataset_cache
from tasks.core.pixels import one_hot, scale_pixels
from tasks.prepare.config import PrepareConfig
from tasks.prepare.errors import DataValidationError
from tasks.prepare.validation import validate_arrays, validation_path

CLASSES = ("cat", "dog")
ROOT = Path(__file__).resolve().parents[2]


def _image(rotation: int) -> np.ndarray:
    """2x2x3 uint8. Over its 4 pixels: channel 0 is 255,0,255,0; channel 1 is 102,102,0,0;
    channel 2 is 255,0,0,0 -- rotated, so images differ but every image (and the train set) has
    scaled channel means 0.5, 0.2, 0.25 and stds 0.5, 0.2, sqrt(0.25 * 0.75)."""
    base = np.array([[255, 102, 255], [0, 102, 0], [255, 0, 0], [0, 0, 0]], dtype=np.uint8)
    return np.roll(base, rotation, axis=0).reshape(2, 2, 3)


def tiny():
    """20 train images (10 per class), 4 test images (2 per class); test[0] == train[2]."""
    x_train = np.stack([_image(i % 4) for i in range(20)])
    y_train = np.array([0, 1] * 10, dtype=np.uint8)
    x_test = np.stack([x_train[2], 255 - x_train[0], 255 - x_train[1], 255 - x_train[3]])
    y_test = np.array([0, 1, 0, 1], dtype=np.uint8)
    return x_train, y_train, x_test, y_test


def prepared():
    """The tiny set as the training input pipeline sees it: float32 pixels, one-hot labels."""
    x_train, y_train, x_test, y_test = tiny()
    return scale_pixels(x_train), one_hot(y_train, 2), scale_pixels(x_test), one_hot(y_test, 2)


def failure(x_train, y_train, x_test, y_test, **kw) -> str:
    with pytest.raises(DataValidationError) as e:
        validate_arrays(x_train, y_train, x_test, y_test, CLASSES, **kw)
    return str(e.value)


# --------------------------------------------------------------------------- the stage's imports
@pytest.mark.subprocess
def test_importing_the_stage_loads_neither_tensorflow_nor_pandera():
    code = ("import sys, tasks.prepare; heavy = [m for m in ('tensorflow', 'keras', 'pandera', "
            "'pandas') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- the contract
def test_good_tiny_set_passes_with_exact_summary():
    x_train, y_train, x_test, y_test = tiny()
    s = validate_arrays(x_train, y_train, x_test, y_test, CLASSES, scale=scale_pixels,
                        encode=lambda y: one_hot(y, 2), expected_sizes={"train": 20, "test": 4})
    assert s["passed"] is True
    assert all(c["passed"] for c in s["checks"]), s["checks"]
    assert len(s["checks"]) == 15
    assert s["counts"] == {"train": {"cat": 10, "dog": 10}, "test": {"cat": 2, "dog": 2}}
    assert s["sizes"] == {"train": 20, "test": 4}
    assert s["shape"] == [2, 2, 3] and s["classes"] == ["cat", "dog"]
    assert s["channel_mean"] == pytest.approx([0.5, 0.2, 0.25], rel=1e-6)
    assert s["channel_std"] == pytest.approx([0.5, 0.2, (0.25 * 0.75) ** 0.5], rel=1e-6)
    assert s["train_test_duplicates"] == 1
    dup = next(c for c in s["checks"] if c["name"].startswith("train/test duplicate"))
    assert dup["detail"] == "1 test image(s) also in train (first test indices: 0)"
    # The prepared arrays given directly (no scale/encode, no manifest sizes): the same summary.
    s2 = validate_arrays(*prepared(), CLASSES)
    assert s2["checks"] == [c for c in s["checks"] if c["name"] != "split sizes match the manifest"]
    drop = ("checks", "seconds")
    assert {k: v for k, v in s2.items() if k not in drop} == {k: v for k, v in s.items() if k not in drop}


def test_nan_pixel():
    x_train, y_train, x_test, y_test = prepared()
    x_train[1, 0, 1, 2] = np.nan
    msg = failure(x_train, y_train, x_test, y_test)
    assert "1 validation check(s) failed" in msg
    assert "images: pixels finite: train: 1 of 20 rows failed (first: 1)" in msg
    assert "NaN or inf pixels" in msg


def test_value_above_one():
    x_train, y_train, x_test, y_test = prepared()
    x_test[3, 1, 1, 0] = 1.5
    msg = failure(x_train, y_train, x_test, y_test)
    assert "1 validation check(s) failed" in msg
    assert "images: pixels <= 1: test: 1 of 4 rows failed (first: 3)" in msg
    assert "max is 1.5: values above 1 after scaling" in msg and "unscaled" not in msg


def test_unscaled_uint8():
    x_train, y_train, x_test, y_test = tiny()
    msg = failure(x_train, one_hot(y_train, 2), x_test, one_hot(y_test, 2))
    assert "2 validation check(s) failed" in msg
    assert "images: pixels <= 1: train: 20 of 20 rows failed (first: 0, 1, 2, 3, 4, ...)" in msg
    assert "max is 255: the pixels look unscaled" in msg
    assert "images: dtype is float32" in msg and "uint8 input: the pixels were not scaled" in msg


def test_float64_input():
    x_train, y_train, x_test, y_test = tiny()
    msg = failure(x_train / 255, one_hot(y_train, 2), x_test / 255, one_hot(y_test, 2))
    assert "1 validation check(s) failed" in msg
    assert "images: dtype is float32: train: 20 of 20 rows failed" in msg
    assert "test: 4 of 4 rows failed" in msg
    assert "float64 input: x / 255 on uint8 gives float64" in msg


def test_label_row_with_two_ones():
    x_train, y_train, x_test, y_test = prepared()
    y_train[4] = [1, 1]
    msg = failure(x_train, y_train, x_test, y_test)
    assert "1 validation check(s) failed" in msg
    assert "labels: exactly one 1 per label row: train: 1 of 20 rows failed (first: 4)" in msg
    assert "1 row(s) have two or more 1s: labels look multi-hot" in msg


def test_all_zero_label_row():
    x_train, y_train, x_test, y_test = tiny()
    y_test = y_test.copy()
    y_test[2] = 9  # outside the 2 classes: one_hot gives an all-zero row
    msg = failure(scale_pixels(x_train), one_hot(y_train, 2), scale_pixels(x_test), one_hot(y_test, 2),
                  balance_tolerance=1.0)
    assert "1 validation check(s) failed" in msg
    assert "labels: exactly one 1 per label row: test: 1 of 4 rows failed (first: 2)" in msg
    assert "1 row(s) are all zero: a label outside 0..1" in msg


def test_soft_labels_are_not_one_hot():
    x_train, y_train, x_test, y_test = prepared()
    y_train[0] = [0.9, 0.1]
    msg = failure(x_train, y_train, x_test, y_test)
    assert "labels: label values in {0, 1}: train: 1 of 20 rows failed (first: 0)" in msg
    assert "labels look smoothed or are not one-hot" in msg


def test_wrong_number_of_classes():
    x_train, y_train, x_test, y_test = tiny()
    msg = failure(scale_pixels(x_train), one_hot(y_train, 3), scale_pixels(x_test), one_hot(y_test, 3))
    assert "1 validation check(s) failed" in msg
    assert "labels: label width is 2 classes: train: 20 of 20 rows failed" in msg
    assert "labels have 3 columns but the dataset has 2 classes" in msg


def test_mismatched_lengths():
    x_train, y_train, x_test, y_test = prepared()
    msg = failure(x_train, y_train[:-1], x_test, y_test)
    assert "1 validation check(s) failed" in msg
    assert "images and labels have equal lengths: train: 20 images, 19 labels" in msg


def test_class_missing_from_test():
    x_train, y_train, x_test, _ = prepared()
    msg = failure(x_train, y_train, x_test, one_hot(np.zeros(4, np.uint8), 2))
    assert "1 validation check(s) failed" in msg
    assert "every class present in both splits: test has no 'dog'" in msg


def test_unbalanced_classes_and_sizes_and_duplicates_limits():
    x_train, y_train, x_test, y_test = prepared()
    y_train[:6] = [1, 0]  # cat 13, dog 7: +-30% of the mean 10
    msg = failure(x_train, y_train, x_test, y_test, balance_tolerance=0.25,
                  expected_sizes={"train": 20, "test": 5}, max_train_test_duplicates=0)
    assert "3 validation check(s) failed" in msg
    assert "class balance within 25% of the mean: train 'cat': 13 vs mean 10 (+30.0%); " \
           "train 'dog': 7 vs mean 10 (-30.0%)" in msg
    assert "split sizes match the manifest: train: 20 (manifest 20), test: 4 (manifest 5)" in msg
    assert "train/test duplicate images <= 0: 1 test image(s) also in train" in msg


def test_every_failure_reported_at_once():
    x_train, y_train, x_test, y_test = prepared()
    x_train[0, 0, 0, 0] = np.nan
    y_train[1] = [1, 1]
    msg = failure(x_train, y_train, x_test, one_hot(np.zeros(4, np.uint8), 2))
    assert "3 validation check(s) failed" in msg
    for check in ("pixels finite", "exactly one 1 per label row", "test has no 'dog'"):
        assert check in msg


# --------------------------------------------------------------------------- the cached task
def _cache(data_dir: Path, name: str, y_test=None):
    x_train, y_train, x_test, y_test0 = tiny()
    return write_dataset_cache(
        data_dir / "datasets" / name, x_train, y_train, x_test,
        y_test0 if y_test is None else y_test, CLASSES, {"source": "tests", "format": "tiny"})


def _local(task, data_dir: Path):
    """Bind results and cache records to <data_dir>/prefect/, as flows/cifar.py does."""
    from tasks.core.caching import bind_local

    return bind_local(task, data_dir)


@pytest.mark.engine
@pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs")
def test_task_is_cached_and_rechecks_its_file(prefect_engine, tmp_path):
    ds = _cache(tmp_path, f"tiny-{tmp_path.name}")
    from tasks.prepare.tasks import validate_dataset  # Prefect: imported by the engine tests only

    task, cfg = _local(validate_dataset, tmp_path), PrepareConfig()
    first = task(ds, cfg, str(tmp_path), return_state=True)
    assert first.is_completed() and first.name == "Completed"
    rec = first.result()
    assert rec.fingerprint == ds.fingerprint
    assert rec.summary["counts"]["test"] == {"cat": 2, "dog": 2}
    path = validation_path(str(tmp_path), rec.summary["key"])
    assert path.is_file()

    second = task(ds, cfg, str(tmp_path), return_state=True)
    assert second.name == "Cached"
    assert second.result().summary == rec.summary

    path.unlink()  # the record says it ran; the file is gone: run again and rewrite it
    third = task(ds, cfg, str(tmp_path), return_state=True)
    assert third.name == "Completed" and path.is_file()


@pytest.mark.engine
@pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs")
def test_doctored_cache_fails_once_and_is_not_retried(prefect_engine, tmp_path):
    from prefect.client.orchestration import get_client

    from tasks.prepare.tasks import validate_dataset

    ds = _cache(tmp_path, f"doctored-{tmp_path.name}", y_test=np.zeros(4, np.uint8))
    state = _local(validate_dataset, tmp_path)(ds, PrepareConfig(), str(tmp_path), return_state=True)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, DataValidationError)
    assert f"dataset {ds.path}" in str(err) and "test has no 'dog'" in str(err)
    with get_client(sync_client=True) as client:
        run = client.read_task_run(state.state_details.task_run_id)
    assert run.run_count == 1
    assert not (tmp_path / "validations").exists() or not list((tmp_path / "validations").glob("*.json"))


def test_blank_image_and_standardised_pixels():
    x_train, y_train, x_test, y_test = prepared()
    x_train[5] = 0.5  # a blank (constant) image
    msg = failure(x_train, y_train, scale_pixels(tiny()[2], [0.5] * 3, [0.25] * 3), y_test)
    assert "3 validation check(s) failed" in msg
    assert "images: image not constant: train: 1 of 20 rows failed (first: 5)" in msg
    assert "every pixel of the image equals 0.5: a blank image" in msg
    assert "images: pixels >= 0: test: 4 of 4 rows failed" in msg
    assert "min is -2: negative pixels: standardised data" in msg
    assert "images: pixels <= 1: test: 4 of 4 rows failed" in msg
    assert "max is 2: values above 1 after scaling: standardised data" in msg
