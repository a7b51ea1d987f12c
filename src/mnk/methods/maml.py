"""MAML (Finn et al. 2017) and iMAML (Rajeswaran et al. 2019) baselines with torch.func.

Everything per task is a pure function of a parameter dict (``functional_call`` on a
network whose BatchNorm uses batch statistics, see :mod:`mnk.methods.nets`), so the tasks of a
meta-batch are processed together with ``torch.func.vmap`` (the functional MAML of
torch.func's tutorial):

* MAML: ``grad`` (outer) of the mean over ``vmap``-ed tasks of the query loss after
  ``inner_steps`` differentiable SGD steps (``grad`` inside). Second order by default;
  ``first_order=True`` detaches the inner gradients (FOMAML).
* iMAML: per task, ``inner_steps`` (T) gradient steps on L_support(phi) + lam/2 ||phi -
  theta||^2 starting from theta, then the implicit meta-gradient
  g = (I + H/lam)^-1 grad_phi L_query(phi), H = Hessian of L_support at phi, with
  ``cg_steps`` (K) plain conjugate-gradient steps on Hessian-vector products
  (forward-over-reverse, ``jvp`` of ``grad``), vmapped over the meta-batch.

Options: one frozen :class:`MAMLOptions` / :class:`IMAMLOptions` per method, built once
from its config section by :func:`options_from_config` (errors name the key, e.g.
``maml.options.inner_lr``) and passed whole; :func:`meta_gradient_fn` binds them to the
meta-gradient of a method (shared with ``benchmarks/bench_maml.py``).

Training tasks (``task_sampling``): ``resample`` (default, as the original code) draws
fresh tasks for every meta-batch from the experiment's training characters: `way`
random characters, a random support/query split of each character's images, labels in
the order drawn. ``fixed`` samples meta-batches from the experiment's fixed task set.

Training stops at the validation plateau and selection is honest: every ``eval_every``
meta-updates (epochs when ``epochs`` is set) the model is evaluated on the validation tasks
only; training stops once ``patience`` evaluations in a row have not beaten the best
validation accuracy (``stopped_by: plateau``), or at the maximum budget (``budget``). The
best-on-validation checkpoint is selected and the test tasks are evaluated once, at it
(``accuracy``). Only with ``test_every_evaluation`` (config/original.yaml) are the test tasks
also evaluated at every evaluation, for the original code's number, the maximum test accuracy
over evaluations (``max_test_accuracy_over_evaluations``), never used for selection.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

from mnk.infra.progress import progress_bar
from mnk.methods.inputs import InputTransform
from mnk.methods.metrics import accuracy_ci, mse_ci
from mnk.methods.nets import build_network
from mnk.methods.options import (  # noqa: F401 (re-exported: the options are part of this API)
    AUTO_META_BATCH_CAP,
    METHODS,
    OPTION_CLASSES,
    TASK_SAMPLING,
    IMAMLOptions,
    MAMLOptions,
    _MetaLearnerOptions,
    options_from_config,
)

__all__ = [
    "METHODS",
    "TASK_SAMPLING",
    "MAMLOptions",
    "IMAMLOptions",
    "options_from_config",
    "meta_gradient_fn",
    "train_and_evaluate",
    "maml_meta_gradient",
    "maml_meta_gradient_loop",
    "imaml_meta_gradient",
    "imaml_meta_gradient_loop",
    "imaml_task_hypergradient",
    "adapt",
    "adaptation_fn",
    "evaluate_tasks",
    "make_batch",
    "training_images_by_character",
    "resample_tasks",
    "TaskSampler",
    "Plateau",
]

TASK_KEYS = ("support", "query", "support_labels", "query_labels")

Params = dict[str, torch.Tensor]


def _as_options(method: str, options):
    if isinstance(options, _MetaLearnerOptions):
        if not isinstance(options, OPTION_CLASSES[method]):
            raise TypeError(f"{type(options).__name__} given for method {method!r}")
        return options
    return options_from_config(method, options)


# --------------------------------------------------------------- per-task functions


def _loss_and_logits(model, params: Params, x, y):
    """The task loss: cross-entropy of class labels, or squared error of float targets
    (regression tasks, one output: the sinusoid study)."""
    logits = functional_call(model, params, (x,))
    if y.is_floating_point():  # written out: F.mse_loss has no forward-mode derivative of its backward (iMAML's jvp)
        return ((logits[..., 0] - y) ** 2).mean(), logits
    return F.cross_entropy(logits, y), logits


def _accuracy(logits, y):
    """The score to maximise: accuracy, or minus the mean squared error of float targets."""
    if y.is_floating_point():
        return -((logits[..., 0] - y) ** 2).mean()
    return (logits.argmax(dim=-1) == y).to(logits.dtype).mean()


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
    proximal_first_step_only: bool = False,
) -> Params:
    """`steps` SGD steps on the support loss (+ lam/2 ||phi - params||^2 if lam > 0).

    Pure function of `params`; differentiable (second order) through ``torch.func``
    unless `first_order`, which detaches the inner gradients.
    `proximal_first_step_only` applies the proximal term at the first step only (the
    original comparison's bug, see :class:`IMAMLOptions`).
    """

    def support_loss(p):
        return _loss_and_logits(model, p, x, y)[0]

    grad_fn = grad(support_loss)
    phi = dict(params)
    for step in range(steps):
        g = grad_fn(phi)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        if lam and (step == 0 or not proximal_first_step_only):
            phi = {k: phi[k] - lr * (g[k] + lam * (phi[k] - params[k])) for k in phi}
        else:
            phi = {k: phi[k] - lr * g[k] for k in phi}
    return phi


def _maml_task(model, options: MAMLOptions, params: Params, xs, ys, xq, yq):
    phi = adapt(model, params, xs, ys, steps=options.inner_steps, lr=options.inner_lr,
                first_order=options.first_order)
    loss, logits = _loss_and_logits(model, phi, xq, yq)
    return loss, _accuracy(logits, yq)


def maml_meta_gradient(model, params: Params, batch, options: MAMLOptions):
    """MAML meta-gradient of the mean query loss over a meta-batch, vmapped over tasks.

    batch = (xs, ys, xq, yq) with a leading task dimension. Returns (grads, loss, acc)
    with grads a dict like `params` and loss/acc detached scalars (mean over tasks).
    """
    task = functools.partial(_maml_task, model, options)

    def meta_loss(p):
        losses, accs = vmap(task, in_dims=(None, 0, 0, 0, 0))(p, *batch)
        loss = losses.mean()
        return loss, (loss.detach(), accs.mean().detach())

    params = {k: v.detach() for k, v in params.items()}
    grads, (loss, acc) = grad(meta_loss, has_aux=True)(params)
    return grads, loss, acc


def maml_meta_gradient_loop(model, params: Params, batch, options: MAMLOptions):
    """Reference MAML meta-gradient: a plain loop over tasks with torch.autograd.grad.

    The structure ``higher`` imposes (one differentiable inner loop per task, gradients
    accumulated task by task). Same return value as :func:`maml_meta_gradient`.
    """
    names = list(params)
    theta = {k: params[k].detach().requires_grad_(True) for k in names}
    n_tasks = batch[0].shape[0]
    total = {k: torch.zeros_like(theta[k]) for k in names}
    loss_sum = acc_sum = 0.0
    for xs, ys, xq, yq in zip(*batch):
        fast = dict(theta)
        for _ in range(options.inner_steps):
            loss, _ = _loss_and_logits(model, fast, xs, ys)
            gs = torch.autograd.grad(loss, [fast[k] for k in names],
                                     create_graph=not options.first_order)
            fast = {k: fast[k] - options.inner_lr * g for k, g in zip(names, gs)}
        qloss, logits = _loss_and_logits(model, fast, xq, yq)
        for k, g in zip(names, torch.autograd.grad(qloss / n_tasks, [theta[k] for k in names])):
            total[k] += g
        loss_sum = loss_sum + qloss.detach()  # tensors: no host sync per task
        acc_sum = acc_sum + _accuracy(logits.detach(), yq)
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


def _imaml_adaptation(options: IMAMLOptions, steps: int):
    """The proximal inner loop of iMAML (training: T steps; test: test_inner_steps)."""
    return functools.partial(adapt, steps=steps, lr=options.inner_lr, lam=options.lam,
                             first_order=True,
                             proximal_first_step_only=options.proximal_first_step_only)


def imaml_task_hypergradient(model, params: Params, task, options: IMAMLOptions,
                             phi: Params | None = None):
    """iMAML implicit meta-gradient of one task (vmap-able); task = (xs, ys, xq, yq).

    phi = proximal inner solution (computed with `options.inner_steps` steps from
    `params` unless given); returns (g, query_loss, query_acc) with g = A^-1 grad
    L_query(phi), A = (1 + cg_damping) I + H / (lam + lam_damping), approximated by
    `cg_steps` CG steps from 0, H the Hessian of the support loss at phi. With no
    damping (the default) A = I + H/lam: the exact implicit gradient at the optimum.
    """
    xs, ys, xq, yq = task
    params = {k: v.detach() for k, v in params.items()}
    if phi is None:
        phi = _imaml_adaptation(options, options.inner_steps)(model, params, xs, ys)
    phi = {k: v.detach() for k, v in phi.items()}

    def query_loss(p):
        loss, logits = _loss_and_logits(model, p, xq, yq)
        return loss, (loss, _accuracy(logits, yq))

    gq, (qloss, qacc) = grad(query_loss, has_aux=True)(phi)
    support_grad = grad(lambda p: _loss_and_logits(model, p, xs, ys)[0])
    scale = 1.0 / (options.lam + options.lam_damping)

    def matvec(v: Params) -> Params:
        _, hv = jvp(support_grad, (phi,), (v,))
        return {k: (1.0 + options.cg_damping) * v[k] + scale * hv[k] for k in v}

    g = _conjugate_gradient(matvec, gq, options.cg_steps)
    return g, qloss.detach(), qacc.detach()


def imaml_meta_gradient(model, params: Params, batch, options: IMAMLOptions):
    """iMAML meta-gradient averaged over a meta-batch, vmapped over tasks (CG included)."""

    def task(p, xs, ys, xq, yq):
        return imaml_task_hypergradient(model, p, (xs, ys, xq, yq), options)

    params = {k: v.detach() for k, v in params.items()}
    with torch.no_grad():
        g, losses, accs = vmap(task, in_dims=(None, 0, 0, 0, 0))(params, *batch)
    return {k: v.mean(dim=0) for k, v in g.items()}, losses.mean(), accs.mean()


def imaml_meta_gradient_loop(model, params: Params, batch, options: IMAMLOptions):
    """Reference iMAML meta-gradient: plain Python loop over the tasks (no vmap)."""
    n_tasks = batch[0].shape[0]
    total, loss_sum, acc_sum = None, 0.0, 0.0
    for task in zip(*batch):
        g, loss, acc = imaml_task_hypergradient(model, params, task, options)
        total = g if total is None else {k: total[k] + g[k] for k in total}
        loss_sum = loss_sum + loss
        acc_sum = acc_sum + acc
    return {k: v / n_tasks for k, v in total.items()}, loss_sum / n_tasks, acc_sum / n_tasks


_META_GRADIENTS = {
    ("maml", "vmap"): maml_meta_gradient,
    ("maml", "loop"): maml_meta_gradient_loop,
    ("imaml", "vmap"): imaml_meta_gradient,
    ("imaml", "loop"): imaml_meta_gradient_loop,
}


def meta_gradient_fn(method: str, options):
    """(model, params, batch) -> (grads, loss, acc) for `method` with `options` bound."""
    options = _as_options(method, options)
    return functools.partial(_META_GRADIENTS[method, options.implementation], options=options)


def adaptation_fn(method: str, options):
    """(model, params, x, y) -> adapted params: the protocol's test-time adaptation."""
    options = _as_options(method, options)
    if method == "imaml":
        return _imaml_adaptation(options, options.test_inner_steps)
    return functools.partial(adapt, steps=options.test_inner_steps, lr=options.inner_lr,
                             first_order=True)


# ------------------------------------------------------------------- task batches


def _batch_tensors(images_t, support, query, support_labels, query_labels):
    device = images_t.device

    def index(a):
        return torch.as_tensor(np.asarray(a), device=device)

    def targets(labels):  # class labels, or float targets (regression) in the inputs' dtype
        labels = index(labels)
        return labels.to(images_t.dtype) if labels.is_floating_point() else labels.long()

    return (images_t[index(support)], targets(support_labels),
            images_t[index(query)], targets(query_labels))


def make_batch(images_t: torch.Tensor, tasks: Mapping, set_name: str, idx):
    """(xs, ys, xq, yq) for the tasks `idx` of `set_name`; images_t is (N, 1, H, W)."""
    idx = np.asarray(idx)
    return _batch_tensors(images_t, *(np.asarray(tasks[f"{set_name}_{key}"])[idx]
                                      for key in TASK_KEYS))


def training_images_by_character(tasks: Mapping) -> list[np.ndarray]:
    """Local image indices of each training character (sorted by character id).

    From ``train_image_characters`` (character of each local training image) when the
    tasks file has it, else from the training tasks: label l of task t is the character
    ``train_task_characters[t, l]``.
    """
    if "train_image_characters" in tasks:
        chars = np.asarray(tasks["train_image_characters"])
        images = np.arange(len(chars))
    else:
        task_chars = np.asarray(tasks["train_task_characters"])
        parts = [(np.asarray(tasks[f"train_{s}"]), np.asarray(tasks[f"train_{s}_labels"]))
                 for s in ("support", "query")]
        images = np.concatenate([ids.ravel() for ids, _ in parts])
        chars = np.concatenate([np.take_along_axis(task_chars, labels, axis=1).ravel()
                                for _, labels in parts])
    pools = []
    for c in np.unique(chars):
        pools.append(np.unique(images[chars == c]))
    return pools


def resample_tasks(pools: list[np.ndarray], way: int, shot: int, query: int, n_tasks: int,
                   rng: np.random.Generator):
    """`n_tasks` fresh tasks: `way` random characters of `pools`, a random shot/query
    split of each one's images; label l = the l-th character drawn (class-major arrays)."""
    support = np.empty((n_tasks, way * shot), np.int64)
    queries = np.empty((n_tasks, way * query), np.int64)
    for t in range(n_tasks):
        for label, c in enumerate(rng.choice(len(pools), way, replace=False)):
            images = rng.permutation(pools[c])
            support[t, label * shot:(label + 1) * shot] = images[:shot]
            queries[t, label * query:(label + 1) * query] = images[shot:shot + query]
    labels = np.arange(way)
    return (support, queries, np.tile(np.repeat(labels, shot), (n_tasks, 1)),
            np.tile(np.repeat(labels, query), (n_tasks, 1)))


class TaskSampler:
    """Index arrays (support, query, support_labels, query_labels) of each meta-batch."""

    def __init__(self, tasks: Mapping, options: _MetaLearnerOptions, seed: int):
        self.sampling, self.tasks = options.task_sampling, tasks
        self.rng = np.random.default_rng([seed, 20_200_626])  # independent of torch's init
        self.way, self.shot, self.query = (_scalar(tasks, k) for k in ("way", "shot", "query"))
        if self.sampling == "resample":
            self.pools = training_images_by_character(tasks)
            short = [len(p) for p in self.pools if len(p) < self.shot + self.query]
            if len(self.pools) < self.way or short:
                raise ValueError(f"task_sampling 'resample' needs >= {self.way} training "
                                 f"characters with >= shot + query images each")
        self.n_characters = (len(self.pools) if self.sampling == "resample"
                             else _n_characters(tasks))
        self.meta_batch = options.meta_batch(self.n_characters)

    def __call__(self):
        if self.sampling == "resample":
            return resample_tasks(self.pools, self.way, self.shot, self.query,
                                  self.meta_batch, self.rng)
        n_train = len(self.tasks["train_support"])
        idx = np.sort(self.rng.choice(n_train, self.meta_batch,
                                      replace=n_train < self.meta_batch))
        return tuple(np.asarray(self.tasks[f"train_{key}"])[idx] for key in TASK_KEYS)


def _scalar(tasks, key):
    return int(np.asarray(tasks[key]).reshape(()))


def _n_characters(tasks) -> int:
    """Training characters; regression tasks have none: their number of training tasks."""
    if "train_characters" in tasks:
        return len(np.asarray(tasks["train_characters"]))
    if "train_task_characters" in tasks:
        return len(np.unique(np.asarray(tasks["train_task_characters"])))
    return len(tasks["train_support"])


# ----------------------------------------------------------------------- evaluation


def evaluate_tasks(model, params: Params, images_t, tasks, set_name: str, adaptation,
                   chunk: int = 100) -> np.ndarray:
    """Per-task accuracy on the QUERY points after `adaptation` on each support set.

    adaptation(model, params, xs, ys) -> adapted params (see :func:`adaptation_fn`).
    """
    n = np.asarray(tasks[f"{set_name}_support"]).shape[0]
    params = {k: v.detach() for k, v in params.items()}

    def task_accuracy(p, xs, ys, xq, yq):
        phi = adaptation(model, p, xs, ys)
        return _accuracy(functional_call(model, phi, (xq,)), yq)

    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            batch = make_batch(images_t, tasks, set_name, np.arange(start, min(n, start + chunk)))
            out.append(vmap(task_accuracy, in_dims=(None, 0, 0, 0, 0))(params, *batch).cpu())
    return torch.cat(out).double().numpy()


def predict_tasks(model, params: Params, images_t, tasks, set_name: str, adaptation) -> np.ndarray:
    """The network's outputs on each task's QUERY points after `adaptation` on its support
    (n_tasks, n_query, outputs)."""
    params = {k: v.detach() for k, v in params.items()}

    def task_outputs(p, xs, ys, xq, yq):
        return functional_call(model, adaptation(model, p, xs, ys), (xq,))

    batch = make_batch(images_t, tasks, set_name, np.arange(len(tasks[f"{set_name}_support"])))
    with torch.no_grad():
        return vmap(task_outputs, in_dims=(None, 0, 0, 0, 0))(params, *batch).double().cpu().numpy()


# ------------------------------------------------------------------------- training


def _logger(log):
    if log is None:
        return lambda msg: None
    if isinstance(log, logging.Logger) or hasattr(log, "info"):
        return log.info
    return log


def _check_inputs(images, tasks) -> np.ndarray:
    for s in ("train", "val", "test"):
        for key in TASK_KEYS:
            if f"{s}_{key}" not in tasks:
                raise KeyError(f"tasks lacks array {s}_{key!r}")
    if len(tasks["train_support"]) == 0 or len(tasks["test_support"]) == 0:
        raise ValueError("need at least one training task and one test task")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]  # grey: one channel
    if images.ndim not in (2, 4):
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), or points (N, d), got shape {images.shape}")
    return images


