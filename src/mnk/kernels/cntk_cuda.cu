// Fused CNTK kernel of mnk.kernels.cntk_cuda (which explains the layout), compiled by NVRTC
// through CuPy at first use, one module per image size.
// ---- fused CNTK: one warp = one (pair, cyclic offset) tile through all layers ----
// Compile-time: KH (rows, registers), KW (columns, lanes; KW <= 32),
// ACOS_POLY (1: polynomial arc-cosine, 0: acosf), MAXWARPS (warps per block, at most),
// USE_DOUBLE (1: all arithmetic in float64, used for the cheap trace/no-gap case).
#ifndef KH
#error "define KH"
#endif
#ifndef KW
#error "define KW"
#endif
#ifndef ACOS_POLY
#define ACOS_POLY 1
#endif
#ifndef MAXWARPS
#define MAXWARPS 8
#endif
#ifndef USE_DOUBLE
#define USE_DOUBLE 0
#endif

#define TPW (32 / KW)
#define NP (KH * KW)
#define FULLMASK 0xffffffffu

#ifdef MNK_HOST_EMU
static inline float sqrt_approx(float x) { return sqrtf(x); }
#else
__device__ __forceinline__ float sqrt_approx(float x) {
    float y; asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
}
#endif

#if USE_DOUBLE
typedef double real;
typedef double2 real2;
#define RL(x) (x)
#define RFMA(a, b, c) fma(a, b, c)
#define RSQRT(x) sqrt(x)
#define RSAT(x) fmin(fmax(x, 0.0), 1.0)
#define RABS(x) fabs(x)
#define SNAP_R 0.0
#else
typedef float real;
typedef float2 real2;
#define RL_(x) (x##f)
#define RL(x) RL_(x)
#define RFMA(a, b, c) fmaf(a, b, c)
#define RSQRT(x) sqrt_approx(x)
#define RSAT(x) __saturatef(x)
#define RABS(x) fabsf(x)
#ifndef SNAP
#define SNAP 4.76837158203125e-07
#endif
#define SNAP_R RL(SNAP)
#endif

// k = 1 / (9 pi); pi k = 1/9
#define KINV  RL(0.035367765131532297)
#define NINTH RL(0.11111111111111111)

// One ReLU step ("trans") for one entry.  S, T in/out; dx = (lx / (9 pi), 1/lx or 0) at p,
// dz = (lz, 1/lz or 0) at q, lx = sqrt(Sigma(x,x)(p,p)); self_one = 1 forces the
// correlation to 1 (p == q of identical images), else 0.
// With u = 1 - |c| (clipped to [0, 1]):  acos|c| = sqrt(u) g(u),  sin(theta) = sqrt(u (2 - u)),
// so theta, pi - theta and sin(theta) all come from the same u (consistent to first order,
// which keeps the new Sigma insensitive to rounding in c near 1).  In float32, u below
// 2^-21 (the rounding noise of c) is taken as 0: exactly correlated patches (blank
// background in both images) keep theta = 0 instead of sqrt(2 * rounding) ~ 5e-4.
template <bool SELF>
__device__ __forceinline__ void relu_step(real &S, real &T, real2 dx, real2 dz, real self_one) {
    const real c = S * (dx.y * dz.y);           // correlation; 0 where a variance is 0
    real u = RSAT(RL(1.0) - RABS(c));
    u = (u > SNAP_R) ? u : RL(0.0);
    if (SELF) u = u * (RL(1.0) - self_one);
    const real s1 = RSQRT(u);
#if ACOS_POLY && !USE_DOUBLE
    // acos(1 - u) / (9 pi) = sqrt(u) g(u) / (9 pi): degree-6 minimax fit, |error| < 1e-7 rad
    float p = 0.0026111588040324957f * KINV;
    p = fmaf(p, u, -0.0036652260800283595f * KINV);
    p = fmaf(p, u,  0.006919780749917066f * KINV);
    p = fmaf(p, u,  0.0059463980728623675f * KINV);
    p = fmaf(p, u,  0.026962633347688246f * KINV);
    p = fmaf(p, u,  0.11780665605968005f * KINV);
    p = fmaf(p, u,  1.414214837172127f * KINV);
    const real thk = s1 * p;
#else
    const real thk = acos(RL(1.0) - u) * KINV;
#endif
    // (pi - acos(c)) / (9 pi)
    const real pmk = (c < RL(0.0)) ? thk : (NINTH - thk);
    // sin(theta) lx lz / (9 pi)
    const real bsin = s1 * RSQRT(RL(2.0) - u) * (dx.x * dz.x);
    const real sn = RFMA(S, pmk, bsin);
    T = RFMA(T, pmk, sn);
    S = sn;
}

