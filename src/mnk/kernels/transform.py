"""The kernel stage's own image preparation: resize, zero-pad, standardise.

Kept beside the kernels (not with the downloader) so that editing the download code does
not rerun kernel blocks, and so the kernel can use its own `kernel.image_size` and filter
(`kernel.resample`), from the original images when the dataset keeps them.
"""

from __future__ import annotations

import numpy as np

from mnk.kernels.options import RESAMPLE_FILTERS


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): output pixel o averages input [o s, (o + 1) s), s = n_in / n_out,
    each input pixel weighted by its overlap (exact area averaging; PIL's BOX filter instead
    takes the pixels whose centres fall in the window, with equal weights)."""
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


def resize(images: np.ndarray, size: int, resample: str = "area") -> np.ndarray:
    """Images (..., H, W) -> (..., size, size) with the named filter: "area" (resize_area) or
    one of PIL's, applied to each image as 32-bit float (mode "F": no rounding, no clipping)."""
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"kernel.resample must be one of {RESAMPLE_FILTERS}, got {resample!r}")
    images = np.asarray(images, dtype=np.float32)
    if resample == "area" or images.shape[-2:] == (size, size):
        return resize_area(images, size)
    from PIL import Image

    method = getattr(Image.Resampling, resample.upper())
    flat = images.reshape(-1, *images.shape[-2:])
    out = [np.asarray(Image.fromarray(image, mode="F").resize((size, size), method)) for image in flat]
    return np.stack(out).reshape(*images.shape[:-2], size, size).astype(np.float32)


def transform_images(images: np.ndarray, *, image_size: int | None = None, resample: str = "area", pad: int = 0,
                     standardize: bool = False, reference: np.ndarray | None = None) -> np.ndarray:
    """Resize to `image_size` with filter `resample` (None keeps the size), zero-pad by `pad`
    pixels per side, then optionally standardise.

    Standardisation uses one scalar mean and std of `reference` after the same resize and
    padding (training images only, so nothing about validation or test characters leaks
    into the inputs); without a reference, of `images` themselves.
    """
    out = np.asarray(images, dtype=np.float32)
    if image_size is not None:
        out = resize(out, image_size, resample)
    if pad:
        out = np.pad(out, [(0, 0)] * (out.ndim - 2) + [(pad, pad), (pad, pad)])
    if standardize:
        ref = out if reference is None else transform_images(reference, image_size=image_size, resample=resample,
                                                             pad=pad)
        mean, std = float(ref.mean()), float(ref.std())
        if not std > 0:
            raise ValueError("cannot standardise: the reference images have zero variance")
        out = (out - mean) / std
    return out


def source_images(pool_images, source: str) -> np.ndarray:
    """The images a pool's kernel resamples, as float32 with strokes 1 and background 0:
    `pool_images` is the pool's images file (its "images", and "originals" in uint8, 255 =
    stroke, when the data stage kept them); `source` "original" or "preprocessed"."""
    if source == "original":
        return np.asarray(pool_images["originals"], dtype=np.float32) / 255.0
    if source == "preprocessed":
        return np.asarray(pool_images["images"], dtype=np.float32)
    raise ValueError(f"kernel source must be 'original' or 'preprocessed' once resolved, got {source!r}")
