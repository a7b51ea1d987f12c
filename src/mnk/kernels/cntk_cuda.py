r"""Fused GPU CNTK (CuPy): all layers of many image pairs in one kernel launch.

Semantics are those of :mod:`mnk.kernels.cntk_cpu` (Arora et al. 2019, ``ruosongwang/CNTK``):
same recursion, same constants, correlation 0 where a variance is 0, correlation forced to 1
on the p == q diagonal of bitwise-identical images.  Arithmetic is float32 (the original
code's), the final sum over the P x P entries is accumulated in float64.

How the work is laid out
------------------------
The 4-D recursion couples only entries with the same offset r = q - p.  For a *cyclic*
offset rho = (rx, ry) in [0, H) x [0, W) the "tile"

    G_rho(p) = Sigma(p, (p + rho) mod (H, W)),      p in the H x W grid,

holds the slice of offset (rx, ry) where p + rho does not wrap, and the complementary
slices (rx - H, ry), (rx, ry - W), (rx - H, ry - W) where it does: the P tiles hold every
one of the P^2 entries exactly once and each is a full H x W grid, so no thread idles on a
small slice.  The 3x3 "conv" (zero SAME padding on both pixels) is a separable 3x3 box
filter on the tile whose links between neighbours are cut at the grid edge (x, y = 0 or
H-1/W-1) and where q wraps (x + 1 = H - rx, y + 1 = W - ry).

One warp computes one tile through all layers (32 // W tiles per warp when W divides
less than 32): lane = column y, an unrolled register array = the H rows, for both Sigma
and Theta.  The box filter is two shuffles + two FMAs (lane direction, lane-constant
0/1 masks) and two FMAs with per-row 0/1 masks (register direction).  The per-image
diagonal terms Sigma^h(x, x)(p, p) are computed once per image and layer (O(depth P),
float64, on the GPU) and read through L1; the z image and its diagonal terms are stored
twice along H so the row index p_x + rx needs no modulo.  The arc-cosine is a
minimax polynomial times sqrt(1 - |c|) (Abramowitz & Stegun 4.4.46, |error| <= 2e-8)
with 1/(9 pi) folded into its coefficients; sqrt/rsqrt are the hardware approximations
(one Newton step on rsqrt).  Each warp writes one float64 partial sum per tile, poisoned
with NaN beforehand when asked, and CuPy sums the tiles of each pair in float64.

``gap=False`` (trace) needs only the zero-offset tile: one tile per pair.

Public: :func:`cuda_available`, :func:`cntk_gram_cuda`.
"""

from __future__ import annotations

import functools
import logging
import math
import os

import numpy as np

from mnk.kernels._validate import as_images, check_depth

__all__ = ["cuda_available", "cntk_gram_cuda", "KERNEL_SOURCE", "MAX_SIDE"]

log = logging.getLogger(__name__)

#: largest image side handled (lanes of one warp, registers of one thread)
MAX_SIDE = 32

# Bytes of per-tile float64 partial sums allowed for one chunk of pairs.
_PARTIAL_BYTES = 256 * 2**20