class Plateau:
    """Early stopping: the best value so far, and whether `patience` evaluations in a row
    have not beaten it (strictly; ties keep the earliest)."""

    def __init__(self, patience: int):
        self.patience, self.best, self.since_best = patience, -math.inf, 0

    def update(self, value: float) -> bool:
        """Record one evaluation; True when it is the new best."""
        if value > self.best:
            self.best, self.since_best = value, 0
            return True
        self.since_best += 1
        return False

    @property
    def reached(self) -> bool:
        return self.since_best >= self.patience


@dataclass
class _Run:
    """Everything one training run carries from step to step."""

    method: str
    options: _MetaLearnerOptions
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    images_t: torch.Tensor
    tasks: Mapping
    sampler: TaskSampler
    meta_gradient: Callable
    adaptation: Callable
    max_updates: int
    eval_interval: int
    say: Callable
    plateau: Plateau
    n_updates: int = 0  # meta-updates done
    curve: list = dataclasses.field(default_factory=list)
    best: tuple | None = None  # (val_acc, iteration, state_dict)
    max_test: tuple | None = None  # (test_acc, iteration), with test_every_evaluation only
    running: list = dataclasses.field(default_factory=list)  # (loss, acc) since last eval

    @property
    def n_val(self) -> int:
        return len(self.tasks["val_support"])

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def regression(self) -> bool:
        """Float targets: the score is minus the MSE, reported as `mse` (mnk.study.regression)."""
        return np.asarray(self.tasks["train_support_labels"]).dtype.kind == "f"

    @property
    def stopped_by(self) -> str:
        return "plateau" if self.n_val and self.plateau.reached else "budget"


