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

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from mnk.methods.options import SOLVERS, MNKSection, Setting

__all__ = [
    "DegenerateKernelError",
    "MNKOptions",
    "NotPositiveDefiniteError",
    "TaskSet",
    "check_kernel_contrast",
    "mnk_gram",
    "mnk_memory_bytes",
    "mnk_predict",
    "mnk_terms",
    "normalized_kernel_block",
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
    """Tasks of one split, as local indices into the gathered kernel, with their within-task
    blocks Kss = Kn[X_i, X_i], Ksq = Kn[X_i, X'_i] and G_i = T_i Kn[X_i, X'_i]."""

    def __init__(self, S, Q, G, f, Kss, Ksq):
        self.S, self.Q, self.G, self.f = S, Q, G, f  # (n,s) (n,q) (n,s,q) (n,q,c)
        self.Kss, self.Ksq = Kss, Ksq  # (n,s,s) (n,s,q)
        self.n, self.ns = S.shape
        self.nq = Q.shape[1]
        self.M = self.n * self.nq


def _make_group(Kn, S, Q, Ysup, options: "MNKOptions", what) -> _Group:
    Kss = Kn[S[:, :, None], S[:, None, :]]
    Ksq = Kn[S[:, :, None], Q[:, None, :]]
    G = _apply_T(Kss, Ksq, options.inner_time, options.ridge[0], what)  # T_i Kn[X_i, X'_i]
    f = G.transpose(-1, -2) @ Ysup  # Kn[X'_i,X_i] T_i Y_i  (T symmetric)
    return _Group(S, Q, G, f, Kss, Ksq)


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


def _phi_diag(Kn, g: _Group) -> torch.Tensor:
    """diag(Phi_ii) for each task of g, flattened to (g.M,)."""
    kqq = Kn[g.Q, g.Q]  # (n, q): diagonal entries
    cross = (g.G * g.Ksq).sum(dim=1)  # diag(Kn[X',X] T Kn[X,X'])
    quad = (g.G * (g.Kss @ g.G)).sum(dim=1)  # diag(G^T Kss G)
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


# ------------------------------------------------------------------------ options

# A normalised base kernel whose within-task off-diagonal entries all lie within this of
# each other (constant) or of its unit diagonal (no diagonal dominance) carries no
# information: every prediction is the same and the accuracy is exactly chance.
DEGENERATE_TOLERANCE = 1e-6


class DegenerateKernelError(ValueError):
    """The normalised base kernel is constant or has lost its diagonal dominance."""


@dataclass(frozen=True)
class MNKOptions:
    """Options of the MNK solver; see the module docstring for where each one enters.

    ``device``: torch device of the computation (None: CPU); float64 throughout.
    ``solver``: "dense", "lowrank" (``meta_time = inf`` only) or "auto".
    """

    inner_time: float = math.inf
    meta_time: float = math.inf
    ridge: tuple[float, float] = (1e-5, 1e-5)
    normalize_ntk: bool = True
    normalize_mnk: bool = True
    solver: str = "auto"
    device: str | None = None

    def __post_init__(self):
        inner_time, meta_time = _check_times(self.inner_time, self.meta_time)
        object.__setattr__(self, "inner_time", inner_time)
        object.__setattr__(self, "meta_time", meta_time)
        object.__setattr__(self, "ridge", _check_ridge(self.ridge))
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.solver == "lowrank" and not math.isinf(meta_time):
            raise ValueError("solver='lowrank' needs meta_time=inf (use solver='dense' for finite meta_time)")

    @classmethod
    def from_section(cls, section: MNKSection, *, r2: float, device=None) -> "MNKOptions":
        """From the ``mnk`` section (``r1`` and the solver keys) and a ridge r2; converged
        times (a grid point's come with :meth:`at`)."""
        try:
            return cls(ridge=(section.r1, r2), normalize_ntk=section.normalize_ntk,
                       normalize_mnk=section.normalize_mnk, solver=section.solver, device=device)
        except ValueError as exc:
            raise ValueError(f"config section mnk: {exc}") from None

    def replace(self, **changes) -> "MNKOptions":
        return dataclasses.replace(self, **changes)

    def at(self, setting: Setting) -> "MNKOptions":
        """These options at one point of the grid: its ridge r2 and its times."""
        return self.replace(ridge=(self.ridge[0], setting.r2), meta_time=setting.meta_time,
                            inner_time=setting.inner_time)


@dataclass(frozen=True)
class TaskSet:
    """Tasks as index arrays into K with their targets.

    support (n_tasks, n_support) and query (n_tasks, n_query) integers; support_y
    (n_tasks, n_support, c); query_y (n_tasks, n_query, c), needed for training tasks only.
    """

    support: np.ndarray
    query: np.ndarray
    support_y: np.ndarray
    query_y: np.ndarray | None = None


def _check_square(K) -> int:
    shape = getattr(K, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"K must be a square (N, N) kernel matrix, got shape {shape}")
    return int(shape[0])


def _check_task_set(tasks: TaskSet, name: str, n_images: int, c=None, with_query_y=False):
    S = _check_index(f"{name}_support", tasks.support, n_images)
    Q = _check_index(f"{name}_query", tasks.query, n_images)
    if S.shape[0] != Q.shape[0]:
        raise ValueError(f"{name}_support has {S.shape[0]} tasks but {name}_query has {Q.shape[0]}")
    ys = _check_targets(f"{name}_support_y", tasks.support_y, *S.shape, c)
    yq = None
    if with_query_y:
        if tasks.query_y is None:
            raise ValueError(f"{name} tasks need query targets (query_y)")
        yq = _check_targets(f"{name}_query_y", tasks.query_y, *Q.shape, ys.shape[2])
    return S, Q, ys, yq


def check_kernel_contrast(Kn: torch.Tensor, groups) -> dict:
    """Refuse a degenerate base kernel: constant, or without diagonal dominance.

    Looks at the entries the solve always reads, those within each task (support and
    query images), after unit-diagonal normalisation. Returns their spread and median
    (off-diagonal) for the log; raises :class:`DegenerateKernelError` with the numbers.
    """
    offs = []
    for g in groups:
        if g.n == 0:
            continue
        idx = torch.cat([g.S, g.Q], dim=1)
        block = Kn[idx[:, :, None], idx[:, None, :]]
        diag = torch.diagonal(block, dim1=1, dim2=2)
        if bool((diag <= 0).any()):
            raise DegenerateKernelError(
                f"degenerate base kernel: {int((diag <= 0).sum())} diagonal entries are <= 0 "
                f"(largest {float(diag.max()):.3g}); an all-zero or underflowed kernel")
        d = diag.rsqrt()
        block = block * d[:, :, None] * d[:, None, :]
        off = ~torch.eye(idx.shape[1], dtype=torch.bool, device=Kn.device)
        offs.append(block[:, off].reshape(-1))
    off = torch.cat(offs) if offs else torch.zeros(0, dtype=Kn.dtype)
    if off.numel() == 0:
        return {"spread": math.nan, "median": math.nan}
    stats = {"spread": float(off.max() - off.min()), "median": float(off.median())}
    where = f"over the {off.numel()} within-task off-diagonal entries of the normalised base kernel"
    if stats["spread"] <= DEGENERATE_TOLERANCE:
        raise DegenerateKernelError(
            f"degenerate base kernel: constant {where} (all within {stats['spread']:.3g} of "
            f"{stats['median']:.6g}); every prediction would be the same (an all-zero kernel, or a "
            "kernel too deep for float64)")
    if 1.0 - stats["median"] <= DEGENERATE_TOLERANCE:
        raise DegenerateKernelError(
            f"degenerate base kernel: it has lost its diagonal dominance, median entry 1 - "
            f"{1.0 - stats['median']:.3g} {where}; all images look alike (a kernel too deep?)")
    return stats


def _mnk_scales(*diagonals, r2: float):
    """(diag(Phi) + r2)^-1/2 for each diagonal given: the normalisation of step 4."""
    shifted = [d + r2 for d in diagonals]
    if any(bool((s <= 0).any()) for s in shifted):
        raise ValueError(
            "MNK diagonal + r2 must be > 0 to normalise (normalize_mnk=True): a task's "
            f"query is (numerically) in the span of its support; use a larger ridge r2 (now {r2:g})"
        )
    return [s.rsqrt() for s in shifted]


def _resolve_solver(options: MNKOptions, M: int, n_images: int) -> str:
    if options.solver != "auto":
        return options.solver
    return "lowrank" if (math.isinf(options.meta_time) and M > 2 * n_images) else "dense"


# ---------------------------------------------------------------------------- API


def mnk_predict(K, train: TaskSet, test: TaskSet, options: MNKOptions = MNKOptions()) -> np.ndarray:
    """MNK regression prediction of the test queries, shape (n_test_tasks, n_test_query, c).

    See the module docstring for the exact formulas and where ``ridge = (r1, r2)`` enters.
    ``K`` is the base kernel over all images (N x N, indexable with ``np.ix_``, e.g. an
    ndarray or memmap); ``train`` (with query targets) and ``test`` index it. With no
    training task the prediction is the per-task kernel regression (``meta_time = 0``).
    Raises ValueError for non-finite kernels and bad shapes or indices,
    :class:`DegenerateKernelError` for a constant kernel, :class:`NotPositiveDefiniteError`
    when a Cholesky fails.
    """
    per_task, meta = mnk_terms(K, train, test, options)
    return per_task + meta


def mnk_terms(K, train: TaskSet, test: TaskSet, options: MNKOptions = MNKOptions()) -> tuple[np.ndarray, np.ndarray]:
    """The prediction's two terms (step 5), each shaped like :func:`mnk_predict`'s: the per-task
    term ``f_test`` and the meta term ``Phin[test, train] (...)^-1 (Y'_train - f_train)``
    (zeros without training tasks)."""
    o = options
    N = _check_square(K)
    teS, teQ, ys_te, _ = _check_task_set(test, "test", N)
    if teS.shape[0] == 0:
        raise ValueError("no test tasks (test_support has 0 rows)")
    trS, trQ, ys_tr, yq_tr = _check_task_set(train, "train", N, ys_te.shape[2], with_query_y=True)
    dev = torch.device(o.device or "cpu")
    r1 = o.ridge[0]
    # gather the kernel over the distinct images used, once
    Kn, U = _normalized_subkernel(K, [trS, trQ, teS, teQ], r1, o.normalize_ntk, dev)
    loc = lambda a: torch.as_tensor(np.searchsorted(U, a), device=dev)  # noqa: E731
    T = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64, device=dev)  # noqa: E731  (copies)
    tr = _make_group(Kn, loc(trS), loc(trQ), T(ys_tr), o, "train task kernel")
    te = _make_group(Kn, loc(teS), loc(teQ), T(ys_te), o, "test task kernel")
    check_kernel_contrast(Kn, [tr, te])
    per_task = te.f.cpu().numpy()
    if tr.n == 0:
        return per_task, np.zeros_like(per_task)
    R = (T(yq_tr) - tr.f).reshape(tr.n, tr.nq, -1)
    if _resolve_solver(o, tr.M, len(U)) == "lowrank":
        meta = _lowrank_meta_term(Kn, tr, te, R, o)
    else:
        meta = _dense_meta_term(Kn, tr, te, R, o)
    return per_task, meta.cpu().numpy()


