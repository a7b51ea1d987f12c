"""mnk.methods.mnk against a direct, loop-based implementation of the MNK formulas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg

from mnk.methods.options import MNKSection
from mnk.methods.mnk import (
    DegenerateKernelError,
    MNKOptions,
    NotPositiveDefiniteError,
    TaskSet,
    mnk_gram,
    mnk_predict,
    mnk_terms,
)
from mnk.methods.targets import class_centroid_targets, class_centroids, one_hot, predict_labels

INF = math.inf


# ------------------------------------------------------------------ reference code


def _ref_fun_matrix(A, t, r):
    """(A + r I)^-1 (I - expm(-t A)) by plain dense linear algebra (pinv when r=0, t=inf)."""
    n = A.shape[0]
    if math.isinf(t):
        B = A + r * np.eye(n)
        return np.linalg.inv(B) if r > 0 else np.linalg.pinv(B)
    return np.linalg.solve(A + r * np.eye(n), np.eye(n) - scipy.linalg.expm(-t * A))


def reference_predict(K, trS, trQ, trYs, trYq, teS, teQ, teYs, inner_time, meta_time,
                      ridge, normalize_ntk, normalize_mnk):
    """Literal, loop-based transcription of the formulas in mnk.methods.mnk's docstring."""
    r1, r2 = ridge
    N = K.shape[0]
    if normalize_ntk:
        Kr = K + r1 * np.eye(N)
        d = np.sqrt(np.diag(Kr))
        Kn = Kr / np.outer(d, d)
    else:
        Kn = K.copy()

    S = list(trS) + list(teS)
    Q = list(trQ) + list(teQ)
    Ys = list(trYs) + list(teYs)
    n_tr, n_all = len(trS), len(S)
    Ts, fs = [], []
    for s, q, y in zip(S, Q, Ys):
        Kss = Kn[np.ix_(s, s)]
        Ti = _ref_fun_matrix(Kss, inner_time, r1)
        Ts.append(Ti)
        fs.append(Kn[np.ix_(q, s)] @ Ti @ y)

    blocks = [[None] * n_all for _ in range(n_all)]
    for i in range(n_all):
        for j in range(n_all):
            Xi, Xpi, Xj, Xpj = S[i], Q[i], S[j], Q[j]
            blocks[i][j] = (
                Kn[np.ix_(Xpi, Xpj)]
                - Kn[np.ix_(Xpi, Xi)] @ Ts[i] @ Kn[np.ix_(Xi, Xpj)]
                - Kn[np.ix_(Xpi, Xj)] @ Ts[j].T @ Kn[np.ix_(Xj, Xpj)]
                + Kn[np.ix_(Xpi, Xi)] @ Ts[i] @ Kn[np.ix_(Xi, Xj)] @ Ts[j].T @ Kn[np.ix_(Xj, Xpj)]
            )
    Phi = np.block(blocks)
    M = Phi.shape[0]
    if normalize_mnk:
        Pr = Phi + r2 * np.eye(M)
        d = np.sqrt(np.diag(Pr))
        Phin = Pr / np.outer(d, d)
    else:
        Phin = Phi
    nq = len(trQ[0]) if n_tr else 0
    m_tr = n_tr * nq
    P_tt = Phin[:m_tr, :m_tr]
    P_et = Phin[m_tr:, :m_tr]
    R = np.concatenate([yq - f for yq, f in zip(trYq, fs[:n_tr])])
    E = _ref_fun_matrix(P_tt, meta_time, r2) @ R
    pred = P_et @ E + np.concatenate(fs[n_tr:])
    return pred.reshape(len(teS), len(teQ[0]), -1)


# ----------------------------------------------------------------------- fixtures


