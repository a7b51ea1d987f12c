r"""float32 CNTK with global average pooling on the CPU: vectorised numba, parallel over
(pair, row offset) items.

Same kernel as :mod:`mnk.kernels.cntk_cpu` (definition there), computed in float32 with
the final sums in float64.  Relative error against the float64 path on real Omniglot
strokes: <= 3e-7 at depth 20 and <= 3e-6 at depth 50 (``tests/test_cntk_cpu_float32.py``
asserts 1e-5 and 1e-4; BENCHMARKS.md).

Only with global average pooling: the trace (``gap=False``) sums the P zero-offset entries,
where correlations near 1 are common (a standardised background is one constant), and
float32's ``1 - c`` there left errors up to 4.6e-5 relative on real images (BENCHMARKS.md,
issue 29); the trace costs O(P) per pair, so :func:`mnk.kernels.cntk_gram` computes it in
float64 whatever ``dtype`` says (as the CUDA backend does).

Layout (why it vectorises)
--------------------------
With global average pooling the 4-D recursion on ``Sigma(p, q)`` couples an entry only to
``(p + d, q + d)``.  For a row offset ``a = q_y - p_y`` one *item* holds every entry with
that row offset as ``[u, v, (Sigma, Theta), lane]``: ``u`` the row of ``p`` (``h = H - |a|``
rows), ``v`` the column of ``p``, ``lane`` the column of ``q``, innermost and contiguous
(``L >= W + 1`` lanes, rounded up to 8; lanes ``W..L-1`` are zero guards).  All ``W x W``
column pairs are valid, so little is wasted, and the 3x3 box filter ``B`` is two flat,
separable passes with constant shifts: ``2 L + 1`` along a row (``v`` and ``q_x`` move
together; a shifted lane 0 lands on a guard lane) and one row.  The layers are one sweep
over the rows each: vertical half of ``B`` fused with the ReLU step into a row buffer (L1)
(one loop over the lanes per ``v``: ``x``'s norms are scalars there, ``z``'s the lane
vector of row ``u + a``), horizontal half of the next ``B`` into the other of two
row-summed buffers (L2).  Guard lanes have norm 0 and the step maps entries with
``lx lz = 0`` to exactly 0 (they are 0 in the exact recursion: Sigma and Theta vanish where
a variance does); columns with ``lx = 0`` are skipped.

The ReLU step, per entry, with ``u = 1 - |c|``::

    theta = arccos(1 - u) = sqrt(u) g(u)     (g: polynomial, mnk.kernels._acos)
    sin   = sqrt(u) q(u)                   (q ~ sqrt(2 - u): polynomial)
    pm    = pi - arccos(c) = pi - theta  (c >= 0)   or  theta  (c < 0)
    S~    = S pm / (9 pi) + sin lx lz / (9 pi)        (c lx lz = S)
    T~    = T pm / (9 pi) + S~

``u`` below :data:`SNAP` (2^-21, eight float32 ulp of 1) is taken as 0: exactly correlated
patches (the same patch in both images, identical images) keep ``theta = 0`` instead of
``sqrt(2 * rounding) ~ 5e-4``.  The per-image variances ``Sigma^h(x, x)(p, p)`` are computed
in float32 by the same operations in the same order as the pair recursion
(:func:`layer_variances`), so an exactly correlated entry stays exactly correlated at
every layer and the diagonal of a Gram matrix needs no special case.  The images are
scaled to max |value| 1 each first (the kernel is homogeneous of degree 1 in each image;
the result is scaled back in float64), so float32 neither overflows nor underflows.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from mnk.kernels._acos import ACOS1M_COEFFS, SQRT2M_COEFFS
from mnk.kernels._jit import kernel_jit
from mnk.kernels._pairs import PairProgress, batches, chunks

__all__ = ["cntk_gram_cpu32", "layer_variances", "SNAP"]

_F = np.float32
SNAP = _F(2.0**-21)
_ZERO = _F(0.0)
_ONE = _F(1.0)
_TWO = _F(2.0)
_NINTH = _F(1.0 / 9.0)
_KINV = 1.0 / (9.0 * math.pi)
_LSCALE = _F(_KINV)
# arccos(1 - u) / (9 pi) = sqrt(u) * poly(u): the 1/(9 pi) folded into the coefficients
_G = tuple(_F(c * _KINV) for c in ACOS1M_COEFFS)
# sqrt(2 - u) = q(u)
_Q = tuple(_F(c) for c in SQRT2M_COEFFS)

_FLAGS = dict(fastmath=False, error_model="numpy")
# The ReLU step may fuse a * b + c into one FMA (no other fast-math: NaN/inf/select semantics kept).
_STEP_FLAGS = dict(fastmath={"contract"}, error_model="numpy")

# Memory allowed for the packed images and norms of one chunk of images (bytes).
_CHUNK_BYTES = 256 * 2**20


@kernel_jit(**_FLAGS)
def layer_variances(X, depth):
    """``D[n, h-1] = Sigma^h(x_n, x_n)(p, p)``, h = 1..depth-1, float32 (n, depth-1, H, W).

    The same float32 operations in the same order as the pair recursion on an exactly
    correlated entry (channel sum from 0, box filter (left + centre) + right, then
    (up + centre) + down, ReLU step with c = 1: ``D <- D / 9``).
    """
    n, C, H, W = X.shape
    D = np.empty((n, depth - 1, H, W), dtype=np.float32)
    A = np.zeros((H + 2, W + 2), dtype=np.float32)
    HB = np.zeros((H + 2, W + 2), dtype=np.float32)
    for k in range(n):
        for i in range(H):
            for j in range(W):
                acc = _ZERO
                for c in range(C):
                    acc += X[k, c, i, j] * X[k, c, i, j]
                A[i + 1, j + 1] = acc
        for layer in range(depth - 1):
            for i in range(1, H + 1):
                for j in range(1, W + 1):
                    HB[i, j] = A[i, j - 1] + A[i, j] + A[i, j + 1]
            for i in range(1, H + 1):
                for j in range(1, W + 1):
                    A[i, j] = HB[i - 1, j] + HB[i, j] + HB[i + 1, j]
            for i in range(H):
                for j in range(W):
                    D[k, layer, i, j] = A[i + 1, j + 1]
                    A[i + 1, j + 1] = A[i + 1, j + 1] * _NINTH
    return D


def layer_norms(D: np.ndarray, scaled: bool):
    """(``sqrt(D)``, ``1 / sqrt(D)`` or 0), float32, from :func:`layer_variances`; with
    ``scaled`` (the x side) the first is divided by 9 pi (the ReLU step's constant)."""
    L = np.sqrt(D)
    iL = np.zeros_like(L)
    np.divide(_ONE, L, out=iL, where=L > 0)
    return (L * _LSCALE if scaled else L), iL


@kernel_jit(inline="always", **_FLAGS)
def _horner6(u, c):
    """c[0] u^6 + ... + c[6] by Horner, as :func:`mnk.kernels._acos.polyval_f32` (inlined:
    the caller's flags apply and its loop still vectorises)."""
    p = c[0]
    p = p * u + c[1]
    p = p * u + c[2]
    p = p * u + c[3]
    p = p * u + c[4]
    p = p * u + c[5]
    return p * u + c[6]


@kernel_jit(**_STEP_FLAGS)
def _relu_step_row(hb, ur, rb, xn_l, zn_l, xr, zr, fixf, first, last):
    """Vertical half of the box filter fused with the ReLU step (module docstring), one row.

    hb (H+2, W, 2, L): the row-summed (Sigma, Theta) of this layer, item row ``ur`` reads
    rows ur..ur+2 (one array: few run-time alias checks, so the loop vectorises);
    rb: row buffer (W+4, 2, L) for the results, column v1 at rb[v1 + 2]; ``last``:
    rb[., 0] <- T~ - fixf S~.  xn_l (2, H, W), zn_l (2, H, L): this layer's norms (z's
    column in the lane).  ``first``/``last`` are compile-time constants (one
    specialisation each, no branch in the loop); after the first layer Sigma >= 0, so c >= 0.
    """
    numba.literally(first)
    numba.literally(last)
    W2 = xn_l.shape[2]
    L = rb.shape[2]
    for v1 in range(W2):
        lxs = xn_l[0, xr, v1]
        ilx = xn_l[1, xr, v1]
        r = v1 + 2
        if lxs == _ZERO:  # zero x variance (or a guard column): the step gives 0
            for k in range(L):
                rb[r, 0, k] = _ZERO
                rb[r, 1, k] = _ZERO
            continue
        for k in range(L):
            sk = hb[ur, v1, 0, k] + hb[ur + 1, v1, 0, k] + hb[ur + 2, v1, 0, k]
            tk = hb[ur, v1, 1, k] + hb[ur + 1, v1, 1, k] + hb[ur + 2, v1, 1, k]
            lxz = lxs * zn_l[0, zr, k]
            c = sk * (ilx * zn_l[1, zr, k])
            u = _ONE - (abs(c) if first else c)
            u = u if u > SNAP else _ZERO
            s1 = math.sqrt(u)
            thk = s1 * _horner6(u, _G)
            pmk = _NINTH - thk
            if first:
                pmk = thk if c < _ZERO else pmk
            pmk = pmk if lxz > _ZERO else _ZERO
            sn = sk * pmk + s1 * _horner6(u, _Q) * lxz
            tn = tk * pmk + sn
            if last:
                rb[r, 0, k] = tn - fixf * sn
            else:
                rb[r, 0, k] = sn
                rb[r, 1, k] = tn


@kernel_jit(inline="always", **_FLAGS)
def _hsum(rf, out, L):
    """Horizontal half of the box filter on a row: out[k] = rf[o+k-sh] + rf[o+k] + rf[o+k+sh],
    o = 4 L (two guard columns of (Sigma, Theta) lane vectors before the row), sh = 2 L + 1
    (the next column of p, the next lane of q)."""
    n = out.shape[0]
    o = 4 * L
    sh = 2 * L + 1
    a0 = rf[o - sh : o - sh + n]
    a1 = rf[o : o + n]
    a2 = rf[o + sh : o + sh + n]
    for k in range(n):
        out[k] = a0[k] + a1[k] + a2[k]


@kernel_jit(**_FLAGS)
def _item(HB, rb, acc, xi, xn, zi, zn, h, xr0, zr0, depth, fix):
    """All layers of one item (module docstring), one sweep over the rows per layer.

    HB (2, H+2, W+2, 2, L): horizontally summed (Sigma, Theta), double buffered (row 0 and
    row h+1 are the zero borders); rb (W+6, 2, L): the row buffer.
    xi (C, H, W+2), xn (depth-1, 2, H, W+2): x's padded image and norms; zi (C, H, L),
    zn (depth-1, 2, H, L): z's, one lane per column.  Item row u is x row ``xr0 + u`` and z
    row ``zr0 + u``.  Adds the per-lane sums of the final T (minus Sigma if fix) to ``acc``
    (float64: the sums of many small entries).
    """
    C = xi.shape[0]
    W2 = xi.shape[2]
    L = rb.shape[2]
    rf = rb.reshape(-1)
    for b in range(2):
        HB[b, h + 1] = _ZERO
    for u in range(h):  # Sigma^1 = B[sum_c x_c z_c], Theta^1 = Sigma^1 (0 if fix): horizontal half
        for v1 in range(W2):
            for k in range(L):
                rb[v1 + 2, 0, k] = _ZERO
            for c in range(C):
                xv = xi[c, xr0 + u, v1]
                for k in range(L):
                    rb[v1 + 2, 0, k] += xv * zi[c, zr0 + u, k]
            for k in range(L):
                rb[v1 + 2, 1, k] = _ZERO if fix else rb[v1 + 2, 0, k]
        _hsum(rf, HB[0, u + 1].reshape(-1), L)
    fixf = _ONE if fix else _ZERO
    cur = 0
    for layer in range(depth - 1):
        last = layer == depth - 2
        hb = HB[cur]
        for u in range(h):
            xl, zl, xr, zr = xn[layer], zn[layer], xr0 + u, zr0 + u
            if layer == 0:
                if last:
                    _relu_step_row(hb, u, rb, xl, zl, xr, zr, fixf, True, True)
                else:
                    _relu_step_row(hb, u, rb, xl, zl, xr, zr, fixf, True, False)
            elif last:
                _relu_step_row(hb, u, rb, xl, zl, xr, zr, fixf, False, True)
            else:
                _relu_step_row(hb, u, rb, xl, zl, xr, zr, fixf, False, False)
            if last:
                for v1 in range(W2):
                    for k in range(L):
                        acc[k] += rb[v1 + 2, 0, k]
            else:
                _hsum(rf, HB[1 - cur, u + 1].reshape(-1), L)
        cur = 1 - cur


@kernel_jit(**_FLAGS)
def _scratch(H, W2, L):
    return (np.zeros((2, H + 2, W2, 2, L), dtype=np.float32), np.zeros((W2 + 4, 2, L), dtype=np.float32),
            np.zeros(L))


@kernel_jit(parallel=True, **_FLAGS)
def _gap_pairs(XI, XN, ZI, ZN, pi, pj, depth, fix, nthreads):
    """Sum over all P x P entries of the final layer, float64 (len(pi),), for each pair."""
    H = XI.shape[2]
    W2 = XI.shape[3]
    L = ZI.shape[-1]
    na = 2 * H - 1
    nitems = pi.shape[0] * na
    part = np.zeros(nitems)
    nchunks = min(nitems, 4 * nthreads)
    for ch in prange(nchunks):
        HB, rb, acc = _scratch(H, W2, L)
        for it in range(ch, nitems, nchunks):
            k = it // na
            a = it % na - (H - 1)
            i0 = -a if a < 0 else 0
            acc[:] = 0.0
            _item(HB, rb, acc, XI[pi[k]], XN[pi[k]], ZI[pj[k]], ZN[pj[k]], H - abs(a), i0, i0 + a,
                  depth, fix)
            part[it] = acc.sum()
    return part.reshape(pi.shape[0], na).sum(axis=1)



# --------------------------------------------------------------------------- driver


def _lanes(W: int) -> int:
    """Lanes of an item: q's W columns and at least one zero guard, rounded up to 8."""
    return -(-(W + 1) // 8) * 8


def _pack_x(X32: np.ndarray, depth: int):
    """x side: images (n, C, H, W) and norms (n, depth-1, 2, H, W), float32."""
    L, iL = layer_norms(layer_variances(X32, depth), True)
    return np.ascontiguousarray(X32), np.ascontiguousarray(np.stack([L, iL], axis=2))


def _pack_z(X32: np.ndarray, depth: int, lanes: int):
    """z side of items: images (m, C, H, lanes), norms (m, depth-1, 2, H, lanes);
    lane = column, lanes W.. are zero guards."""
    m, C, H, W = X32.shape
    ZI = np.zeros((m, C, H, lanes), dtype=np.float32)
    ZI[..., :W] = X32
    L, iL = layer_norms(layer_variances(X32, depth), False)
    ZN = np.zeros((m, depth - 1, 2, H, lanes), dtype=np.float32)
    ZN[:, :, 0, :, :W] = L
    ZN[:, :, 1, :, :W] = iL
    return ZI, ZN


def _gap_block(K, XI, XN, ZI, ZN, x0, z0, diag, depth, fix, norm, bar):
    """Fill K's entries of one (x chunk, z chunk) block with global average pooling."""
    nx, nz = len(XI), len(ZI)
    ii, jj = np.tril_indices(nx) if diag else np.indices((nx, nz)).reshape(2, -1)
    ii = np.ascontiguousarray(ii, dtype=np.int64)
    jj = np.ascontiguousarray(jj, dtype=np.int64)
    for b0, b1 in batches(len(ii), 64 if bar.active else 1):
        vals = _gap_pairs(XI, XN, ZI, ZN, ii[b0:b1], jj[b0:b1], depth, fix,
                           numba.get_num_threads())
        K[x0 + ii[b0:b1], z0 + jj[b0:b1]] = vals * norm
        bar.update(b1 - b0)


def _unit_scale(X: np.ndarray):
    """float32 images scaled to max |value| 1 each, and the scales (1 for an all-zero image)."""
    scale = np.abs(X).reshape(len(X), -1).max(axis=1)
    scale[scale == 0.0] = 1.0
    return (X / scale[:, None, None, None]).astype(np.float32), scale


def cntk_gram_cpu32(X: np.ndarray, Z: np.ndarray, symmetric: bool, *, depth: int, fix: bool,
                    progress: bool | None = None) -> np.ndarray:
    """CNTK Gram matrix with global average pooling computed in float32, returned as float64
    (len(X), len(Z)).

    Prepared inputs (see :func:`mnk.kernels.cntk_gram`): X, Z float64 (n, C, H, W), finite,
    validated; ``symmetric``: Z is X (lower triangle computed, then mirrored).
    """
    n, m = len(X), len(Z)
    K = np.zeros((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return K
    X32, sx = _unit_scale(X)
    Z32, sz = (X32, sx) if symmetric else _unit_scale(Z)
    _, C, H, W = X.shape
    P = H * W
    lanes = _lanes(W)
    norm = 1.0 / (float(P) * float(P))
    npairs = n * (n + 1) // 2 if symmetric else n * m
    bar = PairProgress(npairs, npairs * float(P * P) * (depth - 1),
                       f"CNTK cpu float32 {H}x{W} depth {depth} gap", progress)
    per_image = 4 * (depth + C) * 2 * H * max(lanes, W + 2) * 2
    csize = max(1, _CHUNK_BYTES // per_image)
    xch = chunks(n, csize)
    zch = xch if symmetric else chunks(m, csize)
    try:
        for ci, (x0, x1) in enumerate(xch):
            XI, XN = _pack_x(X32[x0:x1], depth)
            for cj, (z0, z1) in enumerate(zch):
                if symmetric and cj > ci:
                    break
                ZI, ZN = _pack_z(Z32[z0:z1], depth, lanes)
                _gap_block(K, XI, XN, ZI, ZN, x0, z0, symmetric and cj == ci, depth, fix, norm, bar)
    finally:
        bar.close()
    if symmetric:
        iu = np.triu_indices(n, 1)
        K[iu] = K.T[iu]
    K *= sx[:, None] * sz[None, :]
    if not np.all(np.isfinite(K)):
        raise FloatingPointError("cntk_gram_cpu32 produced non-finite values")
    return K
