"""Fused GPU CNTK (mnk.kernels.cntk_cuda).

Two kinds of tests:

* ``gpu``: on a CUDA GPU with CuPy, the fused kernel against the float64 CPU backend
  (numba) and the direct 4-D reference, for several sizes, depths, gap/fix, channels;
  output buffers poisoned with NaN first.  Skipped cleanly without a GPU (CI).
* host emulation: the very same CUDA source compiled with g++ and run on the CPU, one
  std::thread per lane and a barrier per warp shuffle, through the same Python driver with
  NumPy in place of CuPy.  This checks the tiling, masks and driver logic without a GPU
  (skipped where no C++20 compiler is found).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mnk.kernels import cntk_cuda
from mnk.kernels._validate import as_image_pair
from mnk.kernels.cntk_cuda import cuda_available, kernel_source
from mnk.kernels.reference import cntk_gram_reference

try:
    from mnk.kernels.cntk_cpu import cntk_gram_cpu
except Exception:  # pragma: no cover - the CPU backend is another module
    cntk_gram_cpu = None


# ----------------------------------------------------------------------------- inputs
def random_images(rng, n, C, H, W):
    return rng.standard_normal((n, C, H, W))


def stroke_images(rng, n, size=28, pad=2, C=1):
    """Sparse binary-ish pen strokes (Omniglot-like), zero-padded and standardised."""
    imgs = np.zeros((n, C, size, size))
    for k in range(n):
        for c in range(C):
            for _ in range(rng.integers(1, 4)):
                y, x = rng.uniform(4, size - 4, 2)
                ang = rng.uniform(0, 2 * np.pi)
                for _ in range(rng.integers(8, 30)):
                    ang += rng.normal(0, 0.35)
                    y = float(np.clip(y + 1.2 * np.sin(ang), 1, size - 2))
                    x = float(np.clip(x + 1.2 * np.cos(ang), 1, size - 2))
                    iy, ix = int(y), int(x)
                    imgs[k, c, iy - 1 : iy + 1, ix - 1 : ix + 1] = 1.0
    imgs = np.pad(imgs, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return (imgs - imgs.mean()) / imgs.std()


def rel_err(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


# ------------------------------------------------------------------- host emulation
EMU_SHIM = r"""
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <barrier>
#include <thread>
#include <vector>
#define MNK_HOST_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
struct float2 { float x, y; };
struct double2 { double x, y; };
struct emu_dim { unsigned x; };
static thread_local emu_dim threadIdx, blockIdx;
static emu_dim blockDim;
static std::barrier<>* emu_bar;
static double emu_buf[32];
template <class T> static inline T __ldg(const T* p) { return *p; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline void __syncwarp() { emu_bar->arrive_and_wait(); }
template <class T> static inline T emu_shfl(T v, int src) {
    const int l = threadIdx.x & 31;
    emu_buf[l] = (double)v;
    emu_bar->arrive_and_wait();
    const T r = (T)emu_buf[src];
    emu_bar->arrive_and_wait();
    return r;
}
template <class T> static inline T __shfl_up_sync(unsigned, T v, int d) {
    const int l = threadIdx.x & 31; return emu_shfl(v, l >= d ? l - d : l);
}
template <class T> static inline T __shfl_down_sync(unsigned, T v, int d) {
    const int l = threadIdx.x & 31; return emu_shfl(v, l + d < 32 ? l + d : l);
}
#include "kernel.cu"
extern "C" void emu_launch(int self, int blocks,
    const real* X, const real* Z2, const real2* DX, const real2* DZ2,
    const int* pi, const int* pj, long long nitems, int ntiles, int nch, int depth, int fix,
    double* partial)
{
    std::barrier<> bar(32);
    emu_bar = &bar;
    blockDim.x = 32;
    for (int b = 0; b < blocks; ++b) {
        std::vector<std::thread> th;
        for (int t = 0; t < 32; ++t)
            th.emplace_back([=] {
                threadIdx.x = t; blockIdx.x = b;
                if (self) cntk_fused_self(X, Z2, DX, DZ2, pi, pj, nitems, ntiles, nch, depth, fix, partial);
                else cntk_fused(X, Z2, DX, DZ2, pi, pj, nitems, ntiles, nch, depth, fix, partial);
            });
        for (auto& x : th) x.join();
    }
}
"""


def _cxx():
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


_EMU_CACHE: dict = {}


def emu_kernels(H, W, use_double=False, acos_poly=1):
    """(plain, self) launchables running the CUDA source on the CPU via ctypes."""
    key = (H, W, bool(use_double), acos_poly)
    if key in _EMU_CACHE:
        return _EMU_CACHE[key]
    cxx = _cxx()
    if cxx is None:
        pytest.skip("no C++ compiler for the host emulation")
    tag = hashlib.sha1((EMU_SHIM + kernel_source() + repr(key)).encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / f"mnk_cntk_emu_{tag}"
    lib = d / "emu.so"
    if not lib.exists():
        d.mkdir(parents=True, exist_ok=True)
        (d / "kernel.cu").write_text(kernel_source())
        (d / "emu.cpp").write_text(EMU_SHIM)
        cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-x", "c++",
               f"-DKH={H}", f"-DKW={W}", f"-DACOS_POLY={acos_poly}", f"-DUSE_DOUBLE={int(bool(use_double))}",
               "-DMAXWARPS=8", str(d / "emu.cpp"), "-o", str(d / "emu.tmp.so")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            if "barrier" in res.stderr and "No such file" in res.stderr:
                pytest.skip("C++ compiler lacks <barrier> (C++20)")
            raise RuntimeError("host emulation build failed:\n" + res.stderr[-4000:])
        os.replace(d / "emu.tmp.so", lib)
    so = ctypes.CDLL(str(lib))
    so.emu_launch.restype = None

    def make(self_flag):
        def kfun(grid, block, args):
            assert block == (32,), "emulation runs one warp per block"
            X, Z2, DX, DZ2, pi, pj, nitems, ntiles, nch, depth, fix, partial = args
            arrs = [np.ascontiguousarray(a) for a in (X, Z2, DX, DZ2)]
            pi = np.ascontiguousarray(pi, dtype=np.int32)
            pj = np.ascontiguousarray(pj, dtype=np.int32)
            assert partial.flags.c_contiguous and partial.dtype == np.float64
            ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
            so.emu_launch(ctypes.c_int(self_flag), ctypes.c_int(grid[0]), *[ptr(a) for a in arrs],
                          ptr(pi), ptr(pj), ctypes.c_longlong(int(nitems)), ctypes.c_int(int(ntiles)),
                          ctypes.c_int(int(nch)), ctypes.c_int(int(depth)), ctypes.c_int(int(fix)),
                          ptr(partial))
        return kfun

    _EMU_CACHE[key] = (make(0), make(1))
    return _EMU_CACHE[key]


def emu_gram(X, Z=None, *, depth, gap=True, fix=False, chunk_pairs=None, poison=True, trace_double=True):
    """The GPU driver (cntk_cuda.gram_prepared) with NumPy and the emulated kernel."""
    X, Zi, symmetric = as_image_pair(X, Z)
    runner = cntk_cuda.Runner(np, emu_kernels, warps=1, trace_double=trace_double, chunk_pairs=chunk_pairs,
                              progress=False, poison=poison)
    return cntk_cuda.gram_prepared(X, Zi, symmetric, depth=depth, gap=gap, fix=fix, runner=runner)


EMU_CASES = [
    # (H, W, C, depth, gap, fix)
    (6, 6, 1, 3, True, False),
    (5, 7, 2, 4, True, True),
    (7, 5, 3, 3, False, False),
    (4, 16, 1, 5, True, False),
    (6, 6, 1, 3, False, True),
]


@pytest.mark.parametrize("H,W,C,depth,gap,fix", EMU_CASES)
def test_host_emulation_matches_reference(H, W, C, depth, gap, fix):
    rng = np.random.default_rng(H * 100 + W * 10 + depth)
    X = random_images(rng, 3, C, H, W)
    Z = random_images(rng, 2, C, H, W)
    Z[1] = X[0]  # an identical image in the cross Gram: correlation forced to 1 on p == q
    ref = cntk_gram_reference(X, Z, depth=depth, gap=gap, fix=fix)
    got = emu_gram(X, Z, depth=depth, gap=gap, fix=fix, chunk_pairs=4)
    assert np.all(np.isfinite(got)), "an output element was not written"
    assert rel_err(got, ref) < 2e-5


def test_host_emulation_symmetric_and_zero_patches():
    rng = np.random.default_rng(7)
    X = random_images(rng, 4, 1, 6, 6)
    X[1, :, :, :3] = 0.0  # zero variance in part of the image (correlation 0, no NaN)
    X[3] = X[0]
    ref = cntk_gram_reference(X, depth=4, gap=True, fix=False)
    got = emu_gram(X, depth=4, gap=True, fix=False, chunk_pairs=2)
    assert np.allclose(got, got.T)
    assert rel_err(got, ref) < 2e-5


@pytest.mark.parametrize("depth", [4, 8])
def test_host_emulation_strokes_trace_float32(depth):
    """Blank background in both images: exactly correlated patches must keep theta = 0
    (the float32 path, forced here on the zero-offset tile alone)."""
    rng = np.random.default_rng(depth)
    X = stroke_images(rng, 3, size=8, pad=2)
    Z = stroke_images(rng, 2, size=8, pad=2)  # standardised separately: other background value
    ref = cntk_gram_reference(X, Z, depth=depth, gap=False, fix=False)
    got = emu_gram(X, Z, depth=depth, gap=False, trace_double=False)
    assert rel_err(got, ref) < 2e-6


@pytest.mark.parametrize("fix", [False, True])
def test_host_emulation_trace_float64(fix):
    rng = np.random.default_rng(12)
    X = stroke_images(rng, 3, size=10, pad=2)
    Z = stroke_images(rng, 2, size=10, pad=2)
    Z[1] = X[2]
    ref = cntk_gram_reference(X, Z, depth=7, gap=False, fix=fix)
    got = emu_gram(X, Z, depth=7, gap=False, fix=fix)
    assert rel_err(got, ref) < 1e-8  # float64: arccos near 1 alone differs by ~1e-9


def test_tril_pairs_cover_strict_lower_triangle():
    n = 57
    total = n * (n - 1) // 2
    i, j = cntk_cuda._tril_pairs(0, total, np)
    ii, jj = np.tril_indices(n, -1)
    assert np.array_equal(i, ii) and np.array_equal(j, jj)
    i, j = cntk_cuda._tril_pairs(10**9, 10**9 + 1000, np)
    k = np.arange(10**9, 10**9 + 1000)
    assert np.all(i > j) and np.all(j >= 0) and np.array_equal(i.astype(np.int64) * (i - 1) // 2 + j, k)


def test_layer_variances_match_cpu_norms():
    if cntk_gram_cpu is None:
        pytest.skip("CPU backend not importable")
    from mnk.kernels.cntk_cpu import layer_norms

    rng = np.random.default_rng(3)
    X = random_images(rng, 3, 2, 7, 6)
    D = cntk_cuda.layer_variances(X, 5)
    L, _ = layer_norms(X, 5)
    assert np.allclose(D, L**2, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------- GPU
gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU with CuPy")

GPU_CASES = [
    # (H, W, C, depth, gap, fix, kind)
    (6, 6, 1, 3, True, False, "random"),
    (8, 8, 3, 4, True, True, "random"),
    (7, 5, 2, 6, False, False, "random"),
    (16, 16, 1, 6, True, False, "random"),
    (16, 16, 3, 3, False, True, "random"),
    (28, 28, 1, 20, True, False, "strokes"),
    (32, 32, 1, 20, True, False, "strokes"),
    (32, 32, 1, 20, False, False, "strokes"),
    (32, 32, 1, 5, True, True, "strokes"),
    (32, 32, 3, 10, True, False, "random"),
]


def _inputs(kind, rng, n, C, H, W):
    if kind == "strokes":
        assert C == 1
        return stroke_images(rng, n, size=H - 4, pad=2) if H == 32 else stroke_images(rng, n, size=H, pad=0)
    return random_images(rng, n, C, H, W)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("H,W,C,depth,gap,fix,kind", GPU_CASES)
def test_gpu_matches_cpu_backend(H, W, C, depth, gap, fix, kind):
    rng = np.random.default_rng(1000 + H * 7 + depth)
    X = _inputs(kind, rng, 4, C, H, W)
    Z = _inputs(kind, rng, 3, C, H, W)
    if cntk_gram_cpu is not None:
        ref = cntk_gram_cpu(X, Z, depth=depth, gap=gap, fix=fix)
    else:
        ref = cntk_gram_reference(X, Z, depth=depth, gap=gap, fix=fix)
    got = cntk_cuda.cntk_gram_cuda(X, Z, depth=depth, gap=gap, fix=fix, _poison=True)
    assert np.all(np.isfinite(got)), "NaN left in the output: an element was not written"
    err = rel_err(got, ref)
    print(f"GPUCHECK {H}x{W} C={C} depth={depth} gap={gap} fix={fix} {kind}: max rel err {err:.2e}")
    assert err <= 1e-5


@pytest.mark.gpu
@gpu
def test_gpu_matches_direct_reference_small():
    rng = np.random.default_rng(11)
    X = random_images(rng, 3, 2, 6, 7)
    for gap in (True, False):
        for fix in (True, False):
            ref = cntk_gram_reference(X, depth=4, gap=gap, fix=fix)
            got = cntk_cuda.cntk_gram_cuda(X, depth=4, gap=gap, fix=fix, _poison=True)
            assert np.all(np.isfinite(got))
            off = ~np.eye(3, dtype=bool)
            assert rel_err(got[off], ref[off]) <= 1e-5
            assert rel_err(np.diag(got), np.diag(ref)) <= 1e-5


@pytest.mark.gpu
@gpu
def test_gpu_symmetric_gram_chunked_poisoned():
    rng = np.random.default_rng(5)
    X = stroke_images(rng, 40, size=12, pad=2)
    X[7] = X[3]  # duplicate image
    X[9, :, :8] = 0.0
    full = cntk_cuda.cntk_gram_cuda(X, depth=6, gap=True, _poison=True)
    chunked = cntk_cuda.cntk_gram_cuda(X, depth=6, gap=True, chunk_pairs=37, _poison=True)
    assert np.all(np.isfinite(full)) and np.all(np.isfinite(chunked))
    assert np.allclose(full, chunked, rtol=1e-12, atol=0)  # same per-tile partial sums
    assert np.array_equal(full, full.T)
    sub = [0, 3, 7, 9, 20]
    ref = cntk_gram_cpu(X[sub], depth=6, gap=True) if cntk_gram_cpu else cntk_gram_reference(X[sub], depth=6, gap=True, fix=False)
    assert rel_err(full[np.ix_(sub, sub)], ref) <= 1e-5
    assert np.linalg.eigvalsh(full).min() > -1e-6 * np.abs(full).max()


@pytest.mark.gpu
@gpu
def test_gpu_edge_inputs_and_dispatcher():
    assert np.array_equal(cntk_cuda.cntk_gram_cuda(np.zeros((2, 1, 8, 8)), depth=3), np.zeros((2, 2)))
    with pytest.raises(NotImplementedError):
        cntk_cuda.cntk_gram_cuda(np.ones((1, 1, 5, 40)), depth=3)
    with pytest.raises(ValueError):
        cntk_cuda.cntk_gram_cuda(np.full((1, 1, 8, 8), np.nan), depth=3)
    # large input scale (pixel values 0..255) and (n, H, W) input without a channel axis
    rng = np.random.default_rng(4)
    X = rng.integers(0, 256, size=(3, 10, 9)).astype(np.float64)
    ref = cntk_gram_cpu(X, depth=5) if cntk_gram_cpu else cntk_gram_reference(X, depth=5, gap=True, fix=False)
    assert rel_err(cntk_cuda.cntk_gram_cuda(X, depth=5), ref) <= 1e-5
    from mnk.kernels.gram import cntk_gram

    assert rel_err(cntk_gram(X, depth=5, backend="cuda"), ref) <= 1e-5


def test_cuda_available_never_raises():
    assert cuda_available() in (True, False)
    assert cntk_cuda.supports_shape(32, 32) and cntk_cuda.supports_shape(3, 7)
    assert not cntk_cuda.supports_shape(33, 8)
