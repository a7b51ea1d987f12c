"""Input checks shared by the kernel backends."""

from __future__ import annotations

import numbers

import numpy as np

from mnk.kernels.options import MIN_DEPTH


def check_depth(depth, minimum: int = MIN_DEPTH["cntk"], what: str = "depth") -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {depth!r}")
    depth = int(depth)
    if depth < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {depth}")
    return depth


def _check_finite(A: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(A)):
        bad = np.argwhere(~np.isfinite(A.reshape(A.shape[0], -1)))
        first = int(bad[0, 0])
        raise ValueError(
            f"{name} contains non-finite values (NaN or inf): {len(bad)} entries, "
            f"first in image {first}"
        )


def _real_array(A, name: str) -> np.ndarray:
    A = np.asarray(A)
    if A.dtype == object or not (np.issubdtype(A.dtype, np.number) or A.dtype == np.bool_):
        raise ValueError(f"{name} must be a numeric array, got dtype {A.dtype}")
    if np.iscomplexobj(A):
        raise ValueError(f"{name} must be real, got dtype {A.dtype}")
    return A


def as_images(A, name: str) -> np.ndarray:
    """Return ``A`` as a C-contiguous float64 array (n, C, H, W); (n, H, W) gets C = 1."""
    A = _real_array(A, name)
    if A.ndim == 3:
        A = A[:, None, :, :]
    elif A.ndim != 4:
        raise ValueError(f"{name} must have shape (n, H, W) or (n, C, H, W), got shape {A.shape}")
    n, C, H, W = A.shape
    if H < 3 or W < 3:
        raise ValueError(f"{name}: images must be at least 3x3, got H={H}, W={W}")
    if C < 1:
        raise ValueError(f"{name}: need at least one channel, got shape {A.shape}")
    A = np.ascontiguousarray(A, dtype=np.float64)
    if A.size:
        _check_finite(A, name)
    return A


def as_vectors(A, name: str) -> np.ndarray:
    """Return ``A`` flattened to a C-contiguous float64 array (n, d)."""
    A = _real_array(A, name)
    if A.ndim < 2:
        raise ValueError(f"{name} must have shape (n, ...) with at least 2 dims, got shape {A.shape}")
    A = np.ascontiguousarray(A.reshape(A.shape[0], -1), dtype=np.float64)
    if A.shape[1] == 0:
        raise ValueError(f"{name} has zero features per example, shape {A.shape}")
    if A.size:
        _check_finite(A, name)
    return A


def as_image_pair(X, Z):
    """Validated (X, Z, symmetric) for a Gram matrix between X and Z (Z=None: Z = X)."""
    X = as_images(X, "X")
    symmetric = Z is None
    Zi = X if symmetric else as_images(Z, "Z")
    if Zi.shape[1:] != X.shape[1:]:
        raise ValueError(f"X and Z must have the same (C, H, W); got {X.shape[1:]} and {Zi.shape[1:]}")
    return X, Zi, symmetric


def image_keys(X: np.ndarray, Z: np.ndarray | None):
    """Integer ids such that equal ids <=> bitwise-identical images (across X and Z)."""
    ids: dict[bytes, int] = {}
    kx = np.array([ids.setdefault(x.tobytes(), len(ids)) for x in X], dtype=np.int64)
    if Z is None:
        return kx, kx
    kz = np.array([ids.setdefault(z.tobytes(), len(ids)) for z in Z], dtype=np.int64)
    return kx, kz
