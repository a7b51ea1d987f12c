r"""Fully connected ReLU NTK on flattened inputs (vectorised NumPy, float64).

Constants of the original MNK code: with ``S = <x, z>`` and ``Theta = 0``, repeat
``depth`` times::

    Theta <- Theta + S
    c     <- clip(S / sqrt(S(x,x) S(z,z)), -1, 1)
    S     <- (c (pi - arccos c) + sqrt(1 - c^2)) sqrt(S(x,x) S(z,z)) / (2 pi)
    Theta <- Theta (pi - arccos c) / (2 pi)

and return ``Theta``; ``S(x,x)`` and ``S(z,z)`` follow the same recursion with c = 1
(so they halve at each step).  A zero variance gives correlation 0 (the value stays
finite: S and Theta are then 0 for that pair).  On K(x, x) of identical rows the
correlation is exactly 1.
"""

from __future__ import annotations

import numpy as np

from mnk.kernels._validate import as_vectors, check_depth

__all__ = ["ntk_gram"]


def layer_variances(sq: np.ndarray, depth: int) -> list[np.ndarray]:
    """S(x,x) before each of the ``depth`` steps."""
    out = []
    s = sq.copy()
    for _ in range(depth):
        out.append(s)
        # c = 1: (1 * pi + 0) * sqrt(s s) / (2 pi)
        s = (np.pi * np.sqrt(s * s)) / (2.0 * np.pi)
    return out


def ntk_gram(X, Z=None, *, depth: int) -> np.ndarray:
    """ReLU NTK Gram matrix (len(X), len(Z)) of flattened inputs; Z=None means Z = X."""
    depth = check_depth(depth, minimum=1)
    X = as_vectors(X, "X")
    symmetric = Z is None
    Zv = X if symmetric else as_vectors(Z, "Z")
    if Zv.shape[1] != X.shape[1]:
        raise ValueError(f"X and Z must have the same number of features; got {X.shape[1]} and {Zv.shape[1]}")
    S = X @ Zv.T
    if symmetric:
        S = 0.5 * (S + S.T)
    Dx = layer_variances(np.einsum("ij,ij->i", X, X), depth)
    Dz = Dx if symmetric else layer_variances(np.einsum("ij,ij->i", Zv, Zv), depth)
    same = _same_rows(X, None if symmetric else Zv)
    Theta = np.zeros_like(S)
    for h in range(depth):
        Theta += S
        norm = np.sqrt(np.outer(Dx[h], Dz[h]))
        c = np.zeros_like(S)
        np.divide(S, norm, out=c, where=norm > 0)
        np.clip(c, -1.0, 1.0, out=c)
        c[same] = 1.0
        pm = np.pi - np.arccos(c)
        S = (c * pm + np.sqrt(1.0 - c * c)) * norm / (2.0 * np.pi)
        Theta = Theta * pm / (2.0 * np.pi)
    if not np.all(np.isfinite(Theta)):
        raise FloatingPointError("ntk_gram produced non-finite values (overflow in the input scale?)")
    return Theta


def _same_rows(X: np.ndarray, Z: np.ndarray | None) -> np.ndarray:
    """Boolean (n, m): rows bitwise identical (where the correlation is exactly 1)."""
    if Z is None:
        same = np.zeros((len(X), len(X)), dtype=bool)
        np.fill_diagonal(same, True)
        Z = X
    else:
        same = np.zeros((len(X), len(Z)), dtype=bool)
    ids: dict[bytes, list[int]] = {}
    for i, x in enumerate(X):
        ids.setdefault(x.tobytes(), []).append(i)
    for j, z in enumerate(Z):
        rows = ids.get(z.tobytes())
        if rows:
            same[rows, j] = True
    return same
