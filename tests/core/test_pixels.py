"""Pixels and labels as the model sees them (tasks/core/pixels.py): scaled to float32, optionally
standardised, labels one-hot; the same functions inside tf.data as on NumPy arrays."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.pixels import one_hot, scale_pixels


def _image(rotation: int) -> np.ndarray:
    """2x2x3 uint8, rotated so that images differ (tests/prepare/test_prepare.py's set)."""
    base = np.array([[255, 102, 255], [0, 102, 0], [255, 0, 0], [0, 0, 0]], dtype=np.uint8)
    return np.roll(base, rotation, axis=0).reshape(2, 2, 3)


def _train_split():
    """20 images (10 per class) and their labels."""
    return np.stack([_image(i % 4) for i in range(20)]), np.array([0, 1] * 10, dtype=np.uint8)


def test_scale_pixels_gives_exact_float32():
    x = np.array([[[[0, 51, 255]]]], dtype=np.uint8)
    out = scale_pixels(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert out.ravel().tolist() == [0.0, np.float32(0.2), 1.0]


def test_scale_pixels_standardises_with_a_mean_and_std_per_channel():
    x = np.array([[[[0, 51, 255]]]], dtype=np.uint8)
    std = scale_pixels(x, mean=[0.5, 0.2, 0.5], std=[0.5, 0.1, 0.25])
    assert std.dtype == np.float32
    np.testing.assert_allclose(std.ravel(), [-1.0, 0.0, 2.0], atol=1e-6)


def test_scale_pixels_needs_both_mean_and_std():
    x = np.array([[[[0, 51, 255]]]], dtype=np.uint8)
    with pytest.raises(ValueError, match="both mean and std"):
        scale_pixels(x, mean=[0.5, 0.5, 0.5])


def test_one_hot_is_float32():
    assert one_hot(np.array([1, 0, 2, 7], dtype=np.uint8), 3).dtype == np.float32


def test_one_hot_of_a_label_out_of_range_is_all_zero():
    out = one_hot(np.array([1, 0, 2, 7], dtype=np.uint8), 3)
    assert out.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_tf_path_matches_numpy_inside_tf_data():
    import tensorflow as tf

    x, y = _train_split()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(
        lambda a, b: (scale_pixels(a, [0.5, 0.2, 0.25], [0.5, 0.2, 0.433]), one_hot(b, 2)))
    xs, ys = zip(*[(a.numpy(), b.numpy()) for a, b in ds])
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    assert xs.dtype == np.float32 and ys.dtype == np.float32
    np.testing.assert_allclose(xs, scale_pixels(x, [0.5, 0.2, 0.25], [0.5, 0.2, 0.433]), rtol=1e-6)
    assert np.array_equal(ys, one_hot(y, 2))
    assert one_hot(tf.constant([5]), 2).numpy().tolist() == [[0.0, 0.0]]
