"""Augmentation keeps shape and range, and is deterministic under a seed."""

import numpy as np

from hematovision.imaging import augment as aug


def _img():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)


def test_shape_dtype_and_range():
    out = aug.augment(_img(), np.random.default_rng(1))
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8


def test_deterministic_under_seed():
    a = aug.augment(_img(), np.random.default_rng(7))
    b = aug.augment(_img(), np.random.default_rng(7))
    c = aug.augment(_img(), np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_no_augmentation_is_identity_for_geometry_and_colour():
    img = _img()
    cfg = aug.AugmentConfig.none()
    assert np.array_equal(aug.geometric(img, np.random.default_rng(0), cfg), img)
    assert np.array_equal(aug.colour_jitter(img, np.random.default_rng(0), cfg), img)


def test_stain_jitter_zero_is_identity_and_nonzero_changes_colour():
    img = _img()
    assert np.array_equal(aug.stain_jitter(img, np.random.default_rng(0), 0, 0), img)
    out = aug.stain_jitter(img, np.random.default_rng(0), 0.2, 0.05)
    assert out.shape == img.shape and np.abs(out.astype(int) - img).mean() > 1