def _start_run(images, tasks, method, options, seed, device, say) -> _Run:
    torch.manual_seed(seed)
    dev = torch.device(device)
    images_t = torch.as_tensor(images, device=dev)  # (N, C, H, W)
    model = build_network(options.network, n_classes=_scalar(tasks, "way"), image_size=tuple(images.shape[2:]),
                          hidden=options.hidden, in_channels=images.shape[1], padding=options.padding).to(dev)
    sampler = TaskSampler(tasks, options, seed)
    return _Run(
        method=method, options=options, model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=options.meta_lr),
        images_t=images_t, tasks=tasks, sampler=sampler,
        meta_gradient=meta_gradient_fn(method, options),
        adaptation=adaptation_fn(method, options),
        max_updates=options.n_updates(sampler.n_characters),
        eval_interval=options.eval_interval(sampler.n_characters), say=say,
        plateau=Plateau(options.patience),
    )


def _meta_update(run: _Run, iteration: int) -> None:
    """One meta-update: sample a meta-batch, meta-gradient, Adam step."""
    batch = _batch_tensors(run.images_t, *run.sampler())
    grads, loss, acc = run.meta_gradient(run.model, dict(run.model.named_parameters()), batch)
    for k, p in run.model.named_parameters():
        p.grad = grads[k].detach()
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    loss, acc = float(loss), float(acc)
    if not math.isfinite(loss):
        raise FloatingPointError(f"{run.method}: non-finite meta-loss at meta-update {iteration}")
    run.running.append((loss, acc))
    run.n_updates = iteration


