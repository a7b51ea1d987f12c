r"""Fused GPU CNTK (CuPy): all layers of many image pairs in one kernel launch.

Semantics are those of :mod:`mnk.kernels.cntk_cpu` (Arora et al. 2019, ``ruosongwang/CNTK``):
same recursion, same constants, correlation 0 where a variance is 0, correlation forced to 1
on the p == q diagonal of bitwise-identical images.  With ``gap=True`` the arithmetic is
float32 (the original code's) and the final sum over the P x P entries is accumulated in
float64 (measured relative error vs the float64 CPU backend <= 3e-7 at 32x32, depth 20, on
stroke images); ``gap=False`` (trace) needs only the P zero-offset entries per layer, so it
runs the same kernel in float64 (float32 there reached ~1e-5 on stroke images: no averaging
over offsets hides the rounding floor of correlations close to 1).

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
diagonal terms l = sqrt(Sigma^h(x, x)(p, p)) and 1/l are computed once per image and
layer (O(depth P), float64 on the GPU from the float32 images, stored as float2) and read
through L1, so the correlation is two multiplications; the z image and its norms are
stored twice along H so the row index p_x + rx needs no modulo.  With u = 1 - |c|, the
arc-cosine is sqrt(u) times a degree-6 minimax polynomial in u (|error| < 1e-7 rad,
1/(9 pi) folded into its coefficients) and sin(theta) = sqrt(u (2 - u)), so theta and
sin(theta) are consistent; u below 2^-21 (float32 rounding noise of c) counts as 0, so
exactly correlated patches (blank background in both images) keep theta = 0 instead of
~5e-4.  sqrt is the hardware approximation.  Each warp writes one float64 partial sum per
tile (the buffer is poisoned with NaN beforehand when asked) and CuPy sums the tiles of
each pair in float64.

``gap=False`` (trace) needs only the zero-offset tile: one tile per pair, in float64.

Measured (H200, 2026-11-26, ``benchmarks/bench_cntk_gpu.py``): 33 us per pair at 32x32,
depth 20, gap (54x the per-layer CuPy baseline, 1.2x the operation-count floor); a
symmetric Gram of 2,000 such images end to end in 64 s.

Public: :func:`cuda_available` (why not: :func:`cuda_unavailable_reason`), :func:`cntk_gram_cuda`, :func:`supports_shape`,
:func:`layer_variances`.  The CUDA source is the file ``cntk_cuda.cu`` (:func:`kernel_source`; compiled by NVRTC
through CuPy at first use, one module per image size, cached per process).
"""

from __future__ import annotations

import functools
import logging
import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnk.kernels._validate import as_image_pair, check_depth, image_keys as _image_keys
from mnk.infra.progress import progress_bar

__all__ = ["cuda_available", "cuda_unavailable_reason", "cntk_gram_cuda", "supports_shape", "layer_variances", "kernel_source", "MAX_SIDE"]

log = logging.getLogger(__name__)

#: largest image side handled (lanes of one warp, registers of one thread)
MAX_SIDE = 32

# Bytes of per-tile float64 partial sums allowed for one chunk of pairs.
_PARTIAL_BYTES = 256 * 2**20

KERNEL_PATH = Path(__file__).with_name("cntk_cuda.cu")  # package data (pyproject.toml); in code hashes


@functools.lru_cache(maxsize=1)
def kernel_source() -> str:
    """The CUDA source of the fused kernel (:data:`KERNEL_PATH`)."""
    return KERNEL_PATH.read_text()

#: default compile-time variant; see :func:`_module`
DEFAULT_VARIANT = {"ACOS_POLY": 1, "warps": 4, "trace_double": True}