KERNEL_SOURCE = r"""
// ---- fused CNTK: one warp = one (pair, cyclic offset) tile through all layers ----
// Compile-time: KH (rows, registers), KW (columns, lanes; KW <= 32),
// ACOS_POLY (1: polynomial arc-cosine, 0: acosf), RSQ_NEWTON (Newton step on rsqrt).
#ifndef KH
#error "define KH"
#endif
#ifndef KW
#error "define KW"
#endif
#ifndef ACOS_POLY
#define ACOS_POLY 1
#endif
#ifndef RSQ_NEWTON
#define RSQ_NEWTON 1
#endif
#ifndef MAXWARPS
#define MAXWARPS 8
#endif

#define TPW (32 / KW)
#define NP (KH * KW)
#define FULLMASK 0xffffffffu

#ifdef MNK_HOST_EMU
static inline float sqrt_approx(float x) { return sqrtf(x); }
static inline float rsqrt_approx(float x) { return 1.0f / sqrtf(x); }
#else
__device__ __forceinline__ float sqrt_approx(float x) {
    float y; asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
}
__device__ __forceinline__ float rsqrt_approx(float x) {
    float y; asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
}
#endif

// k = 1 / (9 pi); pi k = 1/9
#define KINV  0.0353677651315323f
#define NINTH 0.111111111111111111f

// One ReLU step ("trans") for one entry.  S, T in/out; q = Dx(p) Dz(q) (+tiny); self_one = 1
// forces the correlation to 1 (p == q of identical images), else 0.
template <bool SELF>
__device__ __forceinline__ void trans_step(float &S, float &T, float q, float self_one) {
    float r = rsqrt_approx(q);
#if RSQ_NEWTON
    r = r * fmaf(-0.5f * q * r, r, 1.5f);
#endif
    const float c = S * r;
    float a = fminf(fabsf(c), 1.0f);
    if (SELF) a = fmaxf(a, self_one);
#if ACOS_POLY
    // acos(a) / (9 pi) = sqrt(1 - a) * poly(a) / (9 pi), A&S 4.4.46
    float p = -0.0012624911f * KINV;
    p = fmaf(p, a,  0.0066700901f * KINV);
    p = fmaf(p, a, -0.0170881256f * KINV);
    p = fmaf(p, a,  0.0308918810f * KINV);
    p = fmaf(p, a, -0.0501743046f * KINV);
    p = fmaf(p, a,  0.0889789874f * KINV);
    p = fmaf(p, a, -0.2145988016f * KINV);
    p = fmaf(p, a,  1.5707963050f * KINV);
    const float thk = sqrt_approx(1.0f - a) * p;
#else
    const float thk = acosf(a) * KINV;
#endif
    // (pi - acos(c)) / (9 pi)
    const float pmk = (c < 0.0f) ? thk : (NINTH - thk);
    // sin(theta) lx lz = sqrt(q - S^2)
    float w = fmaxf(fmaf(-S, S, q), 0.0f);
    if (SELF) w = w * (1.0f - self_one);
    const float sn = fmaf(S, pmk, sqrt_approx(w) * KINV);
    T = fmaf(T, pmk, sn);
    S = sn;
}

// In place 3x3 box filter of one tile (lane = column, A[x] = row x), cut links masked.
__device__ __forceinline__ void box3(float (&A)[KH], float mup, float mdn, const float (&lm)[KH]) {
#pragma unroll
    for (int x = 0; x < KH; ++x) {
        const float u = __shfl_up_sync(FULLMASK, A[x], 1);
        const float d = __shfl_down_sync(FULLMASK, A[x], 1);
        A[x] = fmaf(mup, u, fmaf(mdn, d, A[x]));
    }
    float prev = 0.0f;
#pragma unroll
    for (int x = 0; x < KH; ++x) {
        const float cur = A[x];
        float o = cur;
        if (x > 0) o = fmaf(lm[x - 1], prev, o);
        if (x < KH - 1) o = fmaf(lm[x], A[x + 1], o);
        A[x] = o;
        prev = cur;
    }
}

// X:   (nx, C, KH, KW) float32          DX:  (nx, depth-1, KH, KW) float32, Sigma^h(x,x)(p,p)
// Z2:  (nz, C, 2KH, KW) float32 (z twice along H)     DZ2: (nz, depth-1, 2KH, KW)
// pi, pj: image indices of each pair; items = pairs x ntiles (ntiles = KH*KW, or 1 = trace)
// partial[item] = sum over the tile of the final Theta (minus Sigma if fix), float64.
template <bool SELF>
__device__ __forceinline__ void cntk_body(
    const float* __restrict__ X, const float* __restrict__ Z2,
    const float* __restrict__ DX, const float* __restrict__ DZ2,
    const int* __restrict__ pi, const int* __restrict__ pj,
    long long nitems, int ntiles, int nch, int depth, int fix,
    double* __restrict__ partial)
{
    __shared__ double red[MAXWARPS][32];
    const int lane = threadIdx.x & 31;
    const int wib = threadIdx.x >> 5;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int sub = lane / KW;
    const int y = lane - sub * KW;
    const long long item = warp * TPW + sub;
    const bool active = (sub < TPW) && (item < nitems);
    const long long it = active ? item : 0;
    const long long pair = it / ntiles;
    const int tile = (int)(it - pair * ntiles);
    const int rx = tile / KW;
    const int ry = tile - rx * KW;
    const int ix = pi[pair];
    const int jz = pj[pair];
    int yz = y + ry;
    if (yz >= KW) yz -= KW;

    // lane-direction links: y-1 <-> y and y <-> y+1 (both pixels inside the image)
    const float mup = (active && y > 0 && yz != 0) ? 1.0f : 0.0f;
    const float mdn = (active && y < KW - 1 && yz != KW - 1) ? 1.0f : 0.0f;
    // register-direction links: x <-> x+1 is cut where z's row wraps (x + 1 == KH - rx)
    const int cut = (rx == 0) ? KH : KH - rx;
    float lm[KH];
#pragma unroll
    for (int x = 0; x < KH; ++x) lm[x] = (x + 1 != cut) ? 1.0f : 0.0f;
    const float self_one = (SELF && tile == 0) ? 1.0f : 0.0f;

    float S[KH], T[KH];
    // layer 0: Sigma^0(p, q) = sum_c x_c(p) z_c(q), then the first conv
    {
        const float* xp = X + (size_t)ix * nch * NP + y;
        const float* zp = Z2 + (size_t)jz * nch * 2 * NP + rx * KW + yz;
#pragma unroll
        for (int x = 0; x < KH; ++x) S[x] = 0.0f;
        for (int ch = 0; ch < nch; ++ch) {
#pragma unroll
            for (int x = 0; x < KH; ++x) S[x] = fmaf(__ldg(xp + x * KW), __ldg(zp + x * KW), S[x]);
            xp += NP;
            zp += 2 * NP;
        }
        if (!active) {
#pragma unroll
            for (int x = 0; x < KH; ++x) S[x] = 0.0f;
        }
    }
    box3(S, mup, mdn, lm);
#pragma unroll
    for (int x = 0; x < KH; ++x) T[x] = fix ? 0.0f : S[x];

    const float* dxp = DX + (size_t)ix * (depth - 1) * NP + y;
    const float* dzp = DZ2 + (size_t)jz * (depth - 1) * 2 * NP + rx * KW + yz;
    for (int l = 0; l < depth - 1; ++l) {
#pragma unroll
        for (int x = 0; x < KH; ++x) {
            const float q = fmaf(__ldg(dxp + x * KW), __ldg(dzp + x * KW), 1e-30f);
            trans_step<SELF>(S[x], T[x], q, self_one);
        }
        if (l < depth - 2) {
            box3(S, mup, mdn, lm);
            box3(T, mup, mdn, lm);
        }
        dxp += NP;
        dzp += 2 * NP;
    }
    double acc = 0.0;
#pragma unroll
    for (int x = 0; x < KH; ++x) acc += (double)(fix ? T[x] - S[x] : T[x]);
    if (!active) acc = 0.0;

    red[wib][lane] = acc;
    __syncwarp();
    if (lane < TPW) {
        const long long itm = warp * TPW + lane;
        if (itm < nitems) {
            double s = 0.0;
            for (int k = 0; k < KW; ++k) s += red[wib][lane * KW + k];
            partial[itm] = s;
        }
    }
}

extern "C" __global__ void __launch_bounds__(MAXWARPS * 32)
cntk_fused(const float* __restrict__ X, const float* __restrict__ Z2,
           const float* __restrict__ DX, const float* __restrict__ DZ2,
           const int* __restrict__ pi, const int* __restrict__ pj,
           long long nitems, int ntiles, int nch, int depth, int fix,
           double* __restrict__ partial)
{
    cntk_body<false>(X, Z2, DX, DZ2, pi, pj, nitems, ntiles, nch, depth, fix, partial);
}

extern "C" __global__ void __launch_bounds__(MAXWARPS * 32)
cntk_fused_self(const float* __restrict__ X, const float* __restrict__ Z2,
                const float* __restrict__ DX, const float* __restrict__ DZ2,
                const int* __restrict__ pi, const int* __restrict__ pj,
                long long nitems, int ntiles, int nch, int depth, int fix,
                double* __restrict__ partial)
{
    cntk_body<true>(X, Z2, DX, DZ2, pi, pj, nitems, ntiles, nch, depth, fix, partial);
}
"""