def _dense_meta_term(Kn, tr: _Group, te: _Group, R, o: MNKOptions) -> torch.Tensor:
    """Phin[test, train] (Phin[train, train] + r2 I)^-1 (I - exp(-meta_time Phin)) R, dense."""
    r2 = o.ridge[1]
    P = _phi_block(Kn, tr, tr)
    Pet = _phi_block(Kn, te, tr)
    if not (math.isfinite(float(P.sum())) and math.isfinite(float(Pet.sum()))):
        raise ValueError("MNK kernel Phi contains NaN/inf (check K's scale and the ridge r1)")
    if o.normalize_mnk:
        dtr, dte = _mnk_scales(torch.diagonal(P).clone(), _phi_diag(Kn, te), r2=r2)
        P.mul_(dtr[:, None]).mul_(dtr[None, :])
        P.diagonal().fill_(1.0)
        Pet.mul_(dte[:, None]).mul_(dtr[None, :])
    c = R.shape[-1]
    R = R.reshape(tr.M, c)
    if math.isinf(o.meta_time):
        P.diagonal().add_(r2)
        alpha = _chol_solve_inplace(P, R, r2)
    else:
        lam, vec = torch.linalg.eigh(P)
        del P
        alpha = vec @ (_eig_fun(lam, o.meta_time, r2)[:, None] * (vec.T @ R))
    return (Pet @ alpha).reshape(te.n, te.nq, c)