def _task_accuracy(run: _Run, set_name: str) -> np.ndarray:
    """Per-task accuracy of the current model on `set_name` ("val" or "test")."""
    params = {k: v.detach() for k, v in run.model.named_parameters()}
    return evaluate_tasks(run.model, params, run.images_t, run.tasks, set_name, run.adaptation,
                          chunk=run.options.eval_chunk)


def _evaluate(run: _Run, iteration: int) -> None:
    """Validation accuracy of the current model; keep the best-on-validation checkpoint.

    The test tasks are not evaluated here unless `test_every_evaluation` asks for the
    original's max-over-evaluations number, which never enters the selection."""
    val_acc = float(_task_accuracy(run, "val").mean()) if run.n_val else None
    loss, acc = np.mean(run.running, axis=0) if run.running else (math.nan, math.nan)
    if run.regression:  # the score is minus the MSE
        entry = {"iteration": iteration, "train_loss": float(loss), "val_mse": -val_acc if run.n_val else None}
    else:
        entry = {"iteration": iteration, "train_loss": float(loss), "train_acc": float(acc), "val_acc": val_acc}
    if run.options.test_every_evaluation:
        entry["test_acc"] = float(_task_accuracy(run, "test").mean())
        if run.max_test is None or entry["test_acc"] > run.max_test[0]:
            run.max_test = (entry["test_acc"], iteration)
    run.curve.append(entry)
    run.running.clear()
    run.say(f"{run.method} update {iteration}: train loss {loss:.4f} acc {acc:.4f} | val "
            f"{val_acc if run.n_val else float('nan'):.4f}"
            + (f" | test {entry['test_acc']:.4f}" if "test_acc" in entry else ""))
    if run.plateau.update(val_acc if run.n_val else iteration):  # no validation: the last
        state = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        run.best = (val_acc, iteration, state)