def random_problem(seed=0, n_images=60, n_tr=4, n_te=3, ns=3, nq=4, c=2, dim=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_images, dim))
    # PD kernel with a non-trivial diagonal: RBF-ish + linear
    sq = ((X[:, None] - X[None]) ** 2).sum(-1)
    K = np.exp(-sq / (2 * dim)) + 0.3 * X @ X.T / dim
    K *= rng.uniform(0.5, 2.0, n_images)[:, None] * 0 + 1.0
    scale = rng.uniform(0.5, 2.0, n_images)
    K = K * np.outer(scale, scale)  # non-unit diagonal, still PD

    def tasks(n):
        idx = np.stack([rng.choice(n_images, ns + nq, replace=False) for _ in range(n)])
        return idx[:, :ns], idx[:, ns:]

    trS, trQ = tasks(n_tr)
    teS, teQ = tasks(n_te)
    return dict(
        K=K, trS=trS, trQ=trQ, teS=teS, teQ=teQ,
        trYs=rng.standard_normal((n_tr, ns, c)),
        trYq=rng.standard_normal((n_tr, nq, c)),
        teYs=rng.standard_normal((n_te, ns, c)),
    )


def predict(K, trS, trQ, trYs, trYq, teS, teQ, teYs, **options):
    """mnk_predict with the arrays and options spelled out (the tests' shorthand)."""
    return mnk_predict(K, TaskSet(trS, trQ, trYs, trYq), TaskSet(teS, teQ, teYs), MNKOptions(**options))


def call(p, **kw):
    return predict(p["K"], p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"], **kw)


def ref(p, inner_time=INF, meta_time=INF, ridge=(1e-5, 1e-5), normalize_ntk=True, normalize_mnk=True):
    return reference_predict(p["K"], p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"],
                             p["teYs"], inner_time, meta_time, ridge, normalize_ntk, normalize_mnk)


# -------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "inner_time,meta_time,normalize_ntk,normalize_mnk",
    list(itertools.product([INF, 0.7], [INF, 2.0], [True, False], [True, False])),
)
def test_matches_loop_reference(inner_time, meta_time, normalize_ntk, normalize_mnk):
    p = random_problem(seed=1)
    for ridge in [(1e-3, 1e-2), (1e-5, 1e-5)]:
        kw = dict(inner_time=inner_time, meta_time=meta_time, ridge=ridge,
                  normalize_ntk=normalize_ntk, normalize_mnk=normalize_mnk)
        got = call(p, **kw)
        want = ref(p, **kw)
        assert got.shape == (3, 4, 2)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * max(1.0, np.abs(want).max()))


def test_zero_ridge_finite_times_matches_reference():
    """The theory-check configuration: no ridge, no normalisation, finite times."""
    p = random_problem(seed=2)
    kw = dict(inner_time=1.3, meta_time=0.9, ridge=(0.0, 0.0), normalize_ntk=False, normalize_mnk=False)
    np.testing.assert_allclose(call(p, **kw), ref(p, **kw), rtol=0, atol=1e-8)


def test_repeated_images_across_tasks():
    """The same image in several tasks (and support of one, query of another)."""
    p = random_problem(seed=3, n_images=12, n_tr=5, n_te=3)
    for kw in [dict(), dict(inner_time=0.5, meta_time=1.5, normalize_mnk=False)]:
        np.testing.assert_allclose(call(p, **kw), ref(p, **kw), rtol=0, atol=1e-8)


def test_default_arguments_are_documented_configuration():
    p = random_problem(seed=4)
    np.testing.assert_allclose(call(p), ref(p), rtol=0, atol=1e-8)


def test_one_task_no_meta_term_is_plain_kernel_regression():
    p = random_problem(seed=5, n_tr=1, n_te=2)
    K, r1 = p["K"], 1e-4
    for inner_time in [INF, 0.8]:
        got = call(p, inner_time=inner_time, meta_time=0.0, ridge=(r1, 1e-5), normalize_ntk=False)
        for i in range(2):
            s, q = p["teS"][i], p["teQ"][i]
            Kss = K[np.ix_(s, s)]
            if math.isinf(inner_time):
                want = K[np.ix_(q, s)] @ np.linalg.solve(Kss + r1 * np.eye(len(s)), p["teYs"][i])
            else:
                ydd = (np.eye(len(s)) - scipy.linalg.expm(-inner_time * Kss)) @ p["teYs"][i]
                want = K[np.ix_(q, s)] @ np.linalg.solve(Kss + r1 * np.eye(len(s)), ydd)
            np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-10)


