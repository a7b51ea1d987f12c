"""MAML (Finn et al. 2017) and iMAML (Rajeswaran et al. 2019) baselines with torch.func.

Everything per task is a pure function of a parameter dict (``functional_call`` on a
network whose BatchNorm uses batch statistics, see :mod:`mnk.nets`), so the tasks of a
meta-batch are processed together with ``torch.func.vmap``:

* MAML: ``grad`` (outer) of the mean over ``vmap``-ed tasks of the query loss after
  ``inner_steps`` differentiable SGD steps (``grad`` inside). Second order by default;
  ``first_order=True`` detaches the inner gradients (FOMAML).
* iMAML: per task, ``inner_steps`` (T) gradient steps on L_support(phi) + lam/2 ||phi -
  theta||^2 starting from theta, then the implicit meta-gradient
  g = (I + H/lam)^-1 grad_phi L_query(phi), H = Hessian of L_support at phi, with
  ``cg_steps`` (K) conjugate-gradient steps on Hessian-vector products
  (forward-over-reverse, ``jvp`` of ``grad``). The whole per-task computation, CG
  included, is ``vmap``-ed over the meta-batch.

``maml_meta_gradient_loop`` is the plain per-task loop with ``torch.autograd.grad``
(the structure ``higher`` imposes); tests and the benchmark compare it with the vmapped
implementation.

Model selection is honest: every ``eval_every`` meta-iterations the model is evaluated
on the validation tasks (training characters) and on the test tasks; the checkpoint
with the best validation accuracy is selected and *its* test accuracy is reported.
The optimistic protocol of the original notebook (maximum test accuracy over all
evaluations) is recorded separately as ``max_test_accuracy_over_evaluations``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap
from tqdm.auto import tqdm

from mnk.metrics import accuracy_ci
from mnk.nets import NETWORKS, build_network

__all__ = [
    "METHODS",
    "MAMLOptions",
    "IMAMLOptions",
    "resolve_options",
    "train_and_evaluate",
    "maml_meta_gradient",
    "maml_meta_gradient_loop",
    "imaml_meta_gradient",
    "imaml_meta_gradient_loop",
    "imaml_task_hypergradient",
    "adapt",
    "evaluate_tasks",
    "make_batch",
]

METHODS = ("maml", "imaml")
SETS = ("train", "val", "test")

Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- options


@dataclass
class _CommonOptions:
    network: str = "conv3"  # "conv3" (original comparison) or "conv4" (MAML paper)
    hidden: int = 64  # channels of every conv layer
    meta_iterations: int = 20000
    meta_batch_size: int = 32
    meta_lr: float = 1e-3  # Adam
    inner_steps: int = 1
    inner_lr: float = 0.4
    test_inner_steps: int = 3
    eval_every: int = 500
    eval_chunk: int = 100  # tasks per vmap call at evaluation (memory knob only)
    # meta-gradient: "vmap" (torch.func.vmap over the tasks of a meta-batch) or "loop" (plain
    # per-task loop; same gradient up to rounding). vmap is 2-13x faster on a GPU; on a
    # 2-core CPU the loop was faster for MAML with conv3 (see BENCHMARKS / bench_maml.py).
    implementation: str = "vmap"


@dataclass
class MAMLOptions(_CommonOptions):
    """MAML defaults: Finn et al. 2017, Omniglot 5-way (1 inner step of lr 0.4, 3 at test)."""

    first_order: bool = False  # False: second-order MAML (default); True: FOMAML


@dataclass
class IMAMLOptions(_CommonOptions):
    """iMAML defaults of the original comparison: lam 2, T 16, K 5, inner lr 0.1, 16 tasks."""

    meta_batch_size: int = 16
    inner_steps: int = 16  # T
    inner_lr: float = 0.1
    test_inner_steps: int = 16  # test-time adaptation uses the same proximal objective
    lam: float = 2.0  # proximal regularisation strength lambda
    cg_steps: int = 5  # K
    # CG system A g = grad L_query with A = (1 + cg_damping) I + H / (lam + lam_damping).
    # 0 and 0 give the exact implicit gradient (I + H/lam)^-1 grad L_query of the paper;
    # the defaults are those of the original iMAML code (Learner.matrix_evaluator:
    # regu_coef=1.0, lam_damping=10.0), which the original comparison ran. Without
    # damping, I + H/lam is indefinite early in training (H of a random conv net has
    # eigenvalues below -lam), CG gives poor directions and meta-training stalls
    # (measured: ~48% vs MAML's 86% test accuracy after the same short GPU run).
    cg_damping: float = 1.0
    lam_damping: float = 10.0


_OPTION_CLASSES = {"maml": MAMLOptions, "imaml": IMAMLOptions}


def resolve_options(method: str, options: dict | None = None):
    """Defaults of `method` overridden by `options`; unknown keys raise ValueError."""
    if method not in _OPTION_CLASSES:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    cls = _OPTION_CLASSES[method]
    options = dict(options or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in options:
        if key not in names:
            raise ValueError(f"unknown {method} option {key!r}; valid options: {sorted(names)}")
    resolved = cls()
    for key, value in options.items():
        default = getattr(resolved, key)
        if isinstance(default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{method} option {key!r} must be a bool, got {value!r}")
            value = bool(value)
        elif isinstance(default, int):
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{method} option {key!r} must be an integer, got {value!r}")
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        setattr(resolved, key, value)
    if resolved.implementation not in ("vmap", "loop"):
        raise ValueError(
            f"option 'implementation' must be 'vmap' or 'loop', got {resolved.implementation!r}"
        )
    if resolved.network not in NETWORKS:
        raise ValueError(f"option 'network' must be one of {NETWORKS}, got {resolved.network!r}")
    for key in ("hidden", "meta_iterations", "meta_batch_size", "eval_every", "eval_chunk"):
        if getattr(resolved, key) < 1:
            raise ValueError(f"option {key!r} must be >= 1, got {getattr(resolved, key)}")
    for key in ("inner_steps", "test_inner_steps") + (("cg_steps",) if method == "imaml" else ()):
        if getattr(resolved, key) < 0:
            raise ValueError(f"option {key!r} must be >= 0, got {getattr(resolved, key)}")
    if method == "imaml":
        if resolved.lam <= 0:
            raise ValueError(f"option 'lam' must be > 0, got {resolved.lam}")
        if resolved.cg_damping < 0 or resolved.lam + resolved.lam_damping <= 0:
            raise ValueError("options need cg_damping >= 0 and lam + lam_damping > 0")
    return resolved


# --------------------------------------------------------------- per-task functions


def _loss_and_logits(model, params: Params, x, y):
    logits = functional_call(model, params, (x,))
    return F.cross_entropy(logits, y), logits


def adapt(
    model,
    params: Params,
    x,
    y,
    *,
    steps: int,
    lr: float,
    lam: float = 0.0,
    first_order: bool = False,
) -> Params:
    """`steps` SGD steps on the support loss (+ lam/2 ||phi - params||^2 if lam > 0).

    Pure function of `params`; differentiable (second order) through ``torch.func``
    unless `first_order`, which detaches the inner gradients.
    """

    def support_loss(p):
        return _loss_and_logits(model, p, x, y)[0]

    grad_fn = grad(support_loss)
    phi = dict(params)
    for _ in range(steps):
        g = grad_fn(phi)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        if lam:
            phi = {k: phi[k] - lr * (g[k] + lam * (phi[k] - params[k])) for k in phi}
        else:
            phi = {k: phi[k] - lr * g[k] for k in phi}
    return phi


def _accuracy(logits, y):
    return (logits.argmax(dim=-1) == y).to(logits.dtype).mean()


def maml_meta_gradient(
    model, params: Params, batch, *, inner_steps: int, inner_lr: float, first_order: bool = False
):
    """MAML meta-gradient of the mean query loss over a meta-batch, vmapped over tasks.

    batch = (xs, ys, xq, yq) with a leading task dimension. Returns (grads, loss, acc)
    with grads a dict like `params` and loss/acc detached scalars (mean over tasks).
    """

    def task_loss(p, xs, ys, xq, yq):
        phi = adapt(model, p, xs, ys, steps=inner_steps, lr=inner_lr, first_order=first_order)
        loss, logits = _loss_and_logits(model, phi, xq, yq)
        return loss, _accuracy(logits, yq)

    def meta_loss(p):
        losses, accs = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(p, *batch)
        loss = losses.mean()
        return loss, (loss.detach(), accs.mean().detach())

    params = {k: v.detach() for k, v in params.items()}
    grads, (loss, acc) = grad(meta_loss, has_aux=True)(params)
    return grads, loss, acc


def maml_meta_gradient_loop(
    model, params: Params, batch, *, inner_steps: int, inner_lr: float, first_order: bool = False
):
    """Reference MAML meta-gradient: a plain loop over tasks with torch.autograd.grad.

    The structure ``higher`` imposes (one differentiable inner loop per task, gradients
    accumulated task by task). Same return value as :func:`maml_meta_gradient`.
    """
    names = list(params)
    theta = {k: params[k].detach().requires_grad_(True) for k in names}
    xs_all, ys_all, xq_all, yq_all = batch
    n_tasks = xs_all.shape[0]
    total = {k: torch.zeros_like(theta[k]) for k in names}
    loss_sum = 0.0
    acc_sum = 0.0
    for t in range(n_tasks):
        fast = dict(theta)
        for _ in range(inner_steps):
            loss, _ = _loss_and_logits(model, fast, xs_all[t], ys_all[t])
            gs = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=not first_order)
            fast = {k: fast[k] - inner_lr * g for k, g in zip(names, gs)}
        qloss, logits = _loss_and_logits(model, fast, xq_all[t], yq_all[t])
        gq = torch.autograd.grad(qloss / n_tasks, [theta[k] for k in names])
        for k, g in zip(names, gq):
            total[k] += g
        loss_sum = loss_sum + qloss.detach()  # tensors: no host sync per task
        acc_sum = acc_sum + _accuracy(logits.detach(), yq_all[t])
    return total, loss_sum / n_tasks, acc_sum / n_tasks


def _dot(a: Params, b: Params):
    return sum((a[k] * b[k]).sum() for k in a)


def _conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int) -> Params:
    """`steps` CG iterations for A x = b from x0 = 0 (vmap-safe: no data-dependent branches)."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    p = dict(b)
    rs = _dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        p_ap = _dot(p, ap)
        alpha = torch.where(p_ap != 0, rs / torch.where(p_ap != 0, p_ap, 1.0), 0.0)
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rs_new = _dot(r, r)
        beta = torch.where(rs != 0, rs_new / torch.where(rs != 0, rs, 1.0), 0.0)
        p = {k: r[k] + beta * p[k] for k in p}
        rs = rs_new
    return x