// In place 3x3 box filter of one tile (lane = column, A[x] = row x), cut links masked.
__device__ __forceinline__ void box3(real (&A)[KH], real mup, real mdn, const real (&lm)[KH]) {
#pragma unroll
    for (int x = 0; x < KH; ++x) {
        const real u = __shfl_up_sync(FULLMASK, A[x], 1);
        const real d = __shfl_down_sync(FULLMASK, A[x], 1);
        A[x] = RFMA(mup, u, RFMA(mdn, d, A[x]));
    }
    real prev = RL(0.0);
#pragma unroll
    for (int x = 0; x < KH; ++x) {
        const real cur = A[x];
        real o = cur;
        if (x > 0) o = RFMA(lm[x - 1], prev, o);
        if (x < KH - 1) o = RFMA(lm[x], A[x + 1], o);
        A[x] = o;
        prev = cur;
    }
}

// X:   (nx, C, KH, KW) real (float32, or float64 with USE_DOUBLE)
// DX:  (nx, depth-1, KH, KW) real2: (lx / (9 pi), 1/lx or 0), lx = sqrt(Sigma^h(x,x)(p,p)),
//      h = 1..depth-1
// Z2:  (nz, C, 2KH, KW) real (z twice along H)
// DZ2: (nz, depth-1, 2KH, KW) real2: (lz, 1/lz or 0), twice along H
// pi, pj: image indices of each pair; items = pairs x ntiles (ntiles = KH*KW, or 1 = trace)
// partial[item] = sum over the tile of the final Theta (minus Sigma if fix), float64.
template <bool SELF>
__device__ __forceinline__ void cntk_body(
    const real* __restrict__ X, const real* __restrict__ Z2,
    const real2* __restrict__ DX, const real2* __restrict__ DZ2,
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
    const real mup = (active && y > 0 && yz != 0) ? RL(1.0) : RL(0.0);
    const real mdn = (active && y < KW - 1 && yz != KW - 1) ? RL(1.0) : RL(0.0);
    // register-direction links: x <-> x+1 is cut where z's row wraps (x + 1 == KH - rx)
    const int cut = (rx == 0) ? KH : KH - rx;
    real lm[KH];
#pragma unroll
    for (int x = 0; x < KH; ++x) lm[x] = (x + 1 != cut) ? RL(1.0) : RL(0.0);
    const real self_one = (SELF && tile == 0) ? RL(1.0) : RL(0.0);

    real S[KH], T[KH];
    // layer 0: Sigma^0(p, q) = sum_c x_c(p) z_c(q), then the first conv
    {
        const real* xp = X + (unsigned long long)ix * nch * NP + y;
        const real* zp = Z2 + (unsigned long long)jz * nch * 2 * NP + rx * KW + yz;
#pragma unroll
        for (int x = 0; x < KH; ++x) S[x] = RL(0.0);
        for (int ch = 0; ch < nch; ++ch) {
#pragma unroll
            for (int x = 0; x < KH; ++x) S[x] = RFMA(__ldg(xp + x * KW), __ldg(zp + x * KW), S[x]);
            xp += NP;
            zp += 2 * NP;
        }
        if (!active) {
#pragma unroll
            for (int x = 0; x < KH; ++x) S[x] = RL(0.0);
        }
    }
    box3(S, mup, mdn, lm);
#pragma unroll
    for (int x = 0; x < KH; ++x) T[x] = fix ? RL(0.0) : S[x];

    const real2* dxp = DX + (unsigned long long)ix * (depth - 1) * NP + y;
    const real2* dzp = DZ2 + (unsigned long long)jz * (depth - 1) * 2 * NP + rx * KW + yz;
    for (int l = 0; l < depth - 1; ++l) {
#pragma unroll
        for (int x = 0; x < KH; ++x)
            relu_step<SELF>(S[x], T[x], __ldg(dxp + x * KW), __ldg(dzp + x * KW), self_one);
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

// One template, two entry points: extern "C" names cannot be templates.
#define CNTK_ENTRY(NAME, SELF)                                                              \
extern "C" __global__ void __launch_bounds__(MAXWARPS * 32)                                \
NAME(const real* __restrict__ X, const real* __restrict__ Z2,                              \
     const real2* __restrict__ DX, const real2* __restrict__ DZ2,                          \
     const int* __restrict__ pi, const int* __restrict__ pj,                               \
     long long nitems, int ntiles, int nch, int depth, int fix,                            \
     double* __restrict__ partial)                                                         \
{                                                                                          \
    cntk_body<SELF>(X, Z2, DX, DZ2, pi, pj, nitems, ntiles, nch, depth, fix, partial);     \
}

CNTK_ENTRY(cntk_fused, false)
CNTK_ENTRY(cntk_fused_self, true)