def test_no_training_tasks_gives_task_regression():
    """No training tasks: each test task's own kernel regression, written out here (unit-
    diagonal normalisation of K + r1 I, then Kn[q, s] (Kn[s, s] + r1 I)^-1 Y)."""
    p = random_problem(seed=6)
    r1 = 1e-5
    got = predict(p["K"], p["trS"][:0], p["trQ"][:0], p["trYs"][:0], p["trYq"][:0],
                  p["teS"], p["teQ"], p["teYs"], ridge=(r1, 1e-5))
    d = np.sqrt(np.diag(p["K"]) + r1)
    Kn = (p["K"] + r1 * np.eye(len(d))) / np.outer(d, d)
    for t, (s, q, y) in enumerate(zip(p["teS"], p["teQ"], p["teYs"])):
        want = Kn[np.ix_(q, s)] @ np.linalg.solve(Kn[np.ix_(s, s)] + r1 * np.eye(len(s)), y)
        np.testing.assert_allclose(got[t], want, atol=1e-8)


def test_invariant_to_permuting_training_tasks():
    p = random_problem(seed=7, n_tr=6)
    perm = np.random.default_rng(0).permutation(6)
    q = dict(p, trS=p["trS"][perm], trQ=p["trQ"][perm], trYs=p["trYs"][perm], trYq=p["trYq"][perm])
    for kw in [dict(), dict(inner_time=0.5, meta_time=1.0)]:
        np.testing.assert_allclose(call(p, **kw), call(q, **kw), rtol=0, atol=1e-9)


def test_test_tasks_are_independent():
    """Each test task's prediction does not depend on the other test tasks."""
    p = random_problem(seed=8)
    full = call(p)
    one = predict(p["K"], p["trS"], p["trQ"], p["trYs"], p["trYq"],
                      p["teS"][1:2], p["teQ"][1:2], p["teYs"][1:2])
    np.testing.assert_allclose(one[0], full[1], atol=1e-10)


def test_chunked_assembly_matches(monkeypatch):
    import mnk.methods.mnk as meta
    p = random_problem(seed=9, n_tr=7)
    want = call(p)
    monkeypatch.setattr(meta, "_CHUNK_BYTES", 1)
    np.testing.assert_allclose(call(p), want, atol=1e-12)


# ----------------------------------------------------------------------- errors


