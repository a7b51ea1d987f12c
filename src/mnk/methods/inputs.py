"""What the networks (MAML, iMAML, the label encoder) see of the stored images.

The images are stored inverted to [0, 1]: background 0, strokes 1 (mnk.data). The original
code's loader (support/omniglot_loaders.py) instead divides the files' grey levels by 255,
dark strokes on a white background, and standardises with one scalar mean and std of the
TRAINING images (``normalization()``). Options ``invert`` and ``standardize`` of each
network's section (mnk.methods.options._NetworkInputs) choose between the two; the
statistics come from training images only, never validation or test ones. The kernels have
their own ``kernel.standardize`` (mnk.kernels.transform).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["InputTransform"]


@dataclass(frozen=True)
class InputTransform:
    """x -> (x - mean) / std with x the stored image (`invert`) or 1 - it (not `invert`)."""

    invert: bool = True  # True: the stored, inverted images (strokes 1)
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, train_images, *, invert: bool, standardize: bool) -> "InputTransform":
        """The transform of `invert`, standardised on `train_images` (the training images only)."""
        polarity = cls(invert=bool(invert))
        if not standardize:
            return polarity
        x = polarity(np.asarray(train_images, dtype=np.float64))
        if x.size == 0:
            raise ValueError("standardize needs training images; none given")
        mean, std = float(x.mean()), float(x.std())
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"cannot standardise: the training images have std {std} (constant or not finite)")
        return cls(invert=bool(invert), mean=mean, std=std)

    def __call__(self, images):
        """The prepared images (numpy or torch, the input's dtype)."""
        x = images if self.invert else 1 - images
        return (x - self.mean) / self.std
