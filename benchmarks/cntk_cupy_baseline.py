"""Per-layer CuPy CNTK: the structure of the original code, as the GPU baseline.

A transcription of Arora et al.'s ``CNTK.py`` (``ruosongwang/CNTK``: ``conv3``, ``trans``,
``xz``) generalised from 32x32 to H x W <= 32x32 and given the project's zero-variance
rule (correlation 0 where a variance is 0).  One pair at a time, the full
(H, W, H, W) float32 tensors Sigma and Theta live in GPU memory, and every layer is a
launch of ``trans`` plus one ``conv3`` launch per box filter (one thread block per offset
slice).  The per-image norms ``L = sqrt(Sigma(x, x)(p, p))`` come precomputed, as the
original's ``xx`` did once per image; only the per-pair ``xz`` is timed.

    python benchmarks/cntk_cupy_baseline.py          # small self-check against the CPU backend
"""

from __future__ import annotations

import numpy as np

_CONV3 = r"""
extern "C" __global__ void conv3(const float* s, float* t)
{
    // block = one offset (r1, r2) of the 4-D tensor; thread = (x2, y2) position of z
    const int x2 = threadIdx.x, y2 = threadIdx.y;
    const int x1 = x2 + (int)blockIdx.x - (KH - 1);
    const int y1 = y2 + (int)blockIdx.y - (KW - 1);
    __shared__ float d[KH + 2][KW + 2];
    for (int k = threadIdx.y * KH + threadIdx.x; k < (KH + 2) * (KW + 2); k += KH * KW)
        d[k / (KW + 2)][k % (KW + 2)] = 0.0f;
    __syncthreads();
    const bool ok = x1 >= 0 && x1 < KH && y1 >= 0 && y1 < KW;
    if (ok) d[x2 + 1][y2 + 1] = s[((x1 * KW + y1) * KH + x2) * KW + y2];
    __syncthreads();
    if (ok)
        t[((x1 * KW + y1) * KH + x2) * KW + y2] =
              d[x2][y2] + d[x2][y2 + 1] + d[x2][y2 + 2]
            + d[x2 + 1][y2] + d[x2 + 1][y2 + 1] + d[x2 + 1][y2 + 2]
            + d[x2 + 2][y2] + d[x2 + 2][y2 + 1] + d[x2 + 2][y2 + 2];
}

extern "C" __global__ void trans(float* s, float* t, const float* l, const float* r,
                                 const float* il, const float* ir)
{
    const int NPX = KH * KW;
    const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long long)NPX * NPX) return;
    const int p1 = (int)(k / NPX), p2 = (int)(k % NPX);
    float S = s[k], T = t[k];
    const float L = l[p1], R = r[p2], iL = il[p1], iR = ir[p2];
    S = S * iL * iR;
    S = fmaxf(fminf(S, 1.0f), -1.0f);
    const float BS = (S * (3.141592654f - acosf(S)) + sqrtf(1.0f - S * S)) * L * R / 28.274333882308138f;
    const float D = (3.141592654f - acosf(S)) / 28.274333882308138f;
    t[k] = T * D + BS;
    s[k] = BS;
}
"""


class PerLayerCNTK:
    """The original per-layer structure for one image size (H, W <= 32)."""

    def __init__(self, H: int, W: int):
        import cupy as cp

        if H * W > 1024:
            raise ValueError("conv3 uses one thread per pixel: H*W <= 1024")
        self.H, self.W, self.P = H, W, H * W
        mod = cp.RawModule(code=_CONV3, options=(f"-DKH={H}", f"-DKW={W}"))
        self._conv3 = mod.get_function("conv3")
        self._trans = mod.get_function("trans")
        self.cp = cp

    def conv3(self, S):
        self._conv3((2 * self.H - 1, 2 * self.W - 1), (self.H, self.W), (S, S))

    def trans(self, S, T, L, R, iL, iR):
        n = self.P * self.P
        self._trans(((n + 255) // 256,), (256,), (S, T, L, R, iL, iR))

    def norms(self, X, depth):
        """Per-image, per-layer (L, 1/L) as float32 device arrays (n, depth-1, P)."""
        from mnk.kernels.cntk_cuda import layer_variances

        cp = self.cp
        D = layer_variances(cp.asarray(X, dtype=cp.float64), depth)
        L = cp.sqrt(D)
        iL = cp.where(L > 0, 1.0 / cp.where(L > 0, L, 1.0), 0.0)
        n = len(X)
        return (L.astype(cp.float32).reshape(n, depth - 1, self.P),
                iL.astype(cp.float32).reshape(n, depth - 1, self.P))

    def xz(self, x, z, Lx, Lz, iLx, iLz, *, depth, gap, fix):
        """K(x, z) for device images x, z (C, H, W) float32: Arora's ``xz``; returns a 0-d array."""
        cp = self.cp
        C = x.shape[0]
        S = cp.matmul(x.reshape(C, self.P).T, z.reshape(C, self.P))
        S = cp.ascontiguousarray(S)
        self.conv3(S)
        T = cp.zeros_like(S) if fix else S.copy()
        for i in range(1, depth - 1):
            self.trans(S, T, Lx[i - 1], Lz[i - 1], iLx[i - 1], iLz[i - 1])
            self.conv3(S)
            self.conv3(T)
        self.trans(S, T, Lx[-1], Lz[-1], iLx[-1], iLz[-1])
        if fix:
            T -= S
        return cp.mean(T) if gap else cp.trace(T)

    def pairs(self, X, Z, pairs, *, depth, gap, fix):
        """K for a list of (i, j) pairs, one pair at a time; float64 numpy array."""
        cp = self.cp
        Xd = cp.asarray(X, dtype=cp.float32)
        Zd = cp.asarray(Z, dtype=cp.float32)
        LX, iLX = self.norms(X, depth)
        LZ, iLZ = self.norms(Z, depth)
        out = [self.xz(Xd[i], Zd[j], LX[i], LZ[j], iLX[i], iLZ[j], depth=depth, gap=gap, fix=fix)
               for i, j in pairs]
        return np.array([float(v) for v in out])


if __name__ == "__main__":  # pragma: no cover - needs a GPU
    from mnk.kernels.cntk_cpu import cntk_gram_cpu

    rng = np.random.default_rng(0)
    for H, W, depth, gap, fix in [(8, 8, 4, True, False), (6, 5, 3, False, True), (16, 16, 6, True, False)]:
        X = rng.standard_normal((3, 2, H, W))
        ref = cntk_gram_cpu(X, X[::-1].copy(), depth=depth, gap=gap, fix=fix)
        base = PerLayerCNTK(H, W).pairs(X, X[::-1].copy(), [(0, 0), (0, 1), (2, 1)], depth=depth, gap=gap, fix=fix)
        want = np.array([ref[0, 0], ref[0, 1], ref[2, 1]])
        print(H, W, depth, gap, fix, "max rel err", np.max(np.abs(base - want) / np.abs(want)))