def _train(run: _Run, bar) -> None:
    """Meta-updates until the validation plateau or the maximum budget."""
    for iteration in range(1, run.max_updates + 1):
        _meta_update(run, iteration)
        if bar is not None:
            bar.update(1)
        if iteration % run.eval_interval == 0 or iteration == run.max_updates:
            _evaluate(run, iteration)
            if run.n_val and run.plateau.reached:
                return


def _test_selected(run: _Run) -> np.ndarray:
    """The selected checkpoint's per-task test accuracy: the one test-task evaluation."""
    run.model.load_state_dict(run.best[2])
    return _task_accuracy(run, "test")


def _scores(run: _Run, test_acc: np.ndarray) -> dict:
    """The test fields: accuracy with its interval, or (regression) the MSE with its interval
    and the prediction on the `curve` task's grid (one test task, for the figure)."""
    if not run.regression:
        return {**accuracy_ci(test_acc), "per_task_accuracy": [float(a) for a in test_acc]}
    curve = predict_tasks(run.model, dict(run.model.named_parameters()), run.images_t, run.tasks, "curve",
                          run.adaptation)
    return {**mse_ci(-test_acc), "per_task_mse": [float(-a) for a in test_acc], "task_type": "regression",
            "curve_prediction": [float(v) for v in curve.ravel()]}


