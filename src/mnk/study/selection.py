"""One experiment's MNK solve and its baselines without meta-learning.

* :func:`select_setting`: MNK's ridge r2, meta-training and inner-loop times, target type and
  decoder chosen from the config's grid (``mnk.grid``) by accuracy on the experiment's
  validation tasks. It is given the tasks file without its test arrays, so no test label can
  reach the choice.
* :func:`mnk_labels`: the MNK's labels for an evaluation task set under one setting, and its
  :func:`meta_share` (how large the meta term is beside the per-task term).
* :func:`mnk_spectrum`: the eigenvalues of the normalised MNK over training queries at fixed
  settings, against which the grid's ridges are read (the figure ``mnk_spectrum``).
* :func:`kernel_regression_labels`: per-task kernel regression on the support set with
  one-hot targets, the MNK without meta-training (``meta_time: 0``).
* :func:`prototype_labels`: nearest class mean in the label encoder's feature space.

All return per-query labels; :func:`method_metrics` turns them into the fields every
method's ``metrics.json`` shares.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from mnk.methods.metrics import accuracy_ci, per_task_accuracy
from mnk.methods.mnk import MNKOptions, TaskSet, mnk_gram, mnk_predict, mnk_terms
from mnk.methods.options import Setting
from mnk.methods.targets import decode, predict_labels, task_targets

__all__ = [
    "select_setting", "mnk_labels", "meta_share", "kernel_regression_labels", "kernel_regression_accuracy",
    "prototype_labels", "require_computed", "test_tasks_id", "method_metrics", "mnk_spectrum",
    "without_test_tasks", "cpu_cost",
]


def without_test_tasks(tasks: dict) -> dict:
    """The tasks file minus every test array: what model selection may see."""
    return {key: value for key, value in tasks.items() if not key.startswith("test_")}


def test_tasks_id(tasks: dict) -> str:
    """The tasks file's short hash of its test tasks ("" for files written before it existed)."""
    return str(tasks["test_tasks_id"]) if "test_tasks_id" in tasks else ""


def _solve(K, tasks, name, features, setting: Setting, options: MNKOptions):
    """(per-task term, meta term, class encodings) of task set ``name`` at one grid setting."""
    features = _features_for(setting.targets, features)
    train_y, train_qy, _ = task_targets(tasks, "train", features, with_query=True)
    eval_y, _, encodings = task_targets(tasks, name, features, with_query=False)
    train = TaskSet(tasks["train_support"], tasks["train_query"], train_y, train_qy)
    evaluation = TaskSet(tasks[f"{name}_support"], tasks[f"{name}_query"], eval_y)
    per_task, meta = mnk_terms(K, train, evaluation, options.at(setting))
    return per_task, meta, encodings


def meta_share(per_task, meta) -> float:
    """||meta term|| / ||per-task term||, Frobenius norms over all queries and outputs: 0 when
    the meta term is off, 1 when it is as large as the per-task regression (nan: no per-task term)."""
    denominator = float(np.linalg.norm(per_task))
    return float(np.linalg.norm(meta)) / denominator if denominator > 0 else math.nan


def mnk_labels(K, tasks, name, features, setting: Setting, options: MNKOptions):
    """(prediction, labels, meta share) of the MNK for task set ``name`` ("val" or "test")
    under ``setting``. ``features``: label-encoder features of the local images (needed for
    encoder targets)."""
    per_task, meta, encodings = _solve(K, tasks, name, features, setting, options)
    prediction = per_task + meta
    return prediction, decode(prediction, encodings, setting.decoder), meta_share(per_task, meta)


def _features_for(targets: str, features):
    if targets == "onehot":
        return None
    if features is None:
        raise ValueError("encoder targets need the label encoder's features")
    return features


def select_setting(K, tasks, features, settings: list[Setting], options: MNKOptions):
    """The setting of highest validation accuracy (ties: the first declared) and the table
    (each setting's validation accuracy with its interval and meta share).

    ``tasks`` is stripped of its test arrays first. One solve per setting but its decoder (the
    decoders share it). A grid of one needs no validation tasks (its table is empty then).
    """
    tasks = without_test_tasks(tasks)
    n_val = len(tasks.get("val_support", ()))
    if n_val == 0:
        if len(settings) > 1:
            raise ValueError(f"mnk.grid has {len(settings)} settings but there are no validation tasks "
                             "(tasks.n_val_tasks: 0): selection needs them")
        return settings[0], []
    table, solved = [], {}
    for setting in settings:
        key = (setting.r2, setting.meta_time, setting.inner_time, setting.targets)
        if key not in solved:
            solved[key] = _solve(K, tasks, "val", features, setting, options)
        per_task, meta, encodings = solved[key]
        labels = decode(per_task + meta, encodings, setting.decoder)
        ci = accuracy_ci(per_task_accuracy(labels, tasks["val_query_labels"]))
        table.append({**asdict(setting), "val_accuracy": ci["accuracy"], "val_ci95_low": ci["ci95_low"],
                      "val_ci95_high": ci["ci95_high"], "n_val_tasks": ci["n_tasks"],
                      "val_meta_share": meta_share(per_task, meta)})
    best = max(range(len(settings)), key=lambda i: (table[i]["val_accuracy"], -i))
    return settings[best], table


