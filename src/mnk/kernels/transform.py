"""The kernel stage's own image preparation: resize, zero-pad, standardise.

Kept beside the kernels (not with the downloader) so that editing the download code does
not rerun kernel blocks, and so the kernel can use its own `kernel.image_size`.
"""

from __future__ import annotations

import numpy as np


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): output pixel o averages input [o s, (o + 1) s), s = n_in / n_out,
    each input pixel weighted by its overlap (PIL's BOX filter; exact area averaging)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize_area(images: np.ndarray, size: int) -> np.ndarray:
    """Square images (..., H, W) -> (..., size, size) by area averaging (antialiased when
    shrinking, keeps a zero background zero and the mean intensity)."""
    images = np.asarray(images, dtype=np.float32)
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    rows, cols = _area_weights(h, size), _area_weights(w, size)
    return np.einsum("oh,...hw,pw->...op", rows, images.astype(np.float64), cols).astype(np.float32)


def transform_images(images: np.ndarray, *, image_size: int | None = None, pad: int = 0,
                     standardize: bool = False, reference: np.ndarray | None = None) -> np.ndarray:
    """Resize to `image_size` (area averaging; None keeps the size), zero-pad by `pad` pixels
    per side, then optionally standardise.

    Standardisation uses one scalar mean and std of `reference` after the same resize and
    padding (training images only, so nothing about validation or test characters leaks
    into the inputs); without a reference, of `images` themselves.
    """
    out = np.asarray(images, dtype=np.float32)
    if image_size is not None:
        out = resize_area(out, image_size)
    if pad:
        out = np.pad(out, [(0, 0)] * (out.ndim - 2) + [(pad, pad), (pad, pad)])
    if standardize:
        ref = out if reference is None else transform_images(reference, image_size=image_size, pad=pad)
        mean, std = float(ref.mean()), float(ref.std())
        if not std > 0:
            raise ValueError("cannot standardise: the reference images have zero variance")
        out = (out - mean) / std
    return out