def _metrics(run: _Run, test_acc: np.ndarray, seed: int, wall_seconds: float) -> dict:
    val_best, selected, _ = run.best
    ci = _scores(run, test_acc)
    tasks, dev = run.tasks, run.images_t.device
    selection = ("checkpoint with the best mean validation-task accuracy (ties: earliest)"
                 if run.n_val else "no validation tasks: the last evaluation")
    return {
        "method": run.method,
        **ci,
        "n_test_tasks": ci["n_tasks"],
        "test_tasks_id": str(tasks["test_tasks_id"]) if "test_tasks_id" in tasks else None,
        "task_sampling": run.options.task_sampling,
        "model_selection": selection + "; accuracy/ci95 are that checkpoint's test accuracy, "
                           "the only test-task evaluation used",
        "selected_iteration": selected,
        "stopped_by": run.stopped_by,
        **({"val_mse": -val_best} if run.regression else {"val_accuracy": val_best}),
        "n_val_tasks": run.n_val,
        "max_test_accuracy_over_evaluations": run.max_test[0] if run.max_test else None,  # the original's
        "max_test_accuracy_iteration": run.max_test[1] if run.max_test else None,
        "n_meta_updates": run.n_updates,
        "max_meta_updates": run.max_updates,
        "meta_batch_size": run.sampler.meta_batch,
        "n_characters": run.sampler.n_characters,
        "n_train_tasks": len(tasks["train_support"]),
        "way": _scalar(tasks, "way"),
        "shot": _scalar(tasks, "shot") if "shot" in tasks else None,
        "query": _scalar(tasks, "query") if "query" in tasks else None,
        "seed": int(seed),
        "options": dataclasses.asdict(run.options),
        "n_parameters": run.n_parameters,
        "device": str(dev) if dev.type != "cuda" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "torch_version": torch.__version__,
        "wall_seconds": wall_seconds,
        "learning_curve": run.curve,
    }


