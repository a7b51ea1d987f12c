"""Direct float64 NumPy reference of the CNTK recursion (slow; for tests only).

This is a line-by-line transcription of the 4-D recursion of Arora et al. 2019
(``ruosongwang/CNTK``, ``CNTK.py``: ``conv3``, ``trans``, ``xx``, ``xz``) on full
``(H, W, H, W)`` arrays, in float64, with one deliberate change: where a variance is
zero the correlation is taken as 0 instead of ``0 * inf = NaN`` (see
:mod:`mnk.kernels.cntk_cpu` for the full statement of the recursion).

Cost is O(depth * P^2) memory-bound NumPy per pair (P = H * W); use it on small images.
"""

from __future__ import annotations

import numpy as np

from mnk.kernels._validate import as_images, check_depth

__all__ = ["cntk_gram_reference", "cntk_pair_reference", "box3", "relu_step"]

_NINE_PI = 9.0 * np.pi


def box3(S: np.ndarray) -> np.ndarray:
    """``t[p, q] = sum_{d in {-1,0,1}^2} s[p + d, q + d]`` with zero padding (Arora's conv3)."""
    H, W = S.shape[0], S.shape[1]
    Sp = np.zeros((H + 2, W + 2, H + 2, W + 2), dtype=np.float64)
    Sp[1:-1, 1:-1, 1:-1, 1:-1] = S
    out = np.zeros_like(S)
    for dy in range(3):
        for dx in range(3):
            out += Sp[dy : dy + H, dx : dx + W, dy : dy + H, dx : dx + W]
    return out


def _inv(L: np.ndarray) -> np.ndarray:
    iL = np.zeros_like(L)
    np.divide(1.0, L, out=iL, where=L > 0)
    return iL


def relu_step(S, T, Lx, Lz, force_diag_one=False):
    """Arora's ``trans``: ReLU step on Sigma (S) and the NTK (T); returns (S_new, T_new).

    ``Lx``/``Lz`` are ``sqrt(Sigma(x,x)(p,p))`` and ``sqrt(Sigma(z,z)(q,q))`` of shape (H, W).
    Zero variance gives correlation 0 (``1/L`` taken as 0). With ``force_diag_one`` the
    correlation on the p == q diagonal is set to exactly 1 (used for K(x, x)).
    """
    H, W = Lx.shape
    iL = _inv(Lx)[:, :, None, None]
    iR = _inv(Lz)[None, None, :, :]
    c = S * iL * iR
    if force_diag_one:
        P = H * W
        c.reshape(P, P)[np.arange(P), np.arange(P)] = 1.0
    c = np.clip(c, -1.0, 1.0)
    pm = np.pi - np.arccos(c)
    BS = (c * pm + np.sqrt(1.0 - c * c)) * (Lx[:, :, None, None] * Lz[None, None, :, :]) / _NINE_PI
    T = T * (pm / _NINE_PI) + BS
    return BS, T


def _diag_L(S):
    H, W = S.shape[0], S.shape[1]
    P = H * W
    return np.sqrt(np.diagonal(S.reshape(P, P)).reshape(H, W).copy())


def layer_norms(x, depth):
    """Per-layer ``sqrt(Sigma^(h)(x,x)(p,p))`` for h = 1..depth-1 via the full 4-D recursion on (x, x)."""
    C, H, W = x.shape
    xf = x.reshape(C, H * W)
    S = box3((xf.T @ xf).reshape(H, W, H, W))
    T = np.zeros_like(S)
    Ls = []
    for _ in range(1, depth):
        L = _diag_L(S)
        Ls.append(L)
        S, T = relu_step(S, T, L, L, force_diag_one=True)
        S = box3(S)
    return Ls


def cntk_pair_reference(x, z, *, depth, gap, fix, Lx=None, Lz=None, same=None):
    """CNTK value for one pair of images ``x``, ``z`` of shape (C, H, W), float64."""
    x = np.asarray(x, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    C, H, W = x.shape
    if same is None:
        same = bool(np.array_equal(x, z))
    if Lx is None:
        Lx = layer_norms(x, depth)
    if Lz is None:
        Lz = Lx if same else layer_norms(z, depth)
    xf = x.reshape(C, H * W)
    zf = z.reshape(C, H * W)
    S = box3((xf.T @ zf).reshape(H, W, H, W))
    T = np.zeros_like(S) if fix else S.copy()
    for i in range(1, depth - 1):
        S, T = relu_step(S, T, Lx[i - 1], Lz[i - 1], force_diag_one=same)
        S = box3(S)
        T = box3(T)
    S, T = relu_step(S, T, Lx[-1], Lz[-1], force_diag_one=same)
    if fix:
        T = T - S
    P = H * W
    return float(np.mean(T)) if gap else float(np.trace(T.reshape(P, P)))


def cntk_gram_reference(X, Z=None, *, depth, gap, fix):
    """Gram matrix by the direct 4-D recursion, one pair at a time (float64, slow)."""
    check_depth(depth)
    X = as_images(X, "X")
    symmetric = Z is None
    Zi = X if symmetric else as_images(Z, "Z")
    if Zi.shape[1:] != X.shape[1:]:
        raise ValueError(f"X and Z must have the same (C, H, W); got {X.shape[1:]} and {Zi.shape[1:]}")
    LX = [layer_norms(x, depth) for x in X]
    LZ = LX if symmetric else [layer_norms(z, depth) for z in Zi]
    K = np.empty((len(X), len(Zi)), dtype=np.float64)
    for i in range(len(X)):
        for j in range(len(Zi)):
            if symmetric and j > i:
                continue
            same = bool(np.array_equal(X[i], Zi[j]))
            K[i, j] = cntk_pair_reference(
                X[i], Zi[j], depth=depth, gap=gap, fix=fix, Lx=LX[i], Lz=LZ[j], same=same
            )
    if symmetric:
        iu = np.triu_indices(len(X), 1)
        K[iu] = K.T[iu]
    return K