def imaml_task_hypergradient(
    model,
    params: Params,
    xs,
    ys,
    xq,
    yq,
    *,
    inner_steps: int,
    inner_lr: float,
    lam: float,
    cg_steps: int,
    phi: Params | None = None,
    cg_damping: float = 0.0,
    lam_damping: float = 0.0,
):
    """iMAML implicit meta-gradient of one task (vmap-able).

    phi = proximal inner solution (computed with `inner_steps` steps from `params` unless
    given); returns (g, query_loss, query_acc) with g = A^-1 grad L_query(phi),
    A = (1 + cg_damping) I + H / (lam + lam_damping), approximated by `cg_steps` CG steps
    from 0, H the Hessian of the support loss at phi. With no damping (the default of this
    function) A = I + H/lam: the exact implicit gradient when phi is the proximal optimum.
    """
    params = {k: v.detach() for k, v in params.items()}
    if phi is None:
        phi = adapt(
            model, params, xs, ys, steps=inner_steps, lr=inner_lr, lam=lam, first_order=True
        )
    phi = {k: v.detach() for k, v in phi.items()}

    def support_loss(p):
        return _loss_and_logits(model, p, xs, ys)[0]

    def query_loss(p):
        loss, logits = _loss_and_logits(model, p, xq, yq)
        return loss, (loss, _accuracy(logits, yq))

    gq, (qloss, qacc) = grad(query_loss, has_aux=True)(phi)
    support_grad = grad(support_loss)

    def matvec(v: Params) -> Params:
        _, hv = jvp(support_grad, (phi,), (v,))
        return {k: (1.0 + cg_damping) * v[k] + hv[k] / (lam + lam_damping) for k in v}

    g = _conjugate_gradient(matvec, gq, cg_steps)
    return g, qloss.detach(), qacc.detach()


