"""The float32 CPU CNTK (mnk.kernels.cntk_cpu32) against the exact float64 path.

The float64 backend is itself checked against the direct 4-D reference (test_kernels.py);
here float32 must agree with it to 1e-5 relative on real Omniglot strokes at depth 20 and
1e-4 at depth 50, on standardised real images at the configs' sizes and depths, and
everywhere else the float64 path is defined. float32 exists with global average pooling
only: `cntk_gram(dtype="float32", gap=False)` computes the trace in float64 and says so.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
import pytest

from mnk.kernels import _acos, gram
from mnk.kernels.gram import cntk_gram
from mnk.kernels.transform import transform_images


def _rel(K, R):
    assert K.shape == R.shape and K.dtype == np.float64
    assert np.all(np.isfinite(K))
    return float(np.max(np.abs(K - R) / np.abs(R)))


def _both(X, Z=None, **kw):
    K64 = cntk_gram(X, Z, backend="cpu", dtype="float64", **kw)
    K32 = cntk_gram(X, Z, backend="cpu", dtype="float32", **kw)
    return K32, K64


# --------------------------------------------------------------------------- Omniglot


@pytest.fixture(scope="module")
def strokes(omniglot):
    """Eight real 28x28 stroke images: four characters, two drawers each (near duplicates)."""
    imgs = omniglot["images"]
    char = omniglot["character"]
    picks = []
    for c in np.unique(char)[[0, 300, 700, 1200]]:
        picks.extend(np.flatnonzero(char == c)[:2])
    return np.asarray(imgs[picks], dtype=np.float64)


@pytest.mark.parametrize("depth,tol", [(20, 1e-5), (50, 1e-4)])
def test_float32_matches_float64_on_omniglot(strokes, depth, tol):
    X, Z = strokes[:5], strokes[5:]
    K32, K64 = _both(X, depth=depth, gap=True)  # symmetric: the diagonal included
    assert _rel(K32, K64) <= tol
    np.testing.assert_array_equal(K32, K32.T)
    C32, C64 = _both(X, Z, depth=depth, gap=True)  # cross block
    assert _rel(C32, C64) <= tol


# Real images whose standardised trace kernels a float32 recursion got wrong by up to 1.8e-5
# (16x16 depth 6) and 8.8e-5 (28x28 depth 10) relative: many entries near correlation 1,
# a standardised background being one constant (BENCHMARKS.md, issue 29).
HARD_FOR_FLOAT32 = [5093, 5159, 4847, 12271, 18477, 27984, 7222, 18470]


@pytest.fixture(scope="module")
def standardised(omniglot):
    """`size -> images`: HARD_FOR_FLOAT32 area-resized and standardised (by their own pixel
    mean and std), as the kernel stage prepares images."""
    return lambda size, pad=0: transform_images(omniglot["images"][HARD_FOR_FLOAT32], image_size=size, pad=pad,
                                                standardize=True).astype(np.float64)


@pytest.mark.parametrize("size,depth", [(16, 6), (14, 5), (28, 10), (28, 3)])
def test_float32_vanilla_within_1e5_of_float64_on_real_images(standardised, monkeypatch, caplog, size, depth):
    monkeypatch.setattr(gram, "_logged", set())  # the warning comes once per process
    X = standardised(size)
    with caplog.at_level(logging.WARNING, logger="mnk.kernels"):
        K32, K64 = _both(X, depth=depth, gap=False)
    assert _rel(K32, K64) <= 1e-5
    assert any(r.levelno == logging.WARNING and "float64 for the trace" in r.message for r in caplog.records)


@pytest.mark.parametrize("size,pad,depth", [(14, 0, 5), (16, 0, 6), (28, 2, 20)])  # config.yaml, paper.yaml
def test_float32_gap_within_1e5_of_float64_on_real_images(standardised, size, pad, depth):
    X = standardised(size, pad)
    K32, K64 = _both(X[:3], X[3:6], depth=depth, gap=True)
    assert _rel(K32, K64) <= 1e-5


# --------------------------------------------------------------------------- everything else

CASES = [
    # C, H, W, depth, fix
    (1, 3, 3, 2, False),
    (1, 6, 6, 3, False),
    (3, 8, 7, 5, True),
    (1, 12, 12, 8, False),
    (1, 4, 33, 3, False),  # more lanes than one AVX-512 vector pair
]


@pytest.mark.parametrize("C,H,W,depth,fix", CASES)
def test_float32_matches_float64_everywhere(C, H, W, depth, fix):
    rng = np.random.default_rng(100 * H + W + depth)
    X = rng.standard_normal((4, C, H, W))  # signed: negative correlations too
    Z = rng.standard_normal((3, C, H, W))
    K32, K64 = _both(X, Z, depth=depth, gap=True, fix=fix)
    assert _rel(K32, K64) <= 1e-5
    S32, S64 = _both(X, depth=depth, gap=True, fix=fix)
    assert _rel(S32, S64) <= 1e-5
    R32, R64 = _both(Z, X, depth=depth, gap=True, fix=fix)
    np.testing.assert_allclose(R32, K32.T, rtol=1e-6)


def test_float32_sums_keep_terms_below_float32_resolution():
    """A bright first row over faint strokes (3e-4): each per-lane sum of the last layer
    starts with a large entry and adds hundreds below half a float32 ulp of it, which a
    float32 accumulator drops (6e-6 relative); float64 sums keep the float32 entries' ~1e-7."""
    rng = np.random.default_rng(11)
    X = 3e-4 * rng.standard_normal((4, 28, 28))
    X[:, 0, :] = rng.standard_normal((4, 28))
    K32, K64 = _both(X, depth=3, gap=True)
    assert _rel(K32, K64) <= 5e-7


