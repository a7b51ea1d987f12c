"""MNK and per-task kernel regression on regression tasks (the sinusoid study, issue 26).

The same MNK solver as the classification study (mnk.methods.mnk.mnk_terms), with the
targets themselves as outputs: they mean the same in every task, so the meta term can carry
what the training tasks share. The base kernel is the fully connected ReLU NTK
(mnk.kernels.ntk) of the inputs with a constant feature appended (a first-layer bias), over
the points of the training tasks and one evaluated set at a time. The MNK setting (r2,
meta_time, inner_time of `mnk.grid`) is chosen on the validation tasks' MSE; kernel
regression is the per-task term at the converged inner loop (no training task).
"""

from __future__ import annotations

import math

import numpy as np

from mnk.methods.metrics import mse_ci
from mnk.methods.mnk import MNKOptions, TaskSet, mnk_terms

__all__ = ["regression_kernel", "solve_regression", "regression_metrics", "per_task_mse"]


def regression_kernel(points: np.ndarray, *, depth: int, bias: float) -> np.ndarray:
    """FC ReLU NTK Gram matrix of inputs (N, d) with the constant feature `bias` appended."""
    from mnk.kernels.ntk import ntk_gram

    points = np.asarray(points, dtype=np.float64)
    features = np.concatenate([points, np.full((len(points), 1), float(bias))], axis=1)
    return ntk_gram(features, depth=depth)


def per_task_mse(prediction, targets) -> np.ndarray:
    """Mean squared error over each task's query points: (n_tasks,)."""
    prediction, targets = np.asarray(prediction, np.float64), np.asarray(targets, np.float64)
    return ((prediction.reshape(targets.shape) - targets) ** 2).mean(axis=1)


def _local(tasks, name):
    """The training tasks and set `name` re-indexed into their own points (train first)."""
    used = {(s, part): np.asarray(tasks[f"{s}_{part}"]) for s in ("train", name) for part in ("support", "query")}
    points = np.unique(np.concatenate([a.ravel() for a in used.values()]))
    loc = {key: np.searchsorted(points, a) for key, a in used.items()}
    sets = {}
    for s in ("train", name):
        sets[s] = TaskSet(loc[(s, "support")], loc[(s, "query")],
                          np.asarray(tasks[f"{s}_support_labels"], np.float64)[..., None],
                          np.asarray(tasks[f"{s}_query_labels"], np.float64)[..., None])
    return points, sets["train"], sets[name]


class _Problems:
    """Each evaluated set's local tasks and base kernel, computed once (the grid reuses them)."""

    def __init__(self, tasks, kernel):
        self.tasks, self.kernel, self.cache = tasks, kernel, {}

    def terms(self, name, options: MNKOptions, with_training: bool = True):
        """(per-task term, meta term) of set `name`, each (n_tasks, n_query)."""
        if name not in self.cache:
            points, train, evaluation = _local(self.tasks, name)
            self.cache[name] = (self.kernel(points), train, evaluation)
        K, train, evaluation = self.cache[name]
        if not with_training:  # no training task: the per-task regression alone
            train = TaskSet(train.support[:0], train.query[:0], train.support_y[:0], train.query_y[:0])
        per_task, meta = mnk_terms(K, train, evaluation, options)
        return per_task[..., 0], meta[..., 0]


def solve_regression(tasks, settings, options: MNKOptions, kernel):
    """MNK at the setting of lowest validation MSE (ties: the first listed) and kernel
    regression, on the test tasks. `settings`: (r2, meta_time, inner_time) triples;
    `kernel(point indices)` -> the base kernel over those points.

    Returns {"mnk": (per-task MSE, meta share), "kernel_regression": (per-task MSE, None),
    "curves": each method's prediction on the dense `curve` set (one test task's support, a
    grid of x), "selected": the setting, "validation": the table}.
    """
    from mnk.study.selection import meta_share

    problems = _Problems(tasks, kernel)
    table = []
    if len(settings) > 1:
        if not len(tasks["val_support"]):
            raise ValueError("the MNK grid needs validation tasks (sinusoid.n_val_tasks)")
        for r2, meta_time, inner_time in settings:
            per_task, meta = problems.terms("val", _at(options, r2, meta_time, inner_time))
            mse = per_task_mse(per_task + meta, tasks["val_query_labels"])
            table.append({"r2": r2, "meta_time": meta_time, "inner_time": inner_time,
                          "val_mse": float(mse.mean()), "val_meta_share": meta_share(per_task, meta)})
        best = min(range(len(settings)), key=lambda i: (table[i]["val_mse"], i))
    else:
        best = 0
    mnk_options = _at(options, *settings[best])
    kr_options = _at(options, options.ridge[1], math.inf, math.inf)  # the converged inner loop
    per_task, meta = problems.terms("test", mnk_options)
    kr = problems.terms("test", kr_options, with_training=False)[0]
    truth = tasks["test_query_labels"]
    curves = {"mnk": sum(problems.terms("curve", mnk_options)),
              "kernel_regression": problems.terms("curve", kr_options, with_training=False)[0]}
    return {"mnk": (per_task_mse(per_task + meta, truth), meta_share(per_task, meta)),
            "kernel_regression": (per_task_mse(kr, truth), None),
            "curves": curves, "selected": dict(zip(("r2", "meta_time", "inner_time"), settings[best])),
            "validation": table}


def _at(options: MNKOptions, r2, meta_time, inner_time) -> MNKOptions:
    return options.replace(ridge=(options.ridge[0], r2), meta_time=meta_time, inner_time=inner_time)


def regression_metrics(method: str, per_task, curve, tasks) -> dict:
    """Fields shared by every method's metrics.json on regression tasks; `curve`: its
    prediction on the `curve` set's grid (the figure of one test task)."""
    return {**mse_ci(per_task), "method": method, "per_task_mse": [float(v) for v in per_task],
            "test_tasks_id": str(tasks["test_tasks_id"]), "n_test_tasks": len(per_task),
            "n_train_tasks": len(tasks["train_support"]), "task_type": "regression",
            "curve_prediction": [float(v) for v in np.asarray(curve, np.float64).ravel()]}