def test_nan_kernel_message():
    p = random_problem(seed=10)
    K = p["K"].copy()
    i, j = p["trQ"][0, 0], p["teS"][1, 2]
    K[i, j] = np.nan
    with pytest.raises(ValueError, match=r"kernel contains NaN/inf at .*\[%d, %d\]" % (i, j)):
        predict(K, p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"])
    K = p["K"].copy()
    K[i, i] = np.inf
    with pytest.raises(ValueError, match="kernel contains NaN/inf"):
        predict(K, p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"])


def test_bad_index_messages():
    p = random_problem(seed=11, n_images=60)
    bad = p["teQ"].copy()
    bad[0, 0] = 60
    with pytest.raises(ValueError, match=r"test_query contains index 60 out of range for K with 60 rows"):
        predict(p["K"], p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], bad, p["teYs"])
    bad[0, 0] = -1
    with pytest.raises(ValueError, match=r"test_query contains index -1 out of range"):
        predict(p["K"], p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], bad, p["teYs"])
    with pytest.raises(ValueError, match=r"train_support must be an integer index array"):
        predict(p["K"], p["trS"].astype(float), p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"])
    with pytest.raises(ValueError, match=r"train_support has 4 tasks but train_query has 3"):
        predict(p["K"], p["trS"], p["trQ"][:3], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"])
    with pytest.raises(ValueError, match=r"train_query_y has shape \(4, 3, 2\), expected \(4, 4, 2\)"):
        predict(p["K"], p["trS"], p["trQ"], p["trYs"], p["trYq"][:, :3], p["teS"], p["teQ"], p["teYs"])
    with pytest.raises(ValueError, match=r"train_support must be a 2-D index array"):
        predict(p["K"], p["trS"].ravel(), p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"])
    with pytest.raises(ValueError, match=r"K must be a square"):
        predict(p["K"][:, :-1], p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"])
    with pytest.raises(ValueError, match=r"ridge\[1\] \(r2\) must be finite and >= 0"):
        call(p, ridge=(1e-5, -1.0))
    with pytest.raises(ValueError, match=r"inner_time must be >= 0"):
        call(p, inner_time=-1.0)


def test_not_positive_definite_message():
    p = random_problem(seed=12)
    K = -p["K"]  # negative definite: per-task Cholesky must fail, ridge suggested
    with pytest.raises(NotPositiveDefiniteError, match=r"not positive definite.*larger ridge r1"):
        predict(K, p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"],
                    normalize_ntk=False)
    # rank-3 kernel, no ridge: the MNK train block is singular
    x = np.random.default_rng(0).standard_normal((p["K"].shape[0], 3))
    with pytest.raises((NotPositiveDefiniteError, ValueError), match=r"ridge"):
        predict(x @ x.T, p["trS"], p["trQ"], p["trYs"], p["trYq"], p["teS"], p["teQ"], p["teYs"],
                    ridge=(1e-3, 0.0), normalize_ntk=False, normalize_mnk=False)


@pytest.mark.parametrize("kind", ["zero", "constant", "underflowed"])
def test_degenerate_kernel_is_refused_with_the_number(kind):
    """An all-zero kernel (normalised: the identity), a constant one, and one whose
    normalised entries are all 1 up to rounding (a CNTK too deep) give chance-level
    predictions silently; each is refused, for the MNK and for the per-task regression."""
    p = random_problem(seed=18)
    n = p["K"].shape[0]
    K = {"zero": np.zeros((n, n)), "constant": np.full((n, n), 3.0),
         "underflowed": 1.0 + 1e-12 * p["K"]}[kind]
    with pytest.raises(DegenerateKernelError, match=r"degenerate base kernel: .*\d"):
        call(dict(p, K=K))
    with pytest.raises(DegenerateKernelError, match="degenerate base kernel"):
        predict(K, p["trS"][:0], p["trQ"][:0], p["trYs"][:0], p["trYq"][:0], p["teS"], p["teQ"], p["teYs"])
    call(dict(p, K=p["K"] + 3.0))  # a healthy kernel with a large constant offset still passes


def test_options_are_validated_and_frozen():
    with pytest.raises(ValueError, match=r"config section mnk: .*ridge\[0\] \(r1\)"):
        MNKOptions.from_section(MNKSection(r1=-1.0), r2=1.0)
    with pytest.raises(ValueError, match="mnk.solver must be one of"):
        MNKSection.from_section({"r1": 1.0, "solver": "fast"})
    options = MNKOptions(ridge=(1, 2))
    assert options.ridge == (1.0, 2.0) and options.replace(meta_time=0.0).meta_time == 0.0
    with pytest.raises(Exception):
        options.ridge = (0.0, 0.0)


# --------------------------------------------------------------- classification


def test_one_hot_and_argmax_is_nearest_centroid():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (3, 7))
    oh = one_hot(labels, 5)
    assert oh.shape == (3, 7, 5) and np.all(oh.argmax(-1) == labels)
    pred = rng.standard_normal((3, 7, 5))
    np.testing.assert_array_equal(predict_labels(pred), predict_labels(pred, np.eye(5)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        one_hot(np.array([5]), 5)


def test_centroids_and_nearest_centroid():
    feats = np.array([[[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]]])
    labels = np.array([[0, 0, 1, 1]])
    cent = class_centroids(feats, labels, 2)
    np.testing.assert_allclose(cent, [[[1.0, 0.0], [11.0, 10.0]]])
    tg = class_centroid_targets(feats, labels, 2)
    np.testing.assert_allclose(tg, [[[1, 0], [1, 0], [11, 10], [11, 10]]])
    q = np.array([[[0.9, 0.2], [9.0, 9.0], [5.0, 4.0]]])
    np.testing.assert_array_equal(predict_labels(q, cent), [[0, 1, 0]])
    with pytest.raises(ValueError, match="class 1 has no point in task 0"):
        class_centroids(feats, np.zeros((1, 4), int), 2)


def test_classification_end_to_end_accuracy():
    """Well-separated clusters with a linear kernel: MNK with one-hot targets is perfect."""
    from mnk.methods.metrics import accuracy_ci, per_task_accuracy

    rng = np.random.default_rng(1)
    way, n_cls = 3, 12
    centers = rng.standard_normal((n_cls, 20)) * 5
    X = np.repeat(centers, 6, axis=0) + 0.1 * rng.standard_normal((n_cls * 6, 20))
    img_cls = np.repeat(np.arange(n_cls), 6)
    K = X @ X.T + 1.0

    def make(n):
        S, Q, ys, yq = [], [], [], []
        for _ in range(n):
            cls = rng.choice(n_cls, way, replace=False)
            s, q = [], []
            for k in cls:
                imgs = rng.choice(np.nonzero(img_cls == k)[0], 3, replace=False)
                s.append(imgs[:1]), q.append(imgs[1:])
            S.append(np.concatenate(s)), Q.append(np.concatenate(q))
            ys.append(np.arange(way)), yq.append(np.repeat(np.arange(way), 2))
        return np.array(S), np.array(Q), np.array(ys), np.array(yq)

    trS, trQ, trys, tryq = make(10)
    teS, teQ, teys, teyq = make(5)
    pred = predict(K, trS, trQ, one_hot(trys, way), one_hot(tryq, way), teS, teQ, one_hot(teys, way))
    acc = per_task_accuracy(predict_labels(pred), teyq)
    res = accuracy_ci(acc)
    assert res["accuracy"] == 1.0 and res["n_tasks"] == 5


# ------------------------------------------------------------- low-rank solver


@pytest.mark.parametrize("inner_time,normalize_ntk,normalize_mnk",
                         list(itertools.product([INF, 0.7], [True, False], [True, False])))
def test_lowrank_solver_matches_reference(inner_time, normalize_ntk, normalize_mnk):
    # more query positions than images (M = 64 > U <= 24): Phi[train, train] is singular,
    # only the ridge r2 makes the problem well posed -- the regime the low-rank path is for
    p = random_problem(seed=13, n_images=24, n_tr=16, n_te=3)
    for ridge in [(1e-3, 1e-2), (1e-5, 1e-5)]:
        kw = dict(inner_time=inner_time, ridge=ridge, normalize_ntk=normalize_ntk, normalize_mnk=normalize_mnk)
        want = ref(p, **kw)
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(call(p, solver="lowrank", **kw), want, rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(call(p, solver="dense", **kw), want, rtol=0, atol=1e-8 * scale)


def test_lowrank_solver_few_tasks_and_auto_choice(monkeypatch):
    import mnk.methods.mnk as meta

    p = random_problem(seed=14, n_images=60, n_tr=3)  # M < U: also exact
    np.testing.assert_allclose(call(p, solver="lowrank"), ref(p), rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="lowrank.*needs meta_time=inf"):
        call(p, solver="lowrank", meta_time=1.0)
    with pytest.raises(ValueError, match="solver must be"):
        call(p, solver="cg")
    seen = []
    orig = meta._lowrank_meta_term
    monkeypatch.setattr(meta, "_lowrank_meta_term", lambda *a: seen.append(1) or orig(*a))
    call(p)  # M = 12 < 2U: dense
    assert not seen
    q = random_problem(seed=15, n_images=10, n_tr=8)  # M = 32 > 2U = 20: lowrank
    call(q)
    assert seen
    call(q, meta_time=1.0)  # finite meta_time: always dense
    assert len(seen) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("solver,meta_time", [("dense", INF), ("dense", 2.0), ("lowrank", INF)])
def test_cuda_matches_cpu(solver, meta_time):
    p = random_problem(seed=16, n_images=24, n_tr=16, n_te=3)
    kw = dict(solver=solver, meta_time=meta_time, inner_time=0.7)
    np.testing.assert_allclose(call(p, device="cuda", **kw), call(p, device="cpu", **kw), rtol=0, atol=1e-8)


@pytest.mark.parametrize("inner_time,normalize_ntk,normalize_mnk",
                         list(itertools.product([INF, 0.7], [True, False], [True, False])))
def test_mnk_gram_matches_reference_blocks(inner_time, normalize_ntk, normalize_mnk):
    """mnk_gram(train tasks) is the Phin the reference uses; check the block formula loop-wise."""
    p = random_problem(seed=17, n_tr=3)
    K, S, Q, (r1, r2) = p["K"], p["trS"], p["trQ"], (1e-3, 1e-2)
    if normalize_ntk:
        d = np.sqrt(np.diag(K) + r1)
        Kn = (K + r1 * np.eye(len(K))) / np.outer(d, d)
    else:
        Kn = K
    T = [_ref_fun_matrix(Kn[np.ix_(s, s)], inner_time, r1) for s in S]
    Phi = np.block([[Kn[np.ix_(Q[i], Q[j])] - Kn[np.ix_(Q[i], S[i])] @ T[i] @ Kn[np.ix_(S[i], Q[j])]
                     - Kn[np.ix_(Q[i], S[j])] @ T[j].T @ Kn[np.ix_(S[j], Q[j])]
                     + Kn[np.ix_(Q[i], S[i])] @ T[i] @ Kn[np.ix_(S[i], S[j])] @ T[j].T @ Kn[np.ix_(S[j], Q[j])]
                     for j in range(3)] for i in range(3)])
    if normalize_mnk:
        e = np.sqrt(np.diag(Phi) + r2)
        Phi = (Phi + r2 * np.eye(len(Phi))) / np.outer(e, e)
    got = mnk_gram(K, S, Q, MNKOptions(inner_time=inner_time, ridge=(r1, r2), normalize_ntk=normalize_ntk,
                                       normalize_mnk=normalize_mnk))
    np.testing.assert_allclose(got, Phi, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got, got.T, atol=1e-12)


def test_normalized_kernel_block_is_step_one_in_the_given_order():
    from mnk.methods.mnk import normalized_kernel_block

    p = random_problem(seed=19)
    images = np.array([7, 3, 3, 11])  # order kept, repeats allowed
    r1 = 1e-2
    K = p["K"][np.ix_(images, images)]
    d = np.sqrt(np.diag(K) + r1)
    want = (K + r1 * (images[:, None] == images[None, :])) / np.outer(d, d)
    np.testing.assert_allclose(normalized_kernel_block(p["K"], images, MNKOptions(ridge=(r1, 0.0))), want, atol=1e-14)


# ------------------------------------------------- the meta term's two limits and its size


def _meta(p, **kw):
    per_task, meta = mnk_terms(p["K"], TaskSet(p["trS"], p["trQ"], p["trYs"], p["trYq"]),
                               TaskSet(p["teS"], p["teQ"], p["teYs"]), MNKOptions(**kw))
    return per_task, meta


def test_terms_are_the_reference_prediction_split_into_per_task_and_meta():
    p = random_problem(seed=11)
    for kw in [dict(), dict(inner_time=0.6, meta_time=2.0, ridge=(1e-4, 1e-2))]:
        per_task, meta = _meta(p, **kw)
        no_meta = ref(p, **{**kw, "meta_time": 0.0})  # the reference with the meta term switched off
        np.testing.assert_allclose(per_task, no_meta, atol=1e-10)
        np.testing.assert_allclose(per_task + meta, ref(p, **kw), atol=1e-8)
        np.testing.assert_allclose(call(p, **kw), per_task + meta, rtol=0, atol=0)


def _raw_phi_test_train(p, inner_time=INF, r1=1e-5):
    """Phi[test queries, train queries], unnormalised, from mnk_gram over all tasks."""
    S, Q = np.concatenate([p["trS"], p["teS"]]), np.concatenate([p["trQ"], p["teQ"]])
    phi = mnk_gram(p["K"], S, Q, MNKOptions(inner_time=inner_time, ridge=(r1, 0.0), normalize_mnk=False))
    m = p["trQ"].size
    return phi[m:, :m]


@pytest.mark.parametrize("solver", ["dense", "lowrank"])
def test_meta_term_vanishes_as_r2_grows_as_phi_r_over_r2_squared(solver):
    """With normalize_mnk, meta = De Phi_et (Phi + Lam)^-1 D^-1 R, Lam = r2 (1 + r2 + Phi_pp):
    as r2 -> inf it falls like Phi_et R / r2^2 (the residuals R of the training tasks)."""
    p = random_problem(seed=12)
    R = (p["trYq"] - ref(dict(p, teS=p["trS"], teQ=p["trQ"], teYs=p["trYs"]), meta_time=0.0)).reshape(-1, 2)
    limit = (_raw_phi_test_train(p) @ R).reshape(3, 4, 2)
    norms = []
    for r2 in [1e-2, 1.0, 1e2, 1e4, 1e6]:
        per_task, meta = _meta(p, ridge=(1e-5, r2), solver=solver)
        norms.append(np.linalg.norm(meta) / np.linalg.norm(per_task))
        if r2 >= 1e4:
            np.testing.assert_allclose(meta * r2**2, limit, rtol=5e-3 if r2 == 1e4 else 1e-5,
                                       atol=1e-6 * np.abs(limit).max())
    assert all(a > b for a, b in zip(norms, norms[1:])) and norms[-1] < 1e-10 < norms[0]


def test_meta_term_vanishes_as_meta_time_goes_to_zero_at_its_first_order_rate():
    """(Phin + r2)^-1 (I - exp(-t Phin)) R = t Phin (Phin + r2)^-1 R + O(t^2): the meta term is
    linear in a short meta-training time, with the slope written out from mnk_gram's blocks."""
    p = random_problem(seed=13)
    r1, r2 = 1e-5, 1e-2
    S, Q = np.concatenate([p["trS"], p["teS"]]), np.concatenate([p["trQ"], p["teQ"]])
    phin = mnk_gram(p["K"], S, Q, MNKOptions(ridge=(r1, r2)))
    m = p["trQ"].size
    P, Pet = phin[:m, :m], phin[m:, :m]
    R = (p["trYq"] - ref(dict(p, teS=p["trS"], teQ=p["trQ"], teYs=p["trYs"]), meta_time=0.0)).reshape(-1, 2)
    slope = (Pet @ np.linalg.solve(P + r2 * np.eye(m), P @ R)).reshape(3, 4, 2)
    for t in [1e-3, 1e-5]:
        _, meta = _meta(p, ridge=(r1, r2), meta_time=t)
        np.testing.assert_allclose(meta / t, slope, rtol=0, atol=20 * t * np.abs(slope).max())
    _, meta = _meta(p, ridge=(r1, r2), meta_time=0.0)
    assert not meta.any()


def test_meta_share_is_the_norm_ratio_of_the_reference_terms():
    from mnk.study.selection import meta_share

    p = random_problem(seed=14)
    for kw in [dict(), dict(meta_time=1.0, ridge=(1e-5, 0.1))]:
        full, per_task = ref(p, **kw), ref(p, **{**kw, "meta_time": 0.0})
        direct = np.sqrt(((full - per_task) ** 2).sum() / (per_task**2).sum())
        assert meta_share(*_meta(p, **kw)) == pytest.approx(direct, rel=1e-8)
    assert meta_share(np.ones(3), np.zeros(3)) == 0.0 and math.isnan(meta_share(np.zeros(3), np.ones(3)))


def test_consistent_targets_let_the_meta_term_cut_the_error_of_per_task_regression():
    """A family where targets mean the same in every task: y = <w, x> + b_task, one support
    point per task. Per-task regression cannot learn w from one point; the meta term learns it
    from the training tasks' residuals, so the MNK's query error is far below per-task's."""
    rng = np.random.default_rng(15)
    dim, n_tr, n_te, ns, nq = 4, 40, 20, 1, 6
    w = rng.standard_normal(dim)
    n_tasks = n_tr + n_te
    X = rng.standard_normal((n_tasks * (ns + nq), dim))
    y = X @ w + np.repeat(0.3 * rng.standard_normal(n_tasks), ns + nq)
    K = X @ X.T / dim + 1.0  # linear kernel plus a constant (the task offset)
    idx = np.arange(len(X)).reshape(n_tasks, ns + nq)
    S, Q = idx[:, :ns], idx[:, ns:]
    Y = y[:, None]
    train = TaskSet(S[:n_tr], Q[:n_tr], Y[S[:n_tr]], Y[Q[:n_tr]])
    test = TaskSet(S[n_tr:], Q[n_tr:], Y[S[n_tr:]])
    options = MNKOptions(ridge=(1e-4, 1e-3), normalize_ntk=False, normalize_mnk=False)
    per_task, meta = mnk_terms(K, train, test, options)
    truth = Y[Q[n_tr:]]
    per_task_mse, mnk_mse = ((per_task - truth) ** 2).mean(), ((per_task + meta - truth) ** 2).mean()
    assert mnk_mse < 0.2 * per_task_mse