def test_float32_duplicates_scale_and_2d_input():
    rng = np.random.default_rng(3)
    X = rng.random((4, 9, 9))
    X[3] = X[1]
    K = cntk_gram(X, depth=5, backend="cpu", dtype="float32")
    assert K[1, 3] == K[1, 1] == K[3, 3]  # bitwise-identical images, identical values
    np.testing.assert_array_equal(K, cntk_gram(X[:, None], depth=5, backend="cpu", dtype="float32"))
    # homogeneous of degree 1 in each argument, without float32 under- or overflow
    for a in (1e-25, 1e25):
        Ka = cntk_gram(a * X, X, depth=5, backend="cpu", dtype="float32")
        np.testing.assert_allclose(Ka, a * K, rtol=1e-6)


def test_float32_zero_variance():
    """Zero variance somewhere: same finite values as float64 (correlation 0), zero rows stay 0."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 1, 8, 8))
    X[0] = 0.0
    X[0, 0, 1, 1] = 1.0
    X[1, :, 4:, :] = 0.0
    X[2] = 0.0
    for fix in (False, True):
        K32, K64 = _both(X, depth=4, gap=True, fix=fix)
        assert np.all(K32[2] == 0.0) and np.all(K32[:, 2] == 0.0)
        nz = K64 != 0
        assert np.array_equal(nz, K32 != 0)
        assert _rel(K32[nz], K64[nz]) <= 1e-5
    assert np.all(cntk_gram(np.zeros((2, 5, 5)), depth=3, backend="cpu", dtype="float32") == 0.0)


def test_float32_threads_and_chunks_do_not_change_values(monkeypatch):
    import mnk.kernels.cntk_cpu32 as cpu32

    rng = np.random.default_rng(7)
    X = rng.random((21, 1, 6, 6))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        K1 = cntk_gram(X, depth=4, backend="cpu", dtype="float32")
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        np.testing.assert_array_equal(cntk_gram(X, depth=4, backend="cpu", dtype="float32"), K1)
        monkeypatch.setattr(cpu32, "_CHUNK_BYTES", 1)  # chunks of one image
        np.testing.assert_array_equal(cntk_gram(X, depth=4, backend="cpu", dtype="float32"), K1)
    finally:
        numba.set_num_threads(before)


def test_float32_progress_bar(capsys):
    from mnk.kernels.cntk_cpu32 import cntk_gram_cpu32

    X = np.random.default_rng(0).random((3, 1, 5, 5))
    cntk_gram_cpu32(X, X, True, depth=3, fix=False, progress=True)
    assert "pair" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(X=np.full((2, 6, 6), np.nan)), "X contains non-finite"),
        (dict(X=np.ones((2, 6, 6)), Z=np.full((1, 6, 6), np.inf)), "Z contains non-finite"),
        (dict(X=np.ones((2, 2, 6))), "at least 3x3"),
        (dict(X=np.ones((2, 6, 6)), dtype="float16"), "dtype"),
        (dict(X=np.ones((2, 6, 6)), dtype="double precision"), "dtype"),
    ],
)
def test_float32_bad_input(kwargs, match):
    kw = dict(depth=3, backend="cpu", dtype="float32")
    kw.update(kwargs)
    X = kw.pop("X")
    with pytest.raises(ValueError, match=match):
        cntk_gram(X, **kw)


# --------------------------------------------------------------------------- polynomials


def test_arccos_polynomial_error_bound():
    u = np.linspace(0.0, 1.0, 400_001)
    exact = np.arccos(1.0 - u)
    poly = np.sqrt(u) * np.polyval(_acos.ACOS1M_COEFFS, u)
    assert np.max(np.abs(poly - exact)) <= _acos.ACOS1M_ERROR_BOUND
    u32 = u.astype(np.float32)
    p32 = np.sqrt(u32) * _acos.polyval_f32(_acos.ACOS1M_COEFFS, u32)
    exact32 = np.arccos(1.0 - u32.astype(np.float64))
    assert np.max(np.abs(p32.astype(np.float64) - exact32)) <= _acos.ACOS1M_ERROR_BOUND_F32
    q = np.polyval(_acos.SQRT2M_COEFFS, u)
    assert np.max(np.abs(q - np.sqrt(2.0 - u)) / np.sqrt(2.0 - u)) <= _acos.SQRT2M_REL_ERROR_BOUND