def imaml_meta_gradient(
    model,
    params: Params,
    batch,
    *,
    inner_steps: int,
    inner_lr: float,
    lam: float,
    cg_steps: int,
    cg_damping: float = 0.0,
    lam_damping: float = 0.0,
):
    """iMAML meta-gradient averaged over a meta-batch, vmapped over tasks (CG included)."""

    def task(p, xs, ys, xq, yq):
        return imaml_task_hypergradient(
            model,
            p,
            xs,
            ys,
            xq,
            yq,
            inner_steps=inner_steps,
            inner_lr=inner_lr,
            lam=lam,
            cg_steps=cg_steps,
            cg_damping=cg_damping,
            lam_damping=lam_damping,
        )

    params = {k: v.detach() for k, v in params.items()}
    with torch.no_grad():
        g, losses, accs = vmap(task, in_dims=(None, 0, 0, 0, 0))(params, *batch)
    return {k: v.mean(dim=0) for k, v in g.items()}, losses.mean(), accs.mean()


def imaml_meta_gradient_loop(
    model,
    params: Params,
    batch,
    *,
    inner_steps: int,
    inner_lr: float,
    lam: float,
    cg_steps: int,
    cg_damping: float = 0.0,
    lam_damping: float = 0.0,
):
    """Reference iMAML meta-gradient: plain Python loop over the tasks (no vmap)."""
    n_tasks = batch[0].shape[0]
    total, loss_sum, acc_sum = None, 0.0, 0.0
    for t in range(n_tasks):
        g, loss, acc = imaml_task_hypergradient(
            model,
            params,
            *(b[t] for b in batch),
            inner_steps=inner_steps,
            inner_lr=inner_lr,
            lam=lam,
            cg_steps=cg_steps,
            cg_damping=cg_damping,
            lam_damping=lam_damping,
        )
        total = g if total is None else {k: total[k] + g[k] for k in total}
        loss_sum = loss_sum + loss
        acc_sum = acc_sum + acc
    return {k: v / n_tasks for k, v in total.items()}, loss_sum / n_tasks, acc_sum / n_tasks