#: default compile-time variant; see :func:`_module`
DEFAULT_VARIANT = {"ACOS_POLY": 1, "RSQ_NEWTON": 1, "warps": 4}


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device; never raises."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return False


@functools.lru_cache(maxsize=64)
def _module(H: int, W: int, acos_poly: int, rsq_newton: int):
    import cupy as cp

    opts = (
        "-std=c++17",
        f"-DKH={H}",
        f"-DKW={W}",
        f"-DACOS_POLY={int(acos_poly)}",
        f"-DRSQ_NEWTON={int(rsq_newton)}",
        "-DMAXWARPS=8",
    )
    mod = cp.RawModule(code=KERNEL_SOURCE, options=opts)
    return mod.get_function("cntk_fused"), mod.get_function("cntk_fused_self")


def _box3_sum(A):
    """3x3 box sum with zero padding over the last two axes (CuPy or NumPy array)."""
    xp = _xp(A)
    H, W = A.shape[-2:]
    pad = [(0, 0)] * (A.ndim - 2) + [(1, 1), (1, 1)]
    Ap = xp.pad(A, pad)
    out = xp.zeros_like(A)
    for dy in range(3):
        for dx in range(3):
            out += Ap[..., dy : dy + H, dx : dx + W]
    return out


def _xp(A):
    try:
        import cupy as cp

        return cp.get_array_module(A)
    except Exception:  # noqa: BLE001
        return np


