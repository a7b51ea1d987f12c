"""Tests of the exact base kernels (issue 3): CNTK (CPU backend) and fully connected NTK.

References: the direct 4-D float64 recursion (mnk.kernels.reference), neural-tangents
0.6.5 in the separate venv .venv-nt (skipped when absent), and a per-pair loop for the
fully connected NTK.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnk.kernels.gram import cntk_gram, ntk_gram, select_backend
from mnk.kernels.reference import cntk_gram_reference

ROOT = Path(__file__).resolve().parents[1]
NT_PYTHON = ROOT / ".venv-nt" / "bin" / "python"

DIST_RTOL = 1e-12  # distinct images
DIAG_RTOL = 1e-12  # K(x, x): the correlation on p == q is forced to exactly 1 in both


def _imgs(rng, n, C, H, W):
    return rng.standard_normal((n, C, H, W))


def _assert_close(K, R, rtol):
    K = np.asarray(K)
    R = np.asarray(R)
    assert K.shape == R.shape
    assert np.all(np.isfinite(K))
    scale = np.abs(R).max()
    err = np.abs(K - R) / np.maximum(np.abs(R), 1e-300)
    # entries that are exactly 0 mathematically (e.g. fix with depth 2) compared absolutely
    tiny = np.abs(R) <= 1e-14 * scale
    assert np.all(err[~tiny] <= rtol), f"max rel err {err[~tiny].max():.3e}"
    if tiny.any():
        assert np.all(np.abs(K[tiny] - R[tiny]) <= 1e-13 * scale)


# --------------------------------------------------------------------------- CNTK vs 4-D


CASES = [
    # C, H, W, depth, gap, fix
    (1, 6, 6, 2, True, False),
    (1, 6, 6, 3, True, False),
    (1, 6, 6, 5, False, False),
    (3, 6, 6, 4, True, True),
    (3, 8, 8, 3, False, True),
    (1, 8, 8, 6, True, True),
    (3, 8, 7, 5, True, False),
    (1, 5, 8, 4, False, False),
    (1, 3, 3, 3, True, False),
]


@pytest.mark.parametrize("C,H,W,depth,gap,fix", CASES)
def test_cntk_matches_4d_reference(C, H, W, depth, gap, fix):
    rng = np.random.default_rng(1000 * C + 100 * H + 10 * W + depth)
    X = _imgs(rng, 3, C, H, W)
    Z = _imgs(rng, 2, C, H, W)
    K = cntk_gram(X, Z, depth=depth, gap=gap, fix=fix, backend="cpu")
    R = cntk_gram_reference(X, Z, depth=depth, gap=gap, fix=fix)
    assert K.dtype == np.float64 and K.shape == (3, 2)
    _assert_close(K, R, DIST_RTOL)
    # symmetric Gram, diagonal included
    Ks = cntk_gram(X, depth=depth, gap=gap, fix=fix, backend="cpu")
    Rs = cntk_gram_reference(X, depth=depth, gap=gap, fix=fix)
    _assert_close(Ks, Rs, DIAG_RTOL)


def test_cntk_larger_image_deep():
    """One 10x10, depth-12 pair (many offsets, deep recursion) against the 4-D reference."""
    rng = np.random.default_rng(7)
    X = _imgs(rng, 1, 1, 10, 10)
    Z = 0.5 * X + 0.5 * _imgs(rng, 1, 1, 10, 10)  # correlated, so c gets close to 1
    for gap in (True, False):
        _assert_close(
            cntk_gram(X, Z, depth=12, gap=gap, backend="cpu"),
            cntk_gram_reference(X, Z, depth=12, gap=gap, fix=False),
            DIST_RTOL,
        )


def test_cntk_2d_input_is_one_channel():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 6, 6))
    np.testing.assert_array_equal(
        cntk_gram(X, depth=3, backend="cpu"), cntk_gram(X[:, None], depth=3, backend="cpu")
    )


def test_cntk_symmetry_psd_and_z_none():
    rng = np.random.default_rng(11)
    X = _imgs(rng, 7, 2, 7, 7)
    X[3] = X[1]  # a duplicate image
    for gap, fix in [(True, False), (False, True)]:
        K = cntk_gram(X, depth=4, gap=gap, fix=fix, backend="cpu")
        np.testing.assert_array_equal(K, K.T)
        ev = np.linalg.eigvalsh(K)
        assert ev.min() >= -1e-10 * ev.max()
        # Z=None equals Z=X (lower triangle computed either way from the same code path)
        K2 = cntk_gram(X, X.copy(), depth=4, gap=gap, fix=fix, backend="cpu")
        np.testing.assert_allclose(K2, K, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(np.diag(K2), np.diag(K))
        # the duplicate: K(x1, x3) = K(x1, x1)
        assert K[1, 3] == K[1, 1]


def test_cntk_chunked_equals_one_shot(monkeypatch):
    """Chunking of the per-image layer norms (large inputs) does not change any entry."""
    import mnk.kernels.cntk_cpu as cpu

    rng = np.random.default_rng(13)
    X = _imgs(rng, 7, 1, 5, 5).astype(np.float32)  # float32 input is accepted (computed in float64)
    Z = _imgs(rng, 4, 1, 5, 5)
    K = cntk_gram(X, depth=3, backend="cpu")
    KZ = cntk_gram(X, Z, depth=3, backend="cpu")
    monkeypatch.setattr(cpu, "_CHUNK_BYTES", 2 * 2 * (3 - 1) * 25 * 8 * 2)  # 2 images per chunk
    np.testing.assert_array_equal(cntk_gram(X, depth=3, backend="cpu"), K)
    np.testing.assert_array_equal(cntk_gram(X, Z, depth=3, backend="cpu"), KZ)


def test_cntk_zero_patches_finite():
    """Zero variance somewhere (all-zero 3x3 patches, an all-zero image): finite values equal
    to the reference with correlation 0 (the original code would give NaN)."""
    rng = np.random.default_rng(5)
    X = _imgs(rng, 3, 1, 8, 8)
    X[0] = 0.0
    X[0, 0, 1, 1] = 1.0  # a single pixel: most patches are all zero
    X[1, :, 4:, :] = 0.0  # bottom half zero
    X[2] = 0.0  # all zero
    for gap, fix in [(True, False), (False, False), (True, True)]:
        K = cntk_gram(X, depth=4, gap=gap, fix=fix, backend="cpu")
        R = cntk_gram_reference(X, depth=4, gap=gap, fix=fix)
        assert np.all(np.isfinite(K))
        _assert_close(K, R, DIAG_RTOL)
        assert np.all(K[2] == 0.0) and np.all(K[:, 2] == 0.0)
        assert K[0, 0] > 0


def test_cntk_scaling_homogeneous():
    """The ReLU kernels are positively homogeneous: K(a x, b z) = a b K(x, z)."""
    rng = np.random.default_rng(9)
    X = _imgs(rng, 2, 1, 6, 6)
    Z = _imgs(rng, 2, 1, 6, 6)
    K = cntk_gram(X, Z, depth=4, backend="cpu")
    np.testing.assert_allclose(cntk_gram(3.0 * X, 0.5 * Z, depth=4, backend="cpu"), 1.5 * K, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(X=np.full((2, 6, 6), np.nan)), "non-finite"),
        (dict(X=np.ones((2, 6, 6)), Z=np.full((1, 6, 6), np.inf)), "Z contains non-finite"),
        (dict(X=np.ones((2, 2, 6))), "at least 3x3"),
        (dict(X=np.ones((6, 6))), "shape"),
        (dict(X=np.ones((2, 1, 1, 6, 6))), "shape"),
        (dict(X=np.ones((2, 6, 6)), Z=np.ones((2, 6, 7))), "same"),
        (dict(X=np.ones((2, 6, 6)), depth=1), "depth"),
        (dict(X=np.ones((2, 6, 6)), depth=2.5), "depth"),
        (dict(X=np.ones((2, 6, 6)), backend="tpu"), "backend"),
    ],
)
def test_cntk_bad_input_raises(kwargs, match):
    kw = dict(depth=3, backend="cpu")
    kw.update(kwargs)
    X = kw.pop("X")
    with pytest.raises(ValueError, match=match):
        cntk_gram(X, **kw)


def test_cntk_nan_message_names_image():
    X = np.ones((3, 6, 6))
    X[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains non-finite values .*image 2"):
        cntk_gram(X, depth=3, backend="cpu")


def test_cntk_empty():
    assert cntk_gram(np.ones((0, 5, 5)), np.ones((2, 5, 5)), depth=3, backend="cpu").shape == (0, 2)


def test_backend_selection(caplog, monkeypatch):
    """Without CUDA (forced here, whatever the machine has): `cuda` is refused with the
    reason, `auto` falls back to the CPU and says so; with CUDA, `auto` picks it."""
    from mnk.kernels import cntk_cuda

    X = np.random.default_rng(0).standard_normal((2, 5, 5))
    monkeypatch.setattr(cntk_cuda, "cuda_unavailable_reason", lambda: "CuPy is not importable (test)")
    assert select_backend("auto") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA GPU/CuPy available.*CuPy is not importable"):
        cntk_gram(X, depth=3, backend="cuda")
    with caplog.at_level(logging.DEBUG, logger="mnk.kernels"):
        K = cntk_gram(X, depth=3, backend="auto")
    assert "-> cpu" in caplog.text
    np.testing.assert_array_equal(K, cntk_gram(X, depth=3, backend="cpu"))
    monkeypatch.setattr(cntk_cuda, "cuda_unavailable_reason", lambda: "")
    assert select_backend("auto") == "cuda"
    assert select_backend("cpu") == "cpu"


# --------------------------------------------------------------------------- CNTK vs NT


def _run_nt(cases, tmp_path):
    if not NT_PYTHON.exists():
        pytest.skip(f"neural-tangents venv absent ({NT_PYTHON}); create it from envs/neural_tangents.txt")
    inp = tmp_path / "nt_in.npz"
    out = tmp_path / "nt_out.npz"
    arrays = {"n_cases": len(cases)}
    for k, (X, Z, depth, gap, fix) in enumerate(cases):
        arrays.update({f"X_{k}": X, f"Z_{k}": Z, f"depth_{k}": depth, f"gap_{k}": int(gap), f"fix_{k}": int(fix)})
    np.savez(inp, **arrays)
    r = subprocess.run(
        [str(NT_PYTHON), str(ROOT / "tests" / "nt_reference.py"), str(inp), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"nt_reference.py failed:\n{r.stderr[-4000:]}"
    d = np.load(out)
    return [d[f"K_{k}"] for k in range(len(cases))]


def test_cntk_matches_neural_tangents(tmp_path):
    rng = np.random.default_rng(21)
    cases = []
    for C, H, W, depth, gap, fix in [(1, 7, 6, 4, True, False), (3, 6, 6, 3, False, False), (2, 6, 6, 4, True, True)]:
        X = _imgs(rng, 3, C, H, W)
        X[0] = 0.0
        X[0, :, 2, 2] = 1.0  # zero-variance patches: NT's correlation-0 convention
        cases.append((X, _imgs(rng, 2, C, H, W), depth, gap, fix))
    K_nt = _run_nt(cases, tmp_path)
    for (X, Z, depth, gap, fix), Knt in zip(cases, K_nt):
        K = cntk_gram(X, Z, depth=depth, gap=gap, fix=fix, backend="cpu")
        _assert_close(K, Knt, 1e-11)


# --------------------------------------------------------------------------- FC NTK


def _ntk_pair(x, z, depth):
    x = np.ravel(x).astype(np.float64)
    z = np.ravel(z).astype(np.float64)
    S, Sx, Sz, Th = float(x @ z), float(x @ x), float(z @ z), 0.0
    for _ in range(depth):
        Th += S
        norm = math.sqrt(Sx * Sz)
        c = 0.0 if norm == 0 else min(1.0, max(-1.0, S / norm))
        if np.array_equal(x, z):
            c = 1.0
        ac = math.acos(c)
        S = (c * (math.pi - ac) + math.sqrt(1 - c * c)) * norm / (2 * math.pi)
        Th = Th * (math.pi - ac) / (2 * math.pi)
        Sx = (math.pi * Sx) / (2 * math.pi)
        Sz = (math.pi * Sz) / (2 * math.pi)
    return Th


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_ntk_matches_loop(depth):
    rng = np.random.default_rng(depth)
    X = rng.standard_normal((5, 3, 4))
    Z = rng.standard_normal((4, 3, 4))
    Z[0] = X[2]
    X[4] = 0.0
    K = ntk_gram(X, Z, depth=depth)
    R = np.array([[_ntk_pair(x, z, depth) for z in Z] for x in X])
    assert K.shape == (5, 4) and K.dtype == np.float64
    np.testing.assert_allclose(K, R, rtol=1e-12, atol=1e-14 * np.abs(R).max())
    Ks = ntk_gram(X, depth=depth)
    Rs = np.array([[_ntk_pair(x, z, depth) for z in X] for x in X])
    np.testing.assert_allclose(Ks, Rs, rtol=1e-12, atol=1e-14 * np.abs(Rs).max())
    np.testing.assert_array_equal(Ks, Ks.T)
    ev = np.linalg.eigvalsh(Ks)
    assert ev.min() >= -1e-10 * ev.max()


def test_ntk_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        ntk_gram(np.array([[1.0, np.inf]]), depth=2)
    with pytest.raises(ValueError, match="depth"):
        ntk_gram(np.ones((2, 3)), depth=0)
    with pytest.raises(ValueError, match="same number of features"):
        ntk_gram(np.ones((2, 3)), np.ones((2, 4)), depth=2)