@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason() -> str:
    """Why the CUDA backend cannot run here ("" when it can); never raises.

    Checked in order: CuPy importable, an NVIDIA driver, a driver for CUDA at least as new as
    the major version CuPy was built for, at least one visible device."""
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - ImportError, or a CUDA library failing to load
        return (f"CuPy is not importable ({type(exc).__name__}: {exc}); with --use-conda the GPU jobs "
                "use envs/kernels-cuda12.yaml (config `cuda: 12|13`), else pip install 'cupy-cuda12x[ctk]'")
    runtime = cupy.cuda.runtime
    try:
        driver = int(runtime.driverGetVersion())
    except Exception as exc:  # noqa: BLE001
        return f"no usable NVIDIA driver ({type(exc).__name__}: {exc})"
    if driver == 0:
        return "no NVIDIA driver (CuPy imports, but the CUDA driver API reports none)"
    try:
        built = int(runtime.runtimeGetVersion())
    except Exception:  # noqa: BLE001 - older CuPy: skip the version comparison
        built = 0
    if driver // 1000 < built // 1000:
        return (f"the NVIDIA driver is too old: it supports CUDA {driver // 1000}.{driver % 1000 // 10}, "
                f"CuPy is built for CUDA {built // 1000}.{built % 1000 // 10} (update the driver, or use a "
                "CuPy for an older CUDA, e.g. config `cuda: 12`)")
    try:
        count = int(runtime.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - cudaErrorNoDevice, cudaErrorInsufficientDriver, ...
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if count == 0:
        import os

        return f"no CUDA device visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
    return ""


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device; never raises.
    Why not: :func:`cuda_unavailable_reason`."""
    return not cuda_unavailable_reason()


def supports_shape(H: int, W: int) -> bool:
    """Whether the fused kernel handles H x W images (one warp's lanes = W, registers = H)."""
    return 1 <= int(H) <= MAX_SIDE and 1 <= int(W) <= MAX_SIDE


@functools.lru_cache(maxsize=64)
def _module(H: int, W: int, acos_poly: int, use_double: bool = False):
    import cupy as cp

    opts = (
        "-std=c++17",
        f"-DKH={H}",
        f"-DKW={W}",
        f"-DACOS_POLY={int(acos_poly)}",
        f"-DUSE_DOUBLE={int(bool(use_double))}",
        "-DMAXWARPS=8",
    )
    log.debug("compiling the fused CNTK kernel: %s", " ".join(opts))
    mod = cp.RawModule(code=kernel_source(), options=opts)
    return mod.get_function("cntk_fused"), mod.get_function("cntk_fused_self")


def _box3(A):
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


def layer_variances(X, depth: int):
    """``D[n, h-1] = Sigma^h(x_n, x_n)(p, p)`` for h = 1..depth-1 (float64, shape (n, depth-1, H, W)).

    ``Sigma^1 = B[sum_c x_c^2]`` and, with c = 1, ``Sigma^{h+1} = B[Sigma^h / 9]``.
    Works on NumPy or CuPy arrays (n, C, H, W).
    """
    xp = _xp(X)
    n, C, H, W = X.shape
    D = xp.empty((n, depth - 1, H, W), dtype=xp.float64)
    A = _box3((X.astype(xp.float64) ** 2).sum(axis=1))
    for h in range(depth - 1):
        D[:, h] = A
        if h < depth - 2:
            A = _box3(A / 9.0)
    return D


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
    """Device copies of one image set: images and per-layer norms as pairs
    ``(scale * l, 1/l or 0)``, ``l = sqrt(Sigma^h(x, x)(p, p))``, in ``dtype`` (float32, or
    float64 for the trace); the z layout is doubled along H."""

    def __init__(self, A: np.ndarray, depth: int, xp, doubled: bool, scale: float, dtype):
        A32 = xp.asarray(A).astype(dtype)
        # norms from the (float32) images the kernel sees, in float64
        D64 = layer_variances(A32.astype(xp.float64), depth)
        L = xp.sqrt(D64)
        iL = xp.zeros_like(L)
        pos = L > 0
        iL[pos] = 1.0 / L[pos]
        N = xp.stack([L * scale, iL], axis=-1).astype(dtype)
        del D64, L, iL, pos
        if doubled:
            A32 = xp.concatenate([A32, A32], axis=2)
            N = xp.concatenate([N, N], axis=2)
        self.img = xp.ascontiguousarray(A32)
        self.diag = xp.ascontiguousarray(N)


def cntk_gram_cuda(X, Z=None, *, depth: int, gap: bool = True, fix: bool = False, chunk_pairs: int | None = None,
                   progress: bool | None = None, variant: dict | None = None, _poison: bool = False) -> np.ndarray:
    """CNTK Gram matrix on the GPU: float64 array of shape (len(X), len(Z)).

    X, Z: (n, H, W) or (n, C, H, W) float arrays, 3 <= H, W <= 32 (see
    :func:`supports_shape`; larger images raise NotImplementedError), validated here (the
    public entry, :func:`mnk.kernels.cntk_gram`, validates once and calls
    :func:`gram_prepared`).  Z=None: symmetric, only the lower triangle is computed and
    mirrored.  Same semantics as :func:`mnk.kernels.cntk_cpu.cntk_gram_cpu`.

    chunk_pairs: pairs per kernel launch (default: 256 MiB of float64 partial sums, 32768
    pairs at 32x32 with gap); progress: tqdm bar over the chunks (default: shown when
    there are more than 4 chunks); variant: options (see DEFAULT_VARIANT): ``ACOS_POLY``
    (1: polynomial arc-cosine, 0: CUDA's acosf, 45% slower), ``warps`` per block (1..8),
    ``trace_double`` (gap=False in float64).
    """
    depth = check_depth(depth)
    X, Zi, symmetric = as_image_pair(X, Z)
    runner = cupy_runner(variant, chunk_pairs=chunk_pairs, progress=progress, poison=_poison)
    return gram_prepared(X, Zi, symmetric, depth=depth, gap=bool(gap), fix=bool(fix), runner=runner)


@dataclass(frozen=True)
class Runner:
    """How the fused kernel runs: on CuPy with NVRTC modules (:func:`cupy_runner`), or on
    NumPy with the tests' host emulation; launch geometry, chunking, progress, NaN poison."""

    xp: Any  # CuPy, or NumPy with an emulated kernel
    kernels: Callable  # (H, W, use_double) -> the (plain, self) launchable kernels
    warps: int = 4  # per block
    trace_double: bool = True  # gap=False in float64
    chunk_pairs: int | None = None
    progress: bool | None = None
    poison: bool = False  # fill output buffers with NaN first (tests)


def cupy_runner(variant: dict | None = None, **settings) -> Runner:
    """The GPU Runner of a compile-time variant (:data:`DEFAULT_VARIANT` overridden by `variant`)."""
    import cupy as cp

    var = {**DEFAULT_VARIANT, **(variant or {})}
    kernels = functools.partial(_variant_module, int(var["ACOS_POLY"]))
    return Runner(cp, kernels, warps=int(var["warps"]), trace_double=bool(var["trace_double"]), **settings)


def _variant_module(acos_poly: int, H: int, W: int, use_double: bool):
    return _module(H, W, acos_poly, bool(use_double))


@dataclass(frozen=True)
class _Launch:
    """What every launch of one Gram computation shares (prepared images, geometry)."""

    px: "_Prepared"
    pz: "_Prepared"
    xp: object
    ntiles: int
    tpw: int  # items (tiles) per warp
    warps: int
    channels: int
    depth: int
    fix: bool
    norm: float
    poison: bool

    def __call__(self, kfun, pi, pj):
        """Kernel values of the pairs (pi, pj): one launch, tiles summed, scaled back."""
        xp = self.xp
        npairs = int(pi.shape[0])
        nitems = npairs * self.ntiles
        partial = xp.empty(nitems, dtype=xp.float64)
        if self.poison:
            partial.fill(np.nan)
        nwarps = -(-nitems // self.tpw)  # ceiling divisions
        blocks = -(-nwarps // self.warps)
        args = (self.px.img, self.pz.img, self.px.diag, self.pz.diag,
                xp.ascontiguousarray(pi, dtype=xp.int32), xp.ascontiguousarray(pj, dtype=xp.int32),
                np.int64(nitems), np.int32(self.ntiles), np.int32(self.channels), np.int32(self.depth),
                np.int32(int(self.fix)), partial)
        kfun((blocks,), (32 * self.warps,), args)
        return partial.reshape(npairs, self.ntiles).sum(axis=1) * self.norm


def _check_shape(H: int, W: int, warps: int) -> None:
    if not supports_shape(H, W):
        raise NotImplementedError(
            f"cntk_gram_cuda handles images up to {MAX_SIDE}x{MAX_SIDE} (got {H}x{W}); use the CPU backend"
        )
    if not 1 <= warps <= 8:
        raise ValueError(f"warps per block must be in 1..8, got {warps}")


def _chunk_size(chunk_pairs, ntiles: int) -> int:
    chunk_pairs = max(1, _PARTIAL_BYTES // (8 * ntiles)) if chunk_pairs is None else int(chunk_pairs)
    if chunk_pairs < 1:
        raise ValueError("chunk_pairs must be >= 1")
    return chunk_pairs


def _main_pairs(launch: _Launch, kern, Kd, n: int, m: int, symmetric: bool, chunk_pairs: int, progress, desc):
    """All pairs but identical images: the strict lower triangle (symmetric) or all of n x m."""
    xp = launch.xp
    total = n * (n - 1) // 2 if symmetric else n * m
    starts = list(range(0, total, chunk_pairs))
    show = (len(starts) > 4) if progress is None else bool(progress)
    bar = progress_bar(total, desc, unit="pair") if show else None
    for k0 in starts:
        k1 = min(total, k0 + chunk_pairs)
        if symmetric:
            pi, pj = _tril_pairs(k0, k1, xp)
        else:
            k = xp.arange(k0, k1, dtype=xp.int64)
            pi, pj = (k // m).astype(xp.int32), (k % m).astype(xp.int32)
        Kd[pi, pj] = launch(kern, pi, pj)
        if bar is not None:
            if hasattr(xp, "cuda"):
                xp.cuda.get_current_stream().synchronize()  # so the bar shows finished pairs
            bar.update(k1 - k0)
    if bar is not None:
        bar.close()


def _identical_pairs(launch: _Launch, kern_self, Kd, kx, kz, symmetric: bool, chunk_pairs: int):
    """Identical images (the diagonal, duplicates): correlation forced to 1 on p == q."""
    xp = launch.xp
    pos: dict[int, list[int]] = {}
    for j, key in enumerate(kz):
        pos.setdefault(int(key), []).append(j)
    pairs = [(i, j) for i, key in enumerate(kx) for j in pos.get(int(key), ()) if not symmetric or j <= i]
    si = np.asarray([p[0] for p in pairs], dtype=np.int64)
    sj = np.asarray([p[1] for p in pairs], dtype=np.int64)
    for a in range(0, len(si), chunk_pairs):
        pi = xp.asarray(si[a : a + chunk_pairs], dtype=xp.int32)
        pj = xp.asarray(sj[a : a + chunk_pairs], dtype=xp.int32)
        Kd[pi, pj] = launch(kern_self, pi, pj)


def gram_prepared(X: np.ndarray, Zi: np.ndarray, symmetric: bool, *, depth: int, gap: bool, fix: bool,
                  runner: Runner) -> np.ndarray:
    """:func:`cntk_gram_cuda` on validated float64 (n, C, H, W) inputs (Zi is X if symmetric),
    run by ``runner``."""
    xp = runner.xp
    n, m = len(X), len(Zi)
    if n == 0 or m == 0:
        return np.empty((n, m), dtype=np.float64)
    _, C, H, W = X.shape
    _check_shape(H, W, runner.warps)
    kx, kz = _image_keys(X, None if symmetric else Zi)

    # The CNTK is homogeneous of degree 2 in the input scale: work at unit scale so that
    # float32 neither overflows nor underflows, and scale the result back in float64.
    s = max(float(np.max(np.abs(X))), 0.0 if symmetric else float(np.max(np.abs(Zi))))
    if s == 0.0:
        return np.zeros((n, m), dtype=np.float64)
    Xs = X / s
    Zs = Xs if symmetric else Zi / s

    # gap=False needs only the zero-offset tile (P entries per layer, not P^2): there the
    # float32 rounding floor of the correlation (~1e-5 relative on stroke images, since
    # the trace does not average over offsets) is not worth it, and float64 costs nothing.
    use_double = (not gap) and runner.trace_double
    kern, kern_self = runner.kernels(H, W, use_double)
    dtype = xp.float64 if use_double else xp.float32
    P = H * W
    ntiles = P if gap else 1
    launch = _Launch(
        px=_Prepared(Xs, depth, xp, doubled=False, scale=1.0 / (9.0 * math.pi), dtype=dtype),
        pz=_Prepared(Zs, depth, xp, doubled=True, scale=1.0, dtype=dtype),
        xp=xp, ntiles=ntiles, tpw=32 // W, warps=runner.warps, channels=C, depth=depth, fix=fix,
        norm=(s * s) / (float(P) * float(P)) if gap else s * s, poison=runner.poison,
    )
    chunk_pairs = _chunk_size(runner.chunk_pairs, ntiles)
    Kd = xp.empty((n, m), dtype=xp.float64)
    if runner.poison:
        Kd.fill(np.nan)
    _main_pairs(launch, kern, Kd, n, m, symmetric, chunk_pairs, runner.progress, f"CNTK cuda {H}x{W} depth {depth}")
    _identical_pairs(launch, kern_self, Kd, kx, kz, symmetric, chunk_pairs)
    if symmetric:
        iu = xp.triu_indices(n, 1)
        Kd[iu] = Kd.T[iu]
    K = Kd.get() if hasattr(Kd, "get") else np.asarray(Kd)
    if not runner.poison and not np.all(np.isfinite(K)):
        raise FloatingPointError("cntk_gram_cuda produced non-finite values")
    return K
