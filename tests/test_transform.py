"""The kernel stage's image preparation: area resize, padding, standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from mnk.kernels.transform import resize_area, transform_images


def test_transform_pads_then_standardises_on_reference():
    rng = np.random.default_rng(0)
    x = rng.random((4, 28, 28)).astype(np.float32)
    ref = x[:2]
    out = transform_images(x, pad=2, standardize=True, reference=ref)
    assert out.shape == (4, 32, 32)
    padded_ref = np.pad(ref, [(0, 0), (2, 2), (2, 2)])
    np.testing.assert_allclose(out[:2].mean(), 0, atol=1e-5)
    np.testing.assert_allclose((out[:2] * padded_ref.std() + padded_ref.mean())[:, 2:-2, 2:-2], ref, atol=1e-5)
    with pytest.raises(ValueError, match="zero variance"):
        transform_images(np.zeros((2, 5, 5)), standardize=True)


def test_area_resize_is_block_averaging_and_keeps_the_mean():
    rng = np.random.default_rng(1)
    x = rng.random((3, 28, 28)).astype(np.float32)
    halved = resize_area(x, 14)
    np.testing.assert_allclose(halved, x.reshape(3, 14, 2, 14, 2).mean(axis=(2, 4)), rtol=1e-6)
    odd = resize_area(x, 10)  # 2.8 input pixels per output pixel
    assert odd.shape == (3, 10, 10)
    np.testing.assert_allclose(odd.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)
    # A stroke-free border stays exactly zero; one bright pixel spreads by its overlaps.
    spot = np.zeros((1, 28, 28), np.float32)
    spot[0, 0, 1] = 1.0  # input pixel [1, 2) lies inside output pixel 0 ([0, 2.8))
    out = resize_area(spot, 10)
    assert out[0, 0, 0] == pytest.approx(1 / 2.8**2, rel=1e-6) and np.count_nonzero(out) == 1
    np.testing.assert_array_equal(resize_area(x, 28), x)


def test_resize_then_pad_then_standardise():
    rng = np.random.default_rng(2)
    x = rng.random((2, 28, 28)).astype(np.float32)
    out = transform_images(x, image_size=14, pad=1, standardize=True, reference=x)
    assert out.shape == (2, 16, 16)
    np.testing.assert_allclose(out.mean(), 0, atol=1e-5) and np.testing.assert_allclose(out.std(), 1, rtol=1e-4)
