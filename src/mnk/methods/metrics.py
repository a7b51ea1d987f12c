"""Few-shot evaluation metrics shared by MNK, MAML and iMAML.

The reported number is the mean per-task accuracy over the test tasks with a normal
95% confidence interval, mean +/- 1.96 * std / sqrt(n_tasks) (std with ddof=0, as
``np.std``, the convention of the few-shot literature and of the original code).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["accuracy_ci", "per_task_accuracy", "seed_ci"]

Z95 = 1.96


def per_task_accuracy(pred_labels, true_labels) -> np.ndarray:
    """Fraction of correct labels per task.

    pred_labels, true_labels: integer arrays of shape (n_tasks, n_query) (a 1-D array is
    one task). Returns float64 array of shape (n_tasks,).
    """
    pred = np.asarray(pred_labels)
    true = np.asarray(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels shape {pred.shape} != true_labels shape {true.shape}")
    if pred.ndim == 1:
        pred, true = pred[None], true[None]
    if pred.ndim != 2 or pred.shape[1] == 0:
        raise ValueError(f"expected labels of shape (n_tasks, n_query>0), got {pred.shape}")
    return (pred == true).mean(axis=1).astype(np.float64)


def accuracy_ci(per_task_accuracy) -> dict:
    """Mean accuracy over tasks with a 95% confidence interval.

    Returns ``dict(accuracy, ci95_low, ci95_high, n_tasks)`` with plain Python floats/int
    (JSON-serialisable). accuracy = mean; half-width = 1.96 * std(ddof=0) / sqrt(n).
    A single task gives a zero-width interval.
    """
    acc = np.asarray(per_task_accuracy, dtype=np.float64).ravel()
    if acc.size == 0:
        raise ValueError("accuracy_ci: no tasks (empty per-task accuracy array)")
    if not np.all(np.isfinite(acc)):
        raise ValueError("accuracy_ci: per-task accuracies contain NaN/inf")
    n = int(acc.size)
    mean = float(acc.mean())
    half = float(Z95 * acc.std() / math.sqrt(n))
    return {
        "accuracy": mean,
        "ci95_low": mean - half,
        "ci95_high": mean + half,
        "n_tasks": n,
    }


def mse_ci(per_task_mse) -> dict:
    """Mean squared error over tasks with the same normal 95% interval as :func:`accuracy_ci`."""
    ci = accuracy_ci(per_task_mse)
    return {"mse": ci["accuracy"], "mse_ci95_low": ci["ci95_low"], "mse_ci95_high": ci["ci95_high"],
            "n_tasks": ci["n_tasks"]}


def seed_ci(seed_means) -> dict:
    """Mean over seeds with a Student-t 95% interval over the seed means.

    Each seed has its own training run AND its own test tasks, so this interval holds both
    sources of variation (training variance, test-task sampling), unlike :func:`accuracy_ci`
    over pooled test tasks. Returns ``dict(mean, ci95_low, ci95_high, n_seeds)``; with one
    seed the interval is undefined (NaN).
    """
    from scipy.stats import t

    means = np.asarray(seed_means, dtype=np.float64).ravel()
    if means.size == 0 or not np.all(np.isfinite(means)):
        raise ValueError("seed_ci: no seeds, or non-finite seed means")
    n, mean = int(means.size), float(means.mean())
    half = float(t.ppf(0.975, n - 1) * means.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, "n_seeds": n}
