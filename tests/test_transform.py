"""The kernel stage's image preparation: its filters (against a written-out Lanczos and PIL),
padding, standardisation, the source images."""

from __future__ import annotations

import numpy as np
import pytest

from mnk.kernels.transform import resize, resize_area, source_images, transform_images


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


# ------------------------------------------------------------- the kernel's own filters


def _stroke_image(size: int = 105) -> np.ndarray:
    """A known image: a thick line and a ring drawn by PIL, strokes 1 on a zero background."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    draw.line([(10, 20), (90, 80)], fill=255, width=6)
    draw.ellipse([30, 10, 70, 50], outline=255, width=4)
    return np.asarray(image, dtype=np.float32) / 255.0


def _lanczos_weights(n_in: int, n_out: int) -> np.ndarray:
    """Antialiased Lanczos-3 as a matrix, written out: output pixel o samples
    sinc(d) sinc(d / 3), d = (input centre - output centre) / s, s = n_in / n_out, over
    |d| < 3, normalised to sum 1 (the window is 3 s input pixels per side when shrinking)."""
    s = n_in / n_out
    centres_out = (np.arange(n_out) + 0.5) * s
    d = (np.arange(n_in)[None, :] + 0.5 - centres_out[:, None]) / s
    w = np.where(np.abs(d) < 3, np.sinc(d) * np.sinc(d / 3), 0.0)
    return w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("size", [28, 14])
def test_lanczos_resize_is_the_written_out_filter_on_a_known_image(size):
    x = _stroke_image()
    w = _lanczos_weights(105, size)
    np.testing.assert_allclose(resize(x[None], size, "lanczos")[0], w @ x @ w.T, atol=2e-5)


@pytest.mark.parametrize("name", ["lanczos", "bicubic", "bilinear", "hamming", "box", "nearest"])
def test_each_named_filter_is_pils_on_float_images(name):
    from PIL import Image

    x = _stroke_image()
    batch = np.stack([x, x[::-1], x.T]).reshape(3, 1, 105, 105)  # (N, C, H, W) keeps its leading axes
    out = resize(batch, 14, name)
    assert out.shape == (3, 1, 14, 14) and out.dtype == np.float32
    method = getattr(Image.Resampling, name.upper())
    for got, image in zip(out[:, 0], batch[:, 0]):
        np.testing.assert_array_equal(got, np.asarray(Image.fromarray(image, mode="F").resize((14, 14), method)))
    # PIL's box takes whole pixels (by centre); area weighs partial pixels: not the same filter at 7.5 : 1
    assert np.abs(resize(x, 14, "box") - resize(x, 14, "area")).max() > 0.01
    with pytest.raises(ValueError, match="kernel.resample must be one of"):
        resize(x, 14, "cubic")


def test_source_images_are_the_originals_in_unit_range_or_the_preprocessed_ones():
    originals = (_stroke_image()[None] * 255).round().astype(np.uint8)
    pool = {"originals": originals, "images": np.zeros((1, 28, 28), np.float32)}
    np.testing.assert_array_equal(source_images(pool, "original"), originals / np.float32(255))
    assert source_images(pool, "preprocessed").shape == (1, 28, 28)
    with pytest.raises(ValueError, match="resolved"):
        source_images(pool, "auto")
    out = transform_images(source_images(pool, "original"), image_size=14, resample="lanczos", pad=1)
    np.testing.assert_allclose(out[0, 1:-1, 1:-1], resize(originals[0] / np.float32(255), 14, "lanczos"), atol=1e-6)