# ----------------------------------------------------------------------- evaluation


def make_batch(images_t: torch.Tensor, tasks: dict, set_name: str, idx, device=None):
    """(xs, ys, xq, yq) for the tasks `idx` of `set_name`; images_t is (N, 1, H, W)."""
    device = images_t.device if device is None else device
    idx = np.asarray(idx)

    def take(key):
        return torch.as_tensor(np.asarray(tasks[f"{set_name}_{key}"])[idx], device=device)

    sup, qry = take("support"), take("query")
    return (
        images_t[sup],
        take("support_labels").long(),
        images_t[qry],
        take("query_labels").long(),
    )


def evaluate_tasks(
    model,
    params: Params,
    images_t,
    tasks,
    set_name: str,
    *,
    steps: int,
    lr: float,
    lam: float = 0.0,
    chunk: int = 100,
) -> np.ndarray:
    """Per-task query accuracy after adapting on each task's support set."""
    n = np.asarray(tasks[f"{set_name}_support"]).shape[0]
    params = {k: v.detach() for k, v in params.items()}

    def task_acc(p, xs, ys, xq, yq):
        phi = adapt(model, p, xs, ys, steps=steps, lr=lr, lam=lam, first_order=True)
        logits = functional_call(model, phi, (xq,))
        return (logits.argmax(dim=-1) == yq).to(logits.dtype).mean()

    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            batch = make_batch(images_t, tasks, set_name, np.arange(start, min(n, start + chunk)))
            out.append(vmap(task_acc, in_dims=(None, 0, 0, 0, 0))(params, *batch).cpu())
    return torch.cat(out).double().numpy()