def mnk_gram(K, support, query, options: MNKOptions = MNKOptions()) -> np.ndarray:
    """The MNK Gram matrix Phin over the query positions of the given tasks.

    support (n_tasks, n_support), query (n_tasks, n_query) index K; returns the
    (n_tasks * n_query, n_tasks * n_query) matrix of steps 1-4 of the module docstring
    (task-major order: row ``i * n_query + q``), i.e. ``Phin`` with unit diagonal when
    ``normalize_mnk``, else ``Phi``. For inspection and figures; the solver never forms
    the test-test blocks. ``options.meta_time`` and ``options.solver`` play no part.
    """
    r1, r2 = options.ridge
    n_images = _check_square(K)
    S = _check_index("support", support, n_images)
    Q = _check_index("query", query, n_images)
    if S.shape[0] != Q.shape[0]:
        raise ValueError(f"support has {S.shape[0]} tasks but query has {Q.shape[0]}")
    dev = torch.device(options.device or "cpu")
    Kn, U = _normalized_subkernel(K, [S, Q], r1, options.normalize_ntk, dev)
    loc = lambda a: torch.as_tensor(np.searchsorted(U, a), device=dev)  # noqa: E731
    zeros = torch.zeros(S.shape[0], S.shape[1], 1, dtype=Kn.dtype, device=dev)
    g = _make_group(Kn, loc(S), loc(Q), zeros, options, "task kernel")
    P = _phi_block(Kn, g, g)
    if options.normalize_mnk:
        (d,) = _mnk_scales(torch.diagonal(P), r2=r2)
        P.mul_(d[:, None]).mul_(d[None, :])
        P.diagonal().fill_(1.0)
    return P.cpu().numpy()


def normalized_kernel_block(K, images, options: MNKOptions = MNKOptions()) -> np.ndarray:
    """Step 1's normalised base kernel between the given images, in their order (figures)."""
    idx = _check_index("images", np.asarray(images).reshape(1, -1), _check_square(K))
    Kn, U = _normalized_subkernel(K, [idx], options.ridge[0], options.normalize_ntk, torch.device("cpu"))
    loc = torch.as_tensor(np.searchsorted(U, idx.ravel()))
    return Kn[loc][:, loc].numpy()


def _lowrank_meta_term(Kn, tr: _Group, te: _Group, R, o: MNKOptions):
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
    r2 = o.ridge[1]
    if o.normalize_mnk:
        dtr, dte = _mnk_scales(_phi_diag(Kn, tr).view(tr.n, tr.nq), _phi_diag(Kn, te).view(te.n, te.nq), r2=r2)
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