def diag_layers(X, depth: int):
    """``D[n, h-1] = Sigma^h(x_n, x_n)(p, p)`` for h = 1..depth-1 (float64, shape (n, depth-1, H, W)).

    ``Sigma^1 = B[sum_c x_c^2]`` and, with c = 1, ``Sigma^{h+1} = B[Sigma^h / 9]``.
    Works on NumPy or CuPy arrays (n, C, H, W).
    """
    xp = _xp(X)
    n, C, H, W = X.shape
    D = xp.empty((n, depth - 1, H, W), dtype=xp.float64)
    A = _box3_sum((X.astype(xp.float64) ** 2).sum(axis=1))
    for h in range(depth - 1):
        D[:, h] = A
        if h < depth - 2:
            A = _box3_sum(A / 9.0)
    return D


def _image_keys(X: np.ndarray, Z: np.ndarray | None):
    ids: dict[bytes, int] = {}
    kx = np.array([ids.setdefault(x.tobytes(), len(ids)) for x in X], dtype=np.int64)
    if Z is None:
        return kx, kx
    kz = np.array([ids.setdefault(z.tobytes(), len(ids)) for z in Z], dtype=np.int64)
    return kx, kz


def _tril_pairs(k0: int, k1: int, xp):
    """(i, j), i > j, for linear indices k0..k1-1 of the strict lower triangle (row-major)."""
    k = xp.arange(k0, k1, dtype=xp.int64)
    i = xp.floor((1.0 + xp.sqrt(1.0 + 8.0 * k.astype(xp.float64))) / 2.0).astype(xp.int64)
    # exact integer fix-up of the float estimate
    i = xp.where(i * (i - 1) // 2 > k, i - 1, i)
    i = xp.where((i + 1) * i // 2 <= k, i + 1, i)
    j = k - i * (i - 1) // 2
    return i.astype(xp.int32), j.astype(xp.int32)


class _Prepared:
    """Device copies of one image set: float32 images and diagonal terms (z layout doubled)."""

    def __init__(self, A: np.ndarray, depth: int, xp, doubled: bool):
        Ad = xp.asarray(A)  # float64
        D = diag_layers(Ad, depth).astype(xp.float32)
        A32 = Ad.astype(xp.float32)
        if doubled:
            A32 = xp.concatenate([A32, A32], axis=2)
            D = xp.concatenate([D, D], axis=2)
        self.img = xp.ascontiguousarray(A32)
        self.diag = xp.ascontiguousarray(D)


def cntk_gram_cuda(
    X,
    Z=None,
    *,
    depth: int,
    gap: bool = True,
    fix: bool = False,
    chunk_pairs: int | None = None,
    progress: bool | None = None,
    variant: dict | None = None,
    _poison: bool = False,
) -> np.ndarray:
    """CNTK Gram matrix on the GPU: float64 array of shape (len(X), len(Z)).

    X, Z: (n, H, W) or (n, C, H, W) float arrays with H, W <= 32 (a wider image with
    H <= 32 is transposed, which leaves the CNTK unchanged).  Z=None: symmetric, only the
    lower triangle is computed and mirrored.  Same semantics as
    :func:`mnk.kernels.cntk_cpu.cntk_gram_cpu`.

    chunk_pairs: pairs per kernel launch (default: 256 MiB of float64 partial sums, 32768
    pairs at 32x32 with gap); progress: tqdm bar over the chunks (default: shown when
    there are more than 4 chunks); variant: compile-time options (see DEFAULT_VARIANT).
    """
    import cupy as cp

    var = dict(DEFAULT_VARIANT)
    var.update(variant or {})

    def kernels(H, W):
        return _module(H, W, int(var["ACOS_POLY"]), int(var["RSQ_NEWTON"]))

    return _gram(X, Z, depth=depth, gap=gap, fix=fix, chunk_pairs=chunk_pairs, progress=progress,
                 warps=int(var["warps"]), poison=_poison, xp=cp, kernels=kernels)


def _gram(X, Z, *, depth, gap, fix, chunk_pairs, progress, warps, poison, xp, kernels):
    """Backend-neutral driver: ``xp`` is CuPy (or NumPy with an emulated kernel in tests);
    ``kernels(H, W)`` returns the (plain, self) launchable kernels."""
    depth = check_depth(depth)
    gap = bool(gap)
    fix = bool(fix)
    X = as_images(X, "X")
    symmetric = Z is None
    Zi = X if symmetric else as_images(Z, "Z")
    if Zi.shape[1:] != X.shape[1:]:
        raise ValueError(f"X and Z must have the same (C, H, W); got {X.shape[1:]} and {Zi.shape[1:]}")
    n, m = len(X), len(Zi)
    K = np.empty((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return K
    _, C, H, W = X.shape
    if W > MAX_SIDE and H <= MAX_SIDE:
        # the CNTK is invariant under transposing both images: put the short side on lanes
        X = np.ascontiguousarray(X.transpose(0, 1, 3, 2))
        Zi = X if symmetric else np.ascontiguousarray(Zi.transpose(0, 1, 3, 2))
        H, W = W, H
    if W > MAX_SIDE or H > MAX_SIDE:
        raise NotImplementedError(
            f"cntk_gram_cuda handles images up to {MAX_SIDE}x{MAX_SIDE} (got {H}x{W}); use the CPU backend"
        )
    if not 1 <= warps <= 8:
        raise ValueError(f"warps per block must be in 1..8, got {warps}")
    kx, kz = _image_keys(X, None if symmetric else Zi)

    # The CNTK is homogeneous of degree 2 in the input scale: work at unit scale so that
    # float32 neither overflows nor underflows, and scale the result back in float64.
    s = max(float(np.max(np.abs(X))), 0.0 if symmetric else float(np.max(np.abs(Zi))))
    if s == 0.0:
        K[:] = 0.0
        return K
    Xs = X / s
    Zs = Xs if symmetric else Zi / s

    kern, kern_self = kernels(H, W)
    px = _Prepared(Xs, depth, xp, doubled=False)
    pz = _Prepared(Zs, depth, xp, doubled=True)

    P = H * W
    ntiles = P if gap else 1
    norm = (s * s) / (float(P) * float(P)) if gap else s * s
    tpw = 32 // W
    if chunk_pairs is None:
        chunk_pairs = max(1, _PARTIAL_BYTES // (8 * ntiles))
    chunk_pairs = int(chunk_pairs)
    if chunk_pairs < 1:
        raise ValueError("chunk_pairs must be >= 1")

    def launch(kfun, pi, pj):
        npairs = int(pi.shape[0])
        nitems = npairs * ntiles
        partial = xp.empty(nitems, dtype=xp.float64)
        if poison:
            partial.fill(np.nan)
        nwarps = -(-nitems // tpw)
        blocks = -(-nwarps // warps)
        kfun(
            (blocks,),
            (32 * warps,),
            (
                px.img, pz.img, px.diag, pz.diag,
                xp.ascontiguousarray(pi, dtype=xp.int32), xp.ascontiguousarray(pj, dtype=xp.int32),
                np.int64(nitems), np.int32(ntiles), np.int32(C), np.int32(depth), np.int32(int(fix)),
                partial,
            ),
        )
        return partial.reshape(npairs, ntiles).sum(axis=1) * norm

    Kd = xp.empty((n, m), dtype=xp.float64)
    if poison:
        Kd.fill(np.nan)

    # main pairs: strict lower triangle (symmetric) or all pairs (cross)
    total = n * (n - 1) // 2 if symmetric else n * m
    starts = list(range(0, total, chunk_pairs))
    show = (len(starts) > 4) if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="pair", desc=f"CNTK cuda {H}x{W} depth {depth}", smoothing=0.1)
    for k0 in starts:
        k1 = min(total, k0 + chunk_pairs)
        if symmetric:
            pi, pj = _tril_pairs(k0, k1, xp)
        else:
            k = xp.arange(k0, k1, dtype=xp.int64)
            pi, pj = (k // m).astype(xp.int32), (k % m).astype(xp.int32)
        Kd[pi, pj] = launch(kern, pi, pj)
        if bar is not None:
            bar.update(k1 - k0)
    if bar is not None:
        bar.close()

    # identical images (the diagonal, duplicates): correlation forced to 1 on p == q
    if symmetric:
        si, sj = np.tril_indices(n)
        same = kx[si] == kx[sj]
        si, sj = si[same], sj[same]
    else:
        pos: dict[int, list[int]] = {}
        for j, key in enumerate(kz):
            pos.setdefault(int(key), []).append(j)
        pairs = [(i, j) for i, key in enumerate(kx) for j in pos.get(int(key), ())]
        si = np.asarray([p[0] for p in pairs], dtype=np.int64)
        sj = np.asarray([p[1] for p in pairs], dtype=np.int64)
    for a in range(0, len(si), chunk_pairs):
        pi = xp.asarray(si[a : a + chunk_pairs], dtype=xp.int32)
        pj = xp.asarray(sj[a : a + chunk_pairs], dtype=xp.int32)
        Kd[pi, pj] = launch(kern_self, pi, pj)

    if symmetric:
        iu = xp.triu_indices(n, 1)
        Kd[iu] = Kd.T[iu]
    K = Kd.get() if hasattr(Kd, "get") else np.asarray(Kd)
    if not poison and not np.all(np.isfinite(K)):
        raise FloatingPointError("cntk_gram_cuda produced non-finite values")
    return K