def kernel_regression_labels(K, tasks, name, options: MNKOptions):
    """Per-task kernel regression with one-hot targets: the MNK with no training task."""
    way = int(tasks["way"])
    support_y, _, _ = task_targets(tasks, name, None, with_query=False)
    n_s, n_q = tasks[f"{name}_support"].shape[1], tasks[f"{name}_query"].shape[1]
    empty = TaskSet(np.zeros((0, n_s), np.int64), np.zeros((0, n_q), np.int64),
                    np.zeros((0, n_s, way)), np.zeros((0, n_q, way)))
    evaluation = TaskSet(tasks[f"{name}_support"], tasks[f"{name}_query"], support_y)
    prediction = mnk_predict(K, empty, evaluation, options)
    return prediction, prediction.argmax(axis=-1)


def kernel_regression_accuracy(K, tasks, name, options: MNKOptions) -> float:
    """Mean accuracy of per-task kernel regression over task set ``name`` (the grid's reference)."""
    _, labels = kernel_regression_labels(K, tasks, name, options)
    return float(per_task_accuracy(labels, tasks[f"{name}_query_labels"]).mean())


def prototype_labels(features, tasks, name):
    """Nearest class mean (Euclidean) of each query's feature among the support's classes."""
    _, _, centroids = task_targets(tasks, name, features, with_query=False)
    query_features = np.asarray(features, dtype=np.float64)[tasks[f"{name}_query"]]
    return query_features, predict_labels(query_features, centroids)


def require_computed(computed, tasks, names, *, with_train: bool, what: str = "kernel") -> None:
    """Refuse a solve that would read kernel entries that were never computed.

    The solve reads: training images x training images (``with_train``), each evaluation
    task's images x the training images, and each task's own images.
    """
    computed = np.asarray(computed, dtype=bool)
    train = np.unique(np.concatenate([tasks["train_support"], tasks["train_query"]], axis=1)) if with_train else None
    missing = 0
    example = None
    for name in (["train"] if with_train else []) + list(names):
        for task in np.concatenate([tasks[f"{name}_support"], tasks[f"{name}_query"]], axis=1):
            cols = np.union1d(task, train) if with_train else task
            block = computed[np.ix_(task, cols)]
            if not block.all():
                missing += int((~block).sum())
                r, c = np.argwhere(~block)[0]
                example = example or (name, int(task[r]), int(cols[c]))
    if missing:
        name, i, j = example
        raise ValueError(f"{what}: {missing} entries the solve needs were never computed (e.g. [{i}, {j}] "
                         f"for the {name} tasks); rebuild the kernel (snakemake --forcerun assemble_kernel)")


def method_metrics(method: str, labels, tasks) -> dict:
    """Fields shared by every method's metrics.json, from its test-query labels."""
    accuracy = per_task_accuracy(labels, tasks["test_query_labels"])
    return {**accuracy_ci(accuracy), "method": method, "per_task_accuracy": accuracy.tolist(),
            "test_tasks_id": test_tasks_id(tasks), "n_test_tasks": len(tasks["test_support"]),
            "n_train_tasks": len(tasks["train_support"])}


def cpu_cost(own_seconds: float, kernel=None, encoder_cost: dict | None = None) -> dict:
    """A kernel method's measured CPU time on one experiment: its own job's, plus the share
    of the kernel blocks it reads (`kernel`: the assembled kernel's ``block_cpu_seconds``)
    and the label encoder's training (`encoder_cost`: train_encoder's cost.json)."""
    parts = {"solve_cpu_seconds": float(own_seconds)}
    if kernel is not None:
        parts["kernel_cpu_seconds"] = float(np.sum(kernel["block_cpu_seconds"]))
    if encoder_cost is not None:
        parts["encoder_cpu_seconds"] = float(encoder_cost["cpu_seconds"])
    return {**parts, "cpu_seconds": sum(parts.values())}


SPECTRUM_POINTS = 2000  # training query points at most: the eigenvalues of an M x M matrix


def mnk_spectrum(K, tasks, options: MNKOptions, max_points: int = SPECTRUM_POINTS):
    """(eigenvalues, descending; diag(Phi)) of the MNK over the first training tasks' queries
    (at most ``max_points`` of them), at fixed settings: converged inner loop, the config's r1,
    and normalised to unit diagonal without r2, so that nothing depends on the selection.

    The grid's ridge is read against it: with ``normalize_mnk`` the solve is
    ``(Phin + r2 I)^-1 = D^-1 (Phi + Lam)^-1 D^-1``, Lam = diag(r2 (1 + r2 + Phi_pp)), i.e. a
    ridge of Lam_pp / Phi_pp on this matrix; directions with eigenvalues well below it are
    switched off.
    """
    n_query = tasks["train_query"].shape[1]
    n_tasks = min(len(tasks["train_support"]), max(1, max_points // n_query))
    if n_tasks == 0:
        return np.zeros(0), np.zeros(0)
    raw = options.replace(normalize_mnk=False, inner_time=math.inf)
    phi = mnk_gram(K, tasks["train_support"][:n_tasks], tasks["train_query"][:n_tasks], raw)
    diag = np.diag(phi).copy()
    if not (diag > 0).all():
        raise ValueError(f"MNK diagonal not positive at {int((diag <= 0).sum())} training query points: "
                         "a query in the span of its task's support")
    scale = diag**-0.5
    return np.linalg.eigvalsh(phi * scale[:, None] * scale[None, :])[::-1].copy(), diag