def test_result(metrics: dict) -> str:
    """The test number with its interval, as a log line says it (accuracy, or MSE)."""
    name = "mse" if metrics.get("task_type") == "regression" else "accuracy"
    low, high = ("mse_ci95_low", "mse_ci95_high") if name == "mse" else ("ci95_low", "ci95_high")
    return f"{name} {metrics[name]:.4f} [{metrics[low]:.4f}, {metrics[high]:.4f}]"


def _network_inputs(images: np.ndarray, tasks: Mapping, options) -> InputTransform:
    """`invert` / `standardize` of the options, statistics from the training images only."""
    n_train = _scalar(tasks, "n_train_images") if options.standardize else 0
    return InputTransform.fit(images[:n_train], invert=options.invert, standardize=options.standardize)


def _checkpoint(run: _Run, inputs: InputTransform) -> dict:
    return {"state_dict": run.best[2], "options": dataclasses.asdict(run.options),
            "inputs": dataclasses.asdict(inputs),
            "iteration": run.best[1], "method": run.method, "way": _scalar(run.tasks, "way"),
            "image_size": list(run.images_t.shape[2:]), "in_channels": int(run.images_t.shape[1])}


def train_and_evaluate(images: np.ndarray, tasks: Mapping, *, method: str, options=None,
                       seed: int = 0, device: str = "cpu", progress: bool = True, log=None):
    """Meta-train MAML or iMAML on an experiment's tasks; select on the validation tasks.

    images: float32 (N, H, W) or (N, C, H, W), as stored (the network sees them prepared by the
    options' `invert` / `standardize`, mnk.methods.inputs, with training-image statistics);
    tasks: the make_tasks arrays; options: MAMLOptions / IMAMLOptions or a config section
    (dict). Returns (metrics, checkpoint); metrics is JSON-serialisable.
    """
    t_start = time.perf_counter()
    options = _as_options(method, options)
    say = _logger(log)
    images = _check_inputs(images, tasks)
    inputs = _network_inputs(images, tasks, options)
    run = _start_run(inputs(images), tasks, method, options, seed, device, say)
    say(f"{method}: at most {run.max_updates} meta-updates (patience {options.patience} "
        f"evaluations of every {run.eval_interval}) of {run.sampler.meta_batch} "
        f"{options.task_sampling} tasks from {run.sampler.n_characters} characters, "
        f"{run.n_parameters} parameters, options "
        f"{dataclasses.asdict(options)}")
    if not run.n_val:
        say(f"{method}: no validation tasks: the LAST evaluation's checkpoint is selected")
    bar = progress_bar(run.max_updates, method, "update") if progress else None
    _train(run, bar)
    if bar is not None:
        bar.close()
    test_acc = _test_selected(run)
    metrics = _metrics(run, test_acc, seed, time.perf_counter() - t_start)
    say(f"{method}: selected update {metrics['selected_iteration']} (val "
        f"{run.best[0] if run.n_val else float('nan'):.4f}): test {test_result(metrics)} "
        f"over {metrics['n_tasks']} tasks; stopped by {metrics['stopped_by']} after "
        f"{metrics['n_meta_updates']} of at most {metrics['max_meta_updates']} meta-updates")
    metrics["inputs"] = dataclasses.asdict(inputs)
    return metrics, _checkpoint(run, inputs)
