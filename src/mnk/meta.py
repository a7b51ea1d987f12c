"""Meta Neural Kernel (MNK) regression: few-shot predictions from a base kernel.

Wang, Sun & Li (2020), "Global Convergence and Induced Kernels of Gradient-Based
Meta-Learning with Deep Neural Nets" (arXiv 2006.14606). In the infinite-width limit,
MAML with an inner loop of gradient flow for time ``inner_time`` and meta-training by
gradient flow for time ``meta_time`` is kernel regression with the Meta Neural Kernel
(MNK) ``Phi`` built from the base NTK ``K``. :func:`mnk_predict` computes that
prediction, vectorised over tasks.

Exact definition (this is the contract tested in tests/test_meta.py)
--------------------------------------------------------------------
Notation: ``r1, r2 = ridge``; ``X_i``/``X'_i`` support/query images of task ``i``;
``Y_i``/``Y'_i`` their targets. Functions of symmetric matrices are taken through the
eigendecomposition.

1. Base kernel. With ``normalize_ntk``:
   ``Kn[a, b] = (K[a, b] + r1 [a == b]) / sqrt((K[a, a] + r1) (K[b, b] + r1))``, where
   ``a == b`` compares *image indices* (an image that appears in several tasks is one
   image), so ``Kn`` has unit diagonal. Without it, ``Kn = K`` (``r1`` is then not added
   here).
2. Inner loop. ``T_i = (Kn[X_i, X_i] + r1 I)^-1 (I - exp(-inner_time Kn[X_i, X_i]))``
   (``T_i = (Kn[X_i, X_i] + r1 I)^-1`` for ``inner_time = inf``; with ``r1 = 0`` and finite
   time the eigenvalue function ``(1 - exp(-t l)) / l`` is continued by ``t`` at ``l = 0``,
   which is the pseudo-inverse form of the paper). ``T_i`` is symmetric.
   Task output: ``f_i = Kn[X'_i, X_i] T_i Y_i``.
   So ``r1`` enters twice when ``normalize_ntk`` is on (before normalising, and in the
   per-task solve) and once (in the per-task solve) when it is off.
3. MNK between tasks ``i`` and ``j`` (query positions), over training and test tasks:
   ``Phi_ij = Kn[X'_i,X'_j] - Kn[X'_i,X_i] T_i Kn[X_i,X'_j] - Kn[X'_i,X_j] T_j Kn[X_j,X'_j]
   + Kn[X'_i,X_i] T_i Kn[X_i,X_j] T_j Kn[X_j,X'_j]``.
   Rows/columns of ``Phi`` are (task, query) *positions*: the same image in two tasks
   gives two positions.
4. With ``normalize_mnk``: ``Phin[p, q] = (Phi[p, q] + r2 [p == q]) /
   sqrt((Phi[p, p] + r2) (Phi[q, q] + r2))`` (positions ``p, q``; unit diagonal). Without
   it ``Phin = Phi``. Only ``Phin[train, train]``, ``Phin[test, train]`` and the diagonal
   of ``Phi[test, test]`` are ever formed.
5. Prediction for the test queries:
   ``Phin[test, train] (Phin[train, train] + r2 I)^-1 (I - exp(-meta_time Phin[train, train]))
   (Y'_train - f_train) + f_test`` (without the exponential factor for ``meta_time = inf``).
   ``r2`` enters twice with ``normalize_mnk``, once without it, mirroring ``r1``.

With ``ridge=(0, 0)``, no normalisation and finite times this is exactly the
infinite-width limit of MAML trained by gradient flow from a network whose output is zero
at initialisation (checked against real networks in tests/test_theory.py).

Implementation
--------------
The sub-kernel over the distinct images used is gathered once (``U x U``). The per-task
matrices are batched (Cholesky for infinite times, ``eigh`` for finite times). ``Phi`` is
assembled through the factorisation ``Phi = V^T Kn V``, ``V[:, p] = e_{x'_p} - e_{X_i}
G_i[:, p]`` with ``G_i = T_i Kn[X_i, X'_i]``, i.e. row block ``i`` of ``Phi`` is
``A_i[:, X'_j] - A_i[:, X_j] G_j`` with ``A_i = Kn[X'_i, :] - G_i^T Kn[X_i, :]``; rows are
processed in chunks of tasks (no loop over task pairs).

Two solvers for the meta term (``solver=``):

* ``"dense"``: forms ``Phin[train, train]`` (``M x M``, ``M = n_train_tasks * n_query``,
  ``8 M^2`` bytes in float64) and ``Phin[test, train]``; Cholesky solve (in place by
  LAPACK through scipy on CPU, no copy; torch on CUDA, one copy), or a dense ``eigh`` for
  finite ``meta_time`` (about 10x the Cholesky's cost). Memory limits it: 600 5-way
  1-shot tasks with 95 queries (M = 57,000) need ~26 GiB for the block alone.
* ``"lowrank"`` (``meta_time = inf`` only): ``Phi`` has rank <= U (the number of distinct
  images), so with ``r2 > 0`` the solve is done in the ``U x U`` image space by the
  push-through identity (see :func:`_lowrank_meta_term`): ``O(U^3)`` time, ``4 U^2``
  memory, linear in the number of tasks. Exact (same formula), agrees with "dense" to
  ~1e-9 in the tests and benchmark.
* ``"auto"`` (default): "lowrank" when ``meta_time = inf`` and ``M > 2 U``, else "dense".
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import scipy.linalg
import torch

from mnk.metrics import per_task_accuracy

__all__ = [
    "NotPositiveDefiniteError",
    "mnk_predict",
    "mnk_gram",
    "mnk_memory_bytes",
    "one_hot",
    "class_centroids",
    "class_centroid_targets",
    "predict_labels",
    "per_task_accuracy",
]

_CHUNK_BYTES = 256 * 2**20  # working memory per row chunk of the Phi assembly


class NotPositiveDefiniteError(np.linalg.LinAlgError, ValueError):
    """A matrix that must be positive definite failed its Cholesky factorisation."""


# --------------------------------------------------------------------------- checks


def _check_times(inner_time, meta_time):
    for name, t in (("inner_time", inner_time), ("meta_time", meta_time)):
        t = float(t)
        if math.isnan(t) or t < 0:
            raise ValueError(f"{name} must be >= 0 (or inf), got {t}")
    return float(inner_time), float(meta_time)


def _check_ridge(ridge):
    try:
        r1, r2 = (float(r) for r in ridge)
    except (TypeError, ValueError):
        raise ValueError(f"ridge must be a pair (r1, r2) of floats, got {ridge!r}") from None
    for name, r in (("ridge[0] (r1)", r1), ("ridge[1] (r2)", r2)):
        if not math.isfinite(r) or r < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {r}")
    return r1, r2


def _check_index(name, idx, n_images):
    arr = np.asarray(idx)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D index array (n_tasks, n_points), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer index array into K, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.shape[1] == 0 and arr.shape[0] > 0:
        raise ValueError(f"{name} has no points per task (shape {arr.shape})")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_images:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name} contains index {bad} out of range for K with {n_images} rows "
                f"(valid: 0..{n_images - 1})"
            )
    return arr


def _check_targets(name, y, n_tasks, n_points, c=None):
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 3:
        raise ValueError(f"{name} must have shape (n_tasks, n_points, c), got shape {y.shape}")
    if y.shape[:2] != (n_tasks, n_points) or (c is not None and y.shape[2] != c):
        want = f"({n_tasks}, {n_points}, {'c' if c is None else c})"
        raise ValueError(f"{name} has shape {y.shape}, expected {want} from the index arrays")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN/inf")
    return y


def _check_finite_kernel(KU: np.ndarray, U: np.ndarray, what: str = "kernel"):
    bad = ~np.isfinite(KU)
    if bad.any():
        rows, cols = np.nonzero(bad)
        examples = ", ".join(f"[{U[r]}, {U[c]}]" for r, c in zip(rows[:5], cols[:5]))
        raise ValueError(
            f"{what} contains NaN/inf at {examples} ({int(bad.sum())} non-finite entries "
            f"among the {KU.shape[0]}x{KU.shape[1]} entries used)"
        )


# ------------------------------------------------------------------------ helpers


def _eig_fun(lam: torch.Tensor, t: float, r: float) -> torch.Tensor:
    """(1 - exp(-t lam)) / (lam + r), continued by t where lam + r == 0; 1/(lam+r) if t=inf."""
    den = lam + r
    if math.isinf(t):
        return 1.0 / den
    num = -torch.expm1(-t * lam)
    tiny = torch.finfo(lam.dtype).tiny ** 0.5
    safe = den.abs() > tiny
    return torch.where(safe, num / torch.where(safe, den, torch.ones_like(den)), torch.full_like(den, t))


def _apply_T(Kss: torch.Tensor, B: torch.Tensor, t: float, r: float, what: str) -> torch.Tensor:
    """Batched T B with T = (Kss + r I)^-1 (I - exp(-t Kss)); Kss (n, s, s), B (n, s, m)."""
    s = Kss.shape[-1]
    if math.isinf(t):
        A = Kss + r * torch.eye(s, dtype=Kss.dtype, device=Kss.device)
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            bad = torch.nonzero(info).flatten()[:5].tolist()
            raise NotPositiveDefiniteError(
                f"{what} (Kn[X,X] + r1 I) is not positive definite for tasks {bad} "
                f"(Cholesky failed); use a larger ridge r1 (currently {r:g})"
            )
        return torch.cholesky_solve(B, L)
    lam, vec = torch.linalg.eigh(Kss)
    h = _eig_fun(lam, t, r)
    return vec @ (h.unsqueeze(-1) * (vec.transpose(-1, -2) @ B))


class _Group:
    """Tasks of one split, as local indices into the gathered kernel, with G_i = T_i Kn[X_i,X'_i]."""

    def __init__(self, S, Q, G, f):
        self.S, self.Q, self.G, self.f = S, Q, G, f  # (n,s) (n,q) (n,s,q) (n,q,c)
        self.n, self.ns = S.shape
        self.nq = Q.shape[1]
        self.M = self.n * self.nq


def _make_group(Kn, S, Q, Ysup, t_inner, r1, what):
    Kss = Kn[S[:, :, None], S[:, None, :]]
    Ksq = Kn[S[:, :, None], Q[:, None, :]]
    G = _apply_T(Kss, Ksq, t_inner, r1, what)  # T_i Kn[X_i, X'_i]
    f = G.transpose(-1, -2) @ Ysup  # Kn[X'_i,X_i] T_i Y_i  (T symmetric)
    return _Group(S, Q, G, f), Kss, Ksq


def _phi_block(Kn, a: _Group, b: _Group, out: torch.Tensor | None = None) -> torch.Tensor:
    """Phi[a, b] for all task pairs, as an (a.M, b.M) matrix; row chunks of a's tasks."""
    if out is None:
        out = torch.empty(a.M, b.M, dtype=Kn.dtype, device=Kn.device)
    cq = b.Q.reshape(-1)
    cs = b.S.reshape(-1)
    per_task = (a.nq + a.ns) * (Kn.shape[0] + 2 * (b.M + b.n * b.ns)) * 8
    chunk = max(1, min(a.n, _CHUNK_BYTES // max(per_task, 1)))
    for lo in range(0, a.n, chunk):
        hi = min(a.n, lo + chunk)
        n = hi - lo
        qa, sa, Ga = a.Q[lo:hi], a.S[lo:hi], a.G[lo:hi]
        # A_i = Kn[X'_i, :] - G_i^T Kn[X_i, :] (all image columns), then the columns b needs
        A = Kn.index_select(0, qa.reshape(-1)).view(n, a.nq, -1)
        A = A - Ga.transpose(-1, -2) @ Kn.index_select(0, sa.reshape(-1)).view(n, a.ns, -1)
        Aq = A.index_select(2, cq)
        As = A.index_select(2, cs)
        del A
        # Phi_ij = A_i[:, X'_j] - A_i[:, X_j] G_j
        corr = torch.einsum("iqjs,jsp->iqjp", As.view(n, a.nq, b.n, b.ns), b.G)
        out[lo * a.nq : hi * a.nq] = (Aq - corr.reshape(n, a.nq, b.M)).reshape(n * a.nq, b.M)
    return out


def _phi_diag(Kn, g: _Group, Kss, Ksq) -> torch.Tensor:
    """diag(Phi_ii) for each task of g, flattened to (g.M,)."""
    kqq = Kn[g.Q, g.Q]  # (n, q): diagonal entries
    cross = (g.G * Ksq).sum(dim=1)  # diag(Kn[X',X] T Kn[X,X'])
    quad = (g.G * (Kss @ g.G)).sum(dim=1)  # diag(G^T Kss G)
    return (kqq - 2.0 * cross + quad).reshape(-1)


def _normalized_subkernel(K, index_arrays, r1, normalize_ntk, dev):
    """Kn over the distinct images U used (step 1 of the module docstring), on dev; and U."""
    U = np.unique(np.concatenate([a.ravel() for a in index_arrays]))
    KU = np.asarray(K[np.ix_(U, U)], dtype=np.float64)
    _check_finite_kernel(KU, U, "kernel")
    Kn = torch.as_tensor(KU, device=dev)
    del KU
    if normalize_ntk:
        diag = torch.diagonal(Kn) + r1
        if bool((diag <= 0).any()):
            bad = U[torch.nonzero(diag <= 0).flatten()[:5].cpu().numpy()].tolist()
            raise ValueError(
                f"kernel diagonal + r1 must be > 0 to normalise (normalize_ntk=True); "
                f"not so at images {bad}"
            )
        Kn.diagonal().add_(r1)
        d = diag.rsqrt()
        Kn.mul_(d[:, None]).mul_(d[None, :])
        Kn.diagonal().fill_(1.0)
    return Kn, U


def _to_device(device):
    if device is None:
        return torch.device("cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------- API


def mnk_predict(
    K,
    train_support,
    train_query,
    train_support_y,
    train_query_y,
    test_support,
    test_query,
    test_support_y,
    *,
    inner_time: float = math.inf,
    meta_time: float = math.inf,
    ridge: Sequence[float] = (1e-5, 1e-5),
    normalize_ntk: bool = True,
    normalize_mnk: bool = True,
    device=None,
    solver: str = "auto",
) -> np.ndarray:
    """MNK regression prediction of the test queries, shape (n_test_tasks, n_test_query, c).

    See the module docstring for the exact formulas and where ``ridge = (r1, r2)`` enters.
    ``K`` is the base kernel over all images (N x N, indexable with ``np.ix_``, e.g. an
    ndarray or memmap); index arrays are (n_tasks, n_points) integers into K; targets are
    (n_tasks, n_points, c). ``device``: torch device for the computation ("cpu",
    "cuda"); float64 throughout. ``solver``: "dense" (forms Phi[train, train], M x M),
    "lowrank" (meta_time=inf only; never forms an M x M matrix, works in the U x U image
    space, see :func:`_lowrank_meta_term`) or "auto" (lowrank when meta_time=inf and
    M > 2 U, U = number of distinct images used; dense otherwise). Raises ValueError for non-finite kernels and bad shapes
    or indices, :class:`NotPositiveDefiniteError` when a Cholesky fails.
    """
    t_in, t_meta = _check_times(inner_time, meta_time)
    r1, r2 = _check_ridge(ridge)
    shape = getattr(K, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"K must be a square (N, N) kernel matrix, got shape {shape}")
    N = int(shape[0])

    trS = _check_index("train_support", train_support, N)
    trQ = _check_index("train_query", train_query, N)
    teS = _check_index("test_support", test_support, N)
    teQ = _check_index("test_query", test_query, N)
    if trS.shape[0] != trQ.shape[0]:
        raise ValueError(
            f"train_support has {trS.shape[0]} tasks but train_query has {trQ.shape[0]}"
        )
    if teS.shape[0] != teQ.shape[0]:
        raise ValueError(f"test_support has {teS.shape[0]} tasks but test_query has {teQ.shape[0]}")
    if teS.shape[0] == 0:
        raise ValueError("no test tasks (test_support has 0 rows)")
    ysup_te = _check_targets("test_support_y", test_support_y, *teS.shape)
    c = ysup_te.shape[2]
    ysup_tr = _check_targets("train_support_y", train_support_y, *trS.shape, c)
    yq_tr = _check_targets("train_query_y", train_query_y, *trQ.shape, c)

    dev = _to_device(device)
    dt = torch.float64

    # gather the kernel over the distinct images used, once
    Kn, U = _normalized_subkernel(K, [trS, trQ, teS, teQ], r1, normalize_ntk, dev)
    loc = lambda a: torch.as_tensor(np.searchsorted(U, a), device=dev)  # noqa: E731

    T = lambda a: torch.tensor(np.asarray(a), dtype=dt, device=dev)  # noqa: E731  (copies)
    train, Kss_tr, Ksq_tr = _make_group(Kn, loc(trS), loc(trQ), T(ysup_tr), t_in, r1, "train task kernel")
    test, Kss_te, Ksq_te = _make_group(Kn, loc(teS), loc(teQ), T(ysup_te), t_in, r1, "test task kernel")
    f_test = test.f
    if train.n == 0:
        return f_test.cpu().numpy()

    if solver not in ("auto", "dense", "lowrank"):
        raise ValueError(f"solver must be 'auto', 'dense' or 'lowrank', got {solver!r}")
    if solver == "lowrank" and not math.isinf(t_meta):
        raise ValueError("solver='lowrank' needs meta_time=inf (use solver='dense' for finite meta_time)")
    if solver == "auto":
        solver = "lowrank" if (math.isinf(t_meta) and train.M > 2 * len(U)) else "dense"
    if solver == "lowrank":
        R = (T(yq_tr) - train.f).reshape(train.n, train.nq, c)
        pred = _lowrank_meta_term(Kn, train, test, R, Kss_tr, Ksq_tr, Kss_te, Ksq_te, r2, normalize_mnk)
        return (pred + f_test).cpu().numpy()

    # Phi blocks: train-train (dense, M x M), test-train, and the test diagonal
    P = _phi_block(Kn, train, train)
    Pet = _phi_block(Kn, test, train)
    if not (math.isfinite(float(P.sum())) and math.isfinite(float(Pet.sum()))):
        raise ValueError("MNK kernel Phi contains NaN/inf (check K's scale and the ridge r1)")
    del Kss_tr, Ksq_tr
    Pdiag_tr = torch.diagonal(P).clone()
    if normalize_mnk:
        Pdiag_te = _phi_diag(Kn, test, Kss_te, Ksq_te)
        dtr = Pdiag_tr + r2
        dte = Pdiag_te + r2
        if bool((dtr <= 0).any()) or bool((dte <= 0).any()):
            raise ValueError(
                "MNK diagonal + r2 must be > 0 to normalise (normalize_mnk=True): a task's "
                "query is (numerically) in the span of its support; use a larger ridge r2"
            )
        dtr, dte = dtr.rsqrt(), dte.rsqrt()
        P.mul_(dtr[:, None]).mul_(dtr[None, :])
        P.diagonal().fill_(1.0)
        Pet.mul_(dte[:, None]).mul_(dtr[None, :])
    del Kn

    R = (T(yq_tr) - train.f).reshape(train.M, c)
    if math.isinf(t_meta):
        P.diagonal().add_(r2)
        alpha = _chol_solve_inplace(P, R, r2)
    else:
        lam, vec = torch.linalg.eigh(P)
        del P
        alpha = vec @ (_eig_fun(lam, t_meta, r2)[:, None] * (vec.T @ R))
    pred = Pet @ alpha
    return (pred.reshape(test.n, test.nq, c) + f_test).cpu().numpy()


def mnk_gram(
    K,
    support,
    query,
    *,
    inner_time: float = math.inf,
    ridge: Sequence[float] = (1e-5, 1e-5),
    normalize_ntk: bool = True,
    normalize_mnk: bool = True,
    device=None,
) -> np.ndarray:
    """The MNK Gram matrix Phin over the query positions of the given tasks.

    support (n_tasks, n_support), query (n_tasks, n_query) index K; returns the
    (n_tasks * n_query, n_tasks * n_query) matrix of steps 1-4 of the module docstring
    (task-major order: row ``i * n_query + q``), i.e. ``Phin`` with unit diagonal when
    ``normalize_mnk``, else ``Phi``. For inspection and figures; the solver never forms
    the test-test blocks.
    """
    t_in, _ = _check_times(inner_time, 0.0)
    r1, r2 = _check_ridge(ridge)
    shape = getattr(K, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"K must be a square (N, N) kernel matrix, got shape {shape}")
    S = _check_index("support", support, int(shape[0]))
    Q = _check_index("query", query, int(shape[0]))
    if S.shape[0] != Q.shape[0]:
        raise ValueError(f"support has {S.shape[0]} tasks but query has {Q.shape[0]}")
    dev = _to_device(device)
    Kn, U = _normalized_subkernel(K, [S, Q], r1, normalize_ntk, dev)
    loc = lambda a: torch.as_tensor(np.searchsorted(U, a), device=dev)  # noqa: E731
    zeros = torch.zeros(S.shape[0], S.shape[1], 1, dtype=Kn.dtype, device=dev)
    g, _, _ = _make_group(Kn, loc(S), loc(Q), zeros, t_in, r1, "task kernel")
    P = _phi_block(Kn, g, g)
    if normalize_mnk:
        d = torch.diagonal(P) + r2
        if bool((d <= 0).any()):
            raise ValueError("MNK diagonal + r2 must be > 0 to normalise; use a larger ridge r2")
        d = d.rsqrt()
        P.mul_(d[:, None]).mul_(d[None, :])
        P.diagonal().fill_(1.0)
    return P.cpu().numpy()


def _lowrank_meta_term(Kn, tr: _Group, te: _Group, R, Kss_tr, Ksq_tr, Kss_te, Ksq_te, r2, normalize_mnk):
    """Phin[test, train] (Phin[train, train] + r2 I)^-1 R without any M x M matrix.

    Phi = V^T Kn V with V (U x M) sparse: column p = (task i, query q) is
    e_{x'_q} - sum_s G_i[s, q] e_{x_s}. With D = diag((Phi_pp + r2)^-1/2) (identity
    without normalize_mnk), Phin[train,train] + r2 I = W^T Kn W + Lam with W = V_t D_t and
    Lam = diag(r2 D_t^2 + r2) (r2 I without normalisation), and Phin[test,train] =
    D_e V_e^T Kn W. The push-through identity W (Lam + W^T Kn W)^-1 = (I + H Kn)^-1 W Lam^-1
    with H = W Lam^-1 W^T (U x U, a scatter of per-task (nq+ns)^2 blocks) gives

        prediction = D_e V_e^T Kn u,   u = (I + H Kn)^-1 W Lam^-1 R   (one U x U LU solve).

    I + H Kn is invertible for any PSD Kn (its eigenvalues are 1 + eig(Kn^1/2 H Kn^1/2)), so
    no factorisation of Kn is needed. Cost O(U^3) time and 4 U^2 memory, O(M) in the tasks.
    """
    dev, dt = Kn.device, Kn.dtype
    Uimg = Kn.shape[0]
    if normalize_mnk:
        dtr = (_phi_diag(Kn, tr, Kss_tr, Ksq_tr) + r2).view(tr.n, tr.nq)
        dte = (_phi_diag(Kn, te, Kss_te, Ksq_te) + r2).view(te.n, te.nq)
        if bool((dtr <= 0).any()) or bool((dte <= 0).any()):
            raise ValueError(
                "MNK diagonal + r2 must be > 0 to normalise (normalize_mnk=True): a task's "
                "query is (numerically) in the span of its support; use a larger ridge r2"
            )
        dtr, dte = dtr.rsqrt(), dte.rsqrt()
        lam = r2 * dtr**2 + r2
    else:
        dtr = torch.ones(tr.n, tr.nq, dtype=dt, device=dev)
        dte = torch.ones(te.n, te.nq, dtype=dt, device=dev)
        lam = torch.full((tr.n, tr.nq), r2, dtype=dt, device=dev)
    if bool((lam <= 0).any()):
        raise NotPositiveDefiniteError(
            "solver='lowrank' needs r2 > 0 (Phi[train, train] has rank <= number of images); "
            "use a larger ridge r2 or solver='dense'"
        )
    # per task: B_i = [diag(s); -G_i diag(s)] ((nq+ns) x nq), s = D_t / sqrt(Lam)
    sc = dtr * lam.rsqrt()  # (n, nq)
    B = torch.cat([torch.diag_embed(sc), -tr.G * sc[:, None, :]], dim=1)  # (n, nq+ns, nq)
    J = torch.cat([tr.Q, tr.S], dim=1)  # (n, nq+ns) image (local) indices
    H = torch.zeros(Uimg, Uimg, dtype=dt, device=dev)
    H.index_put_((J[:, :, None].expand(-1, -1, J.shape[1]), J[:, None, :].expand(-1, J.shape[1], -1)),
                 B @ B.transpose(-1, -2), accumulate=True)
    c = R.shape[-1]
    b = torch.zeros(Uimg, c, dtype=dt, device=dev)
    b.index_put_((J,), B @ (R * lam.rsqrt()[..., None]), accumulate=True)  # W Lam^-1 R
    A = H @ Kn
    del H
    A.diagonal().add_(1.0)
    u = torch.linalg.solve(A, b)
    del A
    v = Kn @ u  # (U, c)
    out = v[te.Q] - te.G.transpose(-1, -2) @ v[te.S]  # V_e^T v, (n_te, nq, c)
    return out * dte[..., None]


def _chol_solve_inplace(A: torch.Tensor, B: torch.Tensor, r2: float) -> torch.Tensor:
    msg = (
        f"MNK train-train matrix (Phin + r2 I, size {A.shape[0]}) is not positive definite "
        f"(Cholesky failed); use a larger ridge r2 (currently {r2:g})"
    )
    if A.device.type == "cpu":
        a = A.numpy()  # shares memory: LAPACK factorises in place, no copy
        if not np.isfortran(a):
            a = a.T  # symmetric: the transpose view is Fortran-ordered, same matrix
        try:
            cf = scipy.linalg.cho_factor(a, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise NotPositiveDefiniteError(msg) from None
        return torch.from_numpy(scipy.linalg.cho_solve(cf, B.numpy(), check_finite=False))
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise NotPositiveDefiniteError(msg)
    return torch.cholesky_solve(B, L)


def mnk_memory_bytes(n_train_tasks: int, n_test_tasks: int, n_query: int, n_images: int) -> int:
    """Approximate peak memory (bytes, float64) of :func:`mnk_predict` on CPU, solver="dense".

    (solver="lowrank" needs about ``4 * 8 * U^2`` bytes, U = distinct images used.)

    Dominated by the dense train-train MNK block (M x M, M = n_train_tasks * n_query),
    plus the test-train block and the gathered base kernel. On CUDA add another M x M
    for the Cholesky factor (or the eigenvectors when meta_time is finite; on CPU eigh
    needs that copy too).
    """
    M = n_train_tasks * n_query
    Me = n_test_tasks * n_query
    return 8 * (M * M + Me * M + n_images * n_images) + _CHUNK_BYTES


# ------------------------------------------------------------------ classification


def one_hot(labels, way: int) -> np.ndarray:
    """One-hot float64 targets: labels (...,) ints in [0, way) -> (..., way)."""
    labels = np.asarray(labels)
    if labels.size and (not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= way):
        raise ValueError(f"labels must lie in [0, {way}), got range [{labels.min()}, {labels.max()}]")
    return np.eye(way, dtype=np.float64)[labels]


def class_centroids(features, labels, way: int) -> np.ndarray:
    """Per-task class centroids: features (n_tasks, n, d), labels (n_tasks, n) -> (n_tasks, way, d).

    Raises ValueError if a class has no point in some task.
    """
    feats = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if feats.ndim != 3 or labels.shape != feats.shape[:2]:
        raise ValueError(
            f"features must be (n_tasks, n, d) and labels (n_tasks, n); got {feats.shape}, {labels.shape}"
        )
    oh = one_hot(labels, way)  # (t, n, way)
    counts = oh.sum(axis=1)  # (t, way)
    if (counts == 0).any():
        t, k = np.argwhere(counts == 0)[0]
        raise ValueError(f"class {k} has no point in task {t}: cannot form its centroid")
    return np.einsum("tnk,tnd->tkd", oh, feats) / counts[:, :, None]


def class_centroid_targets(features, labels, way: int) -> np.ndarray:
    """Targets where each point's target is its class centroid within its task.

    features (n_tasks, n, d) (e.g. label-encoder features of the task's images), labels
    (n_tasks, n) -> (n_tasks, n, d). Pass the support (or support + query) points of a
    task: the centroid is over the points given.
    """
    cent = class_centroids(features, labels, way)
    labels = np.asarray(labels)
    return np.take_along_axis(cent, labels[:, :, None], axis=1)


def predict_labels(pred_query, centroids=None) -> np.ndarray:
    """Assign each predicted query target to the nearest class centroid (Euclidean).

    pred_query (n_tasks, q, d); centroids (n_tasks, way, d), or (way, d) shared by all
    tasks. ``centroids=None`` means argmax over d, which is the nearest centroid for
    one-hot targets (centroids = identity): |p - e_k|^2 = |p|^2 - 2 p_k + 1.
    Returns int64 labels (n_tasks, q).
    """
    p = np.asarray(pred_query, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"pred_query must be (n_tasks, q, d), got shape {p.shape}")
    if centroids is None:
        return p.argmax(axis=-1)
    cent = np.asarray(centroids, dtype=np.float64)
    if cent.ndim == 2:
        cent = np.broadcast_to(cent, (p.shape[0],) + cent.shape)
    if cent.ndim != 3 or cent.shape[0] != p.shape[0] or cent.shape[2] != p.shape[2]:
        raise ValueError(f"centroids shape {cent.shape} does not match pred_query shape {p.shape}")
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 does not change the argmin
    score = 2.0 * np.einsum("tqd,tkd->tqk", p, cent) - (cent**2).sum(-1)[:, None, :]
    return score.argmax(axis=-1)
