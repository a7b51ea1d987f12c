r"""Exact convolutional NTK (CNTK) on the CPU: numba, parallel over pairs.

Semantics (Arora et al. 2019, "On Exact Computation with an Infinitely Wide Neural Net",
code ``ruosongwang/CNTK``, functions ``conv3``/``trans``/``xx``/``xz``; reproduced here
exactly, in float64)
---------------------------------------------------------------------------------------
Images ``x, z`` have C channels and P = H*W pixels; p, q index pixels; ``B`` is the
3x3 "conv" of a 4-D kernel with zero SAME padding, applied to both pixels at once::

    B[A](p, q) = sum_{d in {-1,0,1}^2} A(p + d, q + d)      (A = 0 outside the image)

Recursion, ``depth`` = number of 3x3 conv layers + 1 (depth >= 2)::

    Sigma^1(p, q) = B[ sum_c x_c(p) z_c(q) ]
    Theta^1       = Sigma^1            (0 if fix)
    for h = 1 .. depth-1:
        lx(p) = sqrt(Sigma^h(x, x)(p, p)),  lz(q) = sqrt(Sigma^h(z, z)(q, q))
        c     = clip(Sigma^h(p, q) / (lx(p) lz(q)), -1, 1)   (c = 0 where lx lz = 0)
        S~    = (c (pi - arccos c) + sqrt(1 - c^2)) lx(p) lz(q) / (9 pi)
        D~    = (pi - arccos c) / (9 pi)
        T~    = Theta^h D~ + S~
        if h < depth-1:  Sigma^{h+1} = B[S~],  Theta^{h+1} = B[T~]
    T = T~ - S~ if fix else T~                                   (last h = depth-1)
    K(x, z) = mean_{p,q} T(p, q)  if gap   else   sum_p T(p, p)  (trace)

The 1/(9 pi) is Arora's constant 28.274333882308138 = 9 pi: ReLU with c_sigma = 2 and a
1/9 for the 3x3 window.  ``Sigma^h(x, x)(p, p)`` follows the same recursion on the
diagonal with c = 1 (then S~ = lx^2 / 9).  In the original code a zero variance gives
0 * inf = NaN; here the correlation is then 0, which is what neural-tangents does and
cannot change the result: Sigma and Theta vanish wherever lx(p) = 0, so D~ there is
multiplied by 0.  On the diagonal K(x, x) the correlation on p == q is set to exactly 1
(otherwise rounding of c to 1 - 1 ulp moves arccos by ~1e-8).

Equivalent neural-tangents network (parameterization 'ntk', no bias, NHWC)::

    stax.serial(Conv(k, (3,3), padding='SAME', W_std=sqrt(2 C)), Relu(),
                [Conv(k, (3,3), padding='SAME', W_std=sqrt(2)), Relu()] * (depth - 2),
                GlobalAvgPool(), Dense(1, W_std=1))

neural-tangents divides the input covariance by C and each conv by its 9 taps, so its
first layer is (2/9) Arora's Sigma^1 while its final Dense(W_std=1) is (9/2) times
Arora's last ReLU step (which carries the 1/9 of a conv that never comes); the two factors
cancel and the kernels agree exactly.  For ``gap=False`` replace ``GlobalAvgPool()`` by
``Flatten()`` and use ``Dense(1, W_std=sqrt(P))`` (Flatten averages the diagonal over P,
Arora sums it).  ``fix=True``: no gradient from the first conv (its NTK contribution is
Sigma^1) and from the last layer (its NTK contribution is the output NNGP).

Algorithm
---------
The 4-D recursion only couples entries with the same offset r = q - p, so it splits into
(2H-1)(2W-1) independent 2-D slices ``s_r(p) = Sigma(p, p + r)``, each living on the
(H-|r_y|) x (W-|r_x|) rectangle where both pixels exist; ``B`` becomes a zero-padded 3x3
box filter on that rectangle (done separably), and the ReLU step is elementwise.  A slice
is stored flat on a zero-bordered grid, so all layers of one slice stay in L1 cache and
every pass is a plain vectorisable loop.  ``lx``/``lz`` per layer are computed once per
image from the zero-offset slice only (O(depth P), :func:`layer_norms`).
``gap=False`` needs only r = 0.  Per pair the cost is O(depth P^2) (gap) or O(depth P)
(trace); pairs run in parallel with numba ``prange`` (threads: ``NUMBA_NUM_THREADS`` or
``numba.set_num_threads``).  The arc-cosine is :func:`mnk.kernels._acos.pi_minus_acos`
(fdlibm's rational approximation, branch-free) so the ReLU step vectorises.  All
arithmetic is IEEE float64 without fast-math; results agree with the direct 4-D
recursion (:mod:`mnk.kernels.reference`) to ~1e-15 relative.  Bitwise-identical images
(the diagonal of a symmetric Gram matrix, duplicates) get correlation exactly 1 on p == q.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from mnk.kernels._acos import pi_minus_acos
from mnk.kernels._jit import kernel_jit
from mnk.kernels._pairs import PairProgress, batches, chunks
from mnk.kernels._validate import as_image_pair, check_depth, image_keys as _image_keys

__all__ = ["cntk_gram_cpu", "gram_prepared", "layer_norms"]

_NINE_PI = 9.0 * math.pi
_INV_NINE_PI = 1.0 / (9.0 * math.pi)
_PI = math.pi

# Memory allowed for the per-image layer norms of one chunk of images (bytes).
_CHUNK_BYTES = 256 * 2**20


@kernel_jit(fastmath=False, error_model="numpy")
def _box3(A, HB, h, w):
    """In place: A[1:h+1, 1:w+1] <- 3x3 box sum of itself, zero outside (A has a zero border)."""
    for u in range(1, h + 1):
        for v in range(w):
            HB[u, v] = A[u, v] + A[u, v + 1] + A[u, v + 2]
    for u in range(h):
        for v in range(w):
            A[u + 1, v + 1] = HB[u, v] + HB[u + 1, v] + HB[u + 2, v]


@kernel_jit(fastmath=False, error_model="numpy")
def layer_norms(X, depth):
    """``L[n, h-1] = sqrt(Sigma^h(x_n, x_n)(p, p))`` for h = 1..depth-1, and ``1/L`` (0 where L = 0).

    X: float64 (n, C, H, W).  Returns (L, iL), each float64 (n, depth-1, H, W).
    """
    n, C, H, W = X.shape
    L = np.empty((n, depth - 1, H, W))
    iL = np.empty((n, depth - 1, H, W))
    for k in range(n):
        A = np.zeros((H + 2, W + 2))
        HB = np.zeros((H + 2, W))
        for u in range(H):
            for v in range(W):
                acc = 0.0
                for c in range(C):
                    acc += X[k, c, u, v] * X[k, c, u, v]
                A[u + 1, v + 1] = acc
        _box3(A, HB, H, W)
        for h in range(depth - 1):
            for u in range(H):
                for v in range(W):
                    l = math.sqrt(A[u + 1, v + 1])
                    L[k, h, u, v] = l
                    iL[k, h, u, v] = 1.0 / l if l > 0.0 else 0.0
                    # c = 1: S~ = (1 * (pi - 0) + 0) l l / (9 pi)
                    A[u + 1, v + 1] = (_PI + 0.0) * (l * l) / _NINE_PI
            if h < depth - 2:
                _box3(A, HB, H, W)
    return L, iL


@kernel_jit(fastmath=False, error_model="numpy")
def _box3_flat(A, HB, h, w):
    """In place 3x3 box sum on the flat zero-bordered (h+2) x (w+2) grid A (border kept 0).

    Loops run over views from index 0 so that numba's negative-index wraparound check
    folds away and LLVM vectorises them.
    """
    P = w + 2
    n = (h + 2) * P
    HB[0] = 0.0
    HB[n - 1] = 0.0
    a0 = A[0 : n - 2]
    a1 = A[1 : n - 1]
    a2 = A[2:n]
    hb = HB[1 : n - 1]
    for k in range(n - 2):
        hb[k] = a0[k] + a1[k] + a2[k]
    m = h * P
    top = HB[0:m]
    mid = HB[P : P + m]
    bot = HB[2 * P : 2 * P + m]
    out = A[P : P + m]
    for k in range(m):
        out[k] = top[k] + mid[k] + bot[k]
    for u in range(1, h + 1):
        A[u * P] = 0.0
        A[u * P + w + 1] = 0.0


@kernel_jit(fastmath=False, error_model="numpy")
def _slice_sum(x, z, LIx, LIz, a, b, force, depth, fix, S, T, HS):
    """Sum over the offset-(a, b) slice of the final NTK (minus NNGP if fix) for one pair.

    The slice lives on the h x w rectangle of pixels p with p and p + (a, b) both in the
    image; it is stored flat on a zero-bordered (h+2) x (w+2) grid (border exactly 0).
    ``LIx``/``LIz``: flat packed per-layer norms of x / z (see :func:`_relu_step_rows`).
    """
    C, H, W = x.shape
    i0 = -a if a < 0 else 0
    j0 = -b if b < 0 else 0
    h = H - abs(a)
    w = W - abs(b)
    P = w + 2
    n = (h + 2) * P
    for k in range(n):
        S[k] = 0.0
    # Sigma^0 on the slice, then the first conv
    for u in range(h):
        for v in range(w):
            acc = 0.0
            for c in range(C):
                acc += x[c, i0 + u, j0 + v] * z[c, i0 + u + a, j0 + v + b]
            S[(u + 1) * P + v + 1] = acc
    if fix:
        for k in range(n):
            T[k] = 0.0
    else:
        for k in range(n):
            T[k] = S[k]
    _box3_flat(S, HS, h, w)
    _box3_flat(T, HS, h, w)
    HWs = H * W
    fixf = 1.0 if fix else 0.0
    for layer in range(depth - 1):
        offx = 2 * layer * HWs + i0 * W + j0
        offz = 2 * layer * HWs + (i0 + a) * W + j0 + b
        if layer < depth - 2:
            _relu_step_rows(S, T, LIx, LIz, h, w, P, W, HWs, offx, offz, force, fixf, False)
            _box3_flat(S, HS, h, w)
            _box3_flat(T, HS, h, w)
        else:  # last ReLU step: S <- T~ - S~ (fix) or T~
            _relu_step_rows(S, T, LIx, LIz, h, w, P, W, HWs, offx, offz, force, fixf, True)
    total = 0.0
    for u in range(h):
        ks = (u + 1) * P + 1
        for v in range(w):
            total += S[ks + v]
    return total


@kernel_jit(fastmath=False, error_model="numpy")
def _relu_step_rows(S, T, LIx, LIz, h, w, P, W, HW, offx, offz, force, fixf, last):
    """The ReLU step (Arora's ``trans``) on the h x w interior of a slice:
    T <- T D~ + S~, S <- S~; with ``last``: S <- T D~ + S~ - fixf S~ (fixf = 1 with fixed
    layers, else 0).

    ``LIx``: x's packed per-layer norms, layer l at ``l * 2 HW`` (sqrt variances, then their
    reciprocals at ``+ HW``); row u of the slice reads them at ``offx + u W + v`` (z: offz).
    ``last`` is a compile-time constant (one specialisation each, no branch in the loop: a
    run-time flag measured 7% slower).  The only branches are selects, and only S, T are
    written, so the loop vectorises.
    """
    numba.literally(last)
    for u in range(h):
        ks = (u + 1) * P + 1
        kx = offx + u * W
        kz = offz + u * W
        srow = S[ks : ks + w]
        trow = T[ks : ks + w]
        lx = LIx[kx : kx + w]
        ilx = LIx[HW + kx : HW + kx + w]
        lz = LIz[kz : kz + w]
        ilz = LIz[HW + kz : HW + kz + w]
        for v in range(w):
            c = srow[v] * (ilx[v] * ilz[v])
            c = 1.0 if c > 1.0 else c
            c = -1.0 if c < -1.0 else c
            c = 1.0 if force else c
            pm = pi_minus_acos(c)
            bs = (c * pm + math.sqrt(1.0 - c * c)) * (lx[v] * lz[v]) * _INV_NINE_PI
            if last:
                srow[v] = trow[v] * (pm * _INV_NINE_PI) + bs - fixf * bs
            else:
                trow[v] = trow[v] * (pm * _INV_NINE_PI) + bs
                srow[v] = bs


@kernel_jit(parallel=True, fastmath=False, error_model="numpy")
def _pairs_kernel(X, Z, LIX, LIZ, pi, pj, same, depth, gap, fix):
    """K for the pairs (X[pi[k]], Z[pj[k]]); returns float64 (len(pi),).

    LIX: (len(X), depth-1, 2, H, W) packed norms (:func:`pack_layer_norms`), LIZ for Z.
    """
    npairs = pi.shape[0]
    H, W = X.shape[2], X.shape[3]
    out = np.empty(npairs)
    rng_a = H - 1 if gap else 0
    rng_b = W - 1 if gap else 0
    norm = float(H * W) * float(H * W) if gap else 1.0
    for k in prange(npairs):
        nbuf = (H + 2) * (W + 2)
        S = np.empty(nbuf)
        T = np.empty(nbuf)
        HS = np.empty(nbuf)
        i = pi[k]
        j = pj[k]
        lix = LIX[i].reshape(-1)
        liz = LIZ[j].reshape(-1)
        total = 0.0
        for a in range(-rng_a, rng_a + 1):
            for b in range(-rng_b, rng_b + 1):
                force = same[k] and a == 0 and b == 0
                total += _slice_sum(X[i], Z[j], lix, liz, a, b, force, depth, fix, S, T, HS)
        out[k] = total / norm
    return out


def pack_layer_norms(X: np.ndarray, depth: int) -> np.ndarray:
    """(n, depth-1, 2, H, W): per layer ``sqrt(Sigma^h(x,x)(p,p))`` then its reciprocal (0 for 0)."""
    L, iL = layer_norms(X, depth)
    return np.ascontiguousarray(np.stack([L, iL], axis=2))


def cntk_gram_cpu(X, Z=None, *, depth: int, gap: bool = True, fix: bool = False) -> np.ndarray:
    """CNTK Gram matrix on the CPU in float64; see the module docstring for the definition.

    X, Z: (n, H, W) or (n, C, H, W), validated here (the public entry,
    :func:`mnk.kernels.cntk_gram`, validates once and calls :func:`gram_prepared`).
    Z=None: symmetric, only the lower triangle is computed and mirrored.  Returns float64
    (len(X), len(Z)).
    """
    depth = check_depth(depth)
    X, Zi, symmetric = as_image_pair(X, Z)
    return gram_prepared(X, Zi, symmetric, depth=depth, gap=bool(gap), fix=bool(fix))


def gram_prepared(X: np.ndarray, Zi: np.ndarray, symmetric: bool, *, depth: int, gap: bool,
                  fix: bool, progress: bool | None = None) -> np.ndarray:
    """:func:`cntk_gram_cpu` on validated float64 (n, C, H, W) inputs (Zi is X if symmetric)."""
    n, m = len(X), len(Zi)
    K = np.empty((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return K
    kx, kz = _image_keys(X, None if symmetric else Zi)
    _, _, H, W = X.shape
    P = H * W
    npairs = n * (n + 1) // 2 if symmetric else n * m
    bar = PairProgress(npairs, npairs * float(P * P if gap else P) * (depth - 1),
                       f"CNTK cpu float64 {H}x{W} depth {depth} {'gap' if gap else 'trace'}", progress)
    per_image = 3 * (depth - 1) * H * W * 8  # packed norms (+ transient L, iL)
    csize = max(1, _CHUNK_BYTES // (2 * per_image))
    xch = chunks(n, csize)
    zch = xch if symmetric else chunks(m, csize)
    try:
        for ci, (x0, x1) in enumerate(xch):
            LIX = pack_layer_norms(X[x0:x1], depth)
            for cj, (z0, z1) in enumerate(zch):
                if symmetric and cj > ci:
                    break
                if symmetric and cj == ci:
                    LIZ = LIX
                    ii, jj = np.tril_indices(x1 - x0)
                else:
                    LIZ = pack_layer_norms(Zi[z0:z1], depth)
                    ii, jj = np.indices((x1 - x0, z1 - z0)).reshape(2, -1)
                ii = np.ascontiguousarray(ii, dtype=np.int64)
                jj = np.ascontiguousarray(jj, dtype=np.int64)
                same = kx[x0 + ii] == kz[z0 + jj]
                for b0, b1 in batches(len(ii), 64 if bar.active else 1):
                    K[x0 + ii[b0:b1], z0 + jj[b0:b1]] = _pairs_kernel(
                        X[x0:x1], Zi[z0:z1], LIX, LIZ, ii[b0:b1], jj[b0:b1], same[b0:b1], depth, gap, fix
                    )
                    bar.update(b1 - b0)
    finally:
        bar.close()
    if symmetric:
        iu = np.triu_indices(n, 1)
        K[iu] = K.T[iu]
    if not np.all(np.isfinite(K)):  # cannot happen for finite input; never return NaN silently
        raise FloatingPointError("cntk_gram_cpu produced non-finite values (overflow in the input scale?)")
    return K