# ------------------------------------------------------------------------- training


def _logger(log):
    if log is None:
        return lambda msg: None
    if isinstance(log, logging.Logger) or hasattr(log, "info"):
        return log.info
    return log


def _scalar(tasks, key):
    return int(np.asarray(tasks[key]).reshape(()))


def train_and_evaluate(
    images: np.ndarray,
    tasks: dict,
    *,
    method: str,
    options: dict | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    log=None,
):
    """Meta-train MAML or iMAML on the fixed pool of training tasks; select on val tasks.

    images: float32 (N, H, W); tasks: the make_tasks arrays (see module docstring of the
    pipeline). Returns (metrics, checkpoint); metrics is JSON-serialisable.
    """
    t_start = time.perf_counter()
    opts = resolve_options(method, options)
    say = _logger(log)
    way = _scalar(tasks, "way")
    for s in SETS:
        for key in ("support", "query", "support_labels", "query_labels"):
            if f"{s}_{key}" not in tasks:
                raise KeyError(f"tasks lacks array {s}_{key!r}")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {images.shape}")

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    images_t = torch.as_tensor(images, device=dev).unsqueeze(1)
    model = build_network(
        opts.network, n_classes=way, image_size=tuple(images.shape[1:]), hidden=opts.hidden
    ).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.meta_lr)
    n_train = np.asarray(tasks["train_support"]).shape[0]
    n_val = np.asarray(tasks["val_support"]).shape[0]
    if n_train == 0 or np.asarray(tasks["test_support"]).shape[0] == 0:
        raise ValueError("need at least one training task and one test task")
    if n_val == 0:
        say(f"{method}: no validation tasks: the LAST evaluation's checkpoint is selected")
    lam = opts.lam if method == "imaml" else 0.0
    say(
        f"{method}: {n_train} training tasks, {way}-way, network {opts.network}, "
        f"{sum(p.numel() for p in model.parameters())} parameters, device {dev}, options "
        f"{dataclasses.asdict(opts)}"
    )

    def evaluate(set_name, params):
        return evaluate_tasks(
            model,
            params,
            images_t,
            tasks,
            set_name,
            steps=opts.test_inner_steps,
            lr=opts.inner_lr,
            lam=lam,
            chunk=opts.eval_chunk,
        )

    curve: list[dict] = []
    best = None  # (val_acc, iteration, state_dict, test per-task acc)
    max_test = None
    run_loss = run_acc = 0.0
    run_n = 0
    bar = tqdm(
        range(1, opts.meta_iterations + 1), desc=method, disable=not progress, dynamic_ncols=True
    )
    for it in bar:
        replace = n_train < opts.meta_batch_size
        idx = np.sort(rng.choice(n_train, size=opts.meta_batch_size, replace=replace))
        batch = make_batch(images_t, tasks, "train", idx)
        params = dict(model.named_parameters())
        loop = opts.implementation == "loop"
        if method == "maml":
            grads, loss, acc = (maml_meta_gradient_loop if loop else maml_meta_gradient)(
                model,
                params,
                batch,
                inner_steps=opts.inner_steps,
                inner_lr=opts.inner_lr,
                first_order=opts.first_order,
            )
        else:
            grads, loss, acc = (imaml_meta_gradient_loop if loop else imaml_meta_gradient)(
                model,
                params,
                batch,
                inner_steps=opts.inner_steps,
                inner_lr=opts.inner_lr,
                lam=opts.lam,
                cg_steps=opts.cg_steps,
                cg_damping=opts.cg_damping,
                lam_damping=opts.lam_damping,
            )
        for k, p in model.named_parameters():
            p.grad = grads[k].detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_f, acc_f = float(loss), float(acc)
        if not math.isfinite(loss_f):
            raise FloatingPointError(f"{method}: non-finite meta-loss at iteration {it}")
        run_loss += loss_f
        run_acc += acc_f
        run_n += 1
        bar.set_postfix(loss=f"{run_loss / run_n:.3f}", acc=f"{run_acc / run_n:.3f}")

        if it % opts.eval_every == 0 or it == opts.meta_iterations:
            params = {k: v.detach() for k, v in model.named_parameters()}
            val_acc = evaluate("val", params) if n_val else None
            test_acc = evaluate("test", params)
            entry = {
                "iteration": it,
                "train_loss": run_loss / run_n,
                "train_acc": run_acc / run_n,
                "val_acc": float(val_acc.mean()) if n_val else None,
                "test_acc": float(test_acc.mean()),
            }
            curve.append(entry)
            say(
                f"{method} it {it}: train loss {entry['train_loss']:.4f} acc "
                f"{entry['train_acc']:.4f} | val {entry['val_acc'] if n_val else float('nan'):.4f}"
                f" | test {entry['test_acc']:.4f}"
            )
            if best is None or not n_val or entry["val_acc"] > best[0]:
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best = (entry["val_acc"], it, state, test_acc)
            if max_test is None or entry["test_acc"] > max_test[0]:
                max_test = (entry["test_acc"], it)
            run_loss = run_acc = 0.0
            run_n = 0
    bar.close()

    val_best, sel_it, state, test_acc = best
    ci = accuracy_ci(test_acc)
    metrics = {
        "method": method,
        "accuracy": ci["accuracy"],
        "ci95_low": ci["ci95_low"],
        "ci95_high": ci["ci95_high"],
        "n_test_tasks": ci["n_tasks"],
        "selected_iteration": sel_it,
        "val_accuracy": val_best,
        "n_val_tasks": int(n_val),
        "max_test_accuracy_over_evaluations": max_test[0],
        "max_test_accuracy_iteration": max_test[1],
        "model_selection": (
            "checkpoint with best mean val-task accuracy (ties: earliest)"
            if n_val
            else "no val tasks: last evaluation"
        )
        + "; accuracy/ci95 are that checkpoint's test-task accuracy",
        "test_per_task_accuracy": [float(a) for a in test_acc],
        "n_train_tasks": int(n_train),
        "way": way,
        "shot": _scalar(tasks, "shot") if "shot" in tasks else None,
        "query": _scalar(tasks, "query") if "query" in tasks else None,
        "seed": int(seed),
        "options": dataclasses.asdict(opts),
        "device": str(dev) if dev.type != "cuda" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "torch_version": torch.__version__,
        "wall_seconds": time.perf_counter() - t_start,
        "learning_curve": curve,
    }
    say(
        f"{method}: selected iteration {sel_it} (val {val_best if n_val else float('nan'):.4f}): test "
        f"{ci['accuracy']:.4f} [{ci['ci95_low']:.4f}, {ci['ci95_high']:.4f}] over "
        f"{ci['n_tasks']} tasks; max test over evaluations {max_test[0]:.4f}"
    )
    checkpoint = {
        "state_dict": state,
        "options": dataclasses.asdict(opts),
        "iteration": sel_it,
        "method": method,
        "way": way,
        "image_size": list(images.shape[1:]),
    }
    return metrics, checkpoint
