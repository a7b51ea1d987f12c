"""The sinusoid study's outputs: summary, per-task and paired tables of the test MSE, figures.

The same protocol as the classification tables (mnk.study.results): one summary row per
method x experiment with the per-task 95% interval and the t interval over seeds; paired
differences MNK - method over the same test tasks (seeds pooled, and over seeds). Lower MSE
is better, so a negative difference means MNK is better.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mnk.infra.io import load_json
from mnk.study.results import (METHOD_LABELS, _characters_axis, _color, _dodge, _log_axis, _methods,
                               _ordered_legend, _save, _style, paired_differences)

SETTING = ("shot", "n_train_tasks")
SUMMARY_COLUMNS = [
    "method", "experiment", "shot", "n_train_tasks", "seed", "mse", "mse_ci95_low", "mse_ci95_high", "n_test_tasks",
    "seeds_mse", "seeds_ci95_low", "seeds_ci95_high", "n_seeds", "test_tasks_id", "selected", "meta_share",
    "stopped_by", "selected_iteration", "n_meta_updates", "cpu_seconds", "git_revision", "config_hash",
]
PER_TASK_COLUMNS = ["method", "experiment", "shot", "n_train_tasks", "seed", "test_tasks_id", "task", "mse"]


def _read(path) -> dict:
    metrics = load_json(path)
    missing = [key for key in ("method", "mse", "per_task_mse", "shot", "n_train_tasks", "seed") if key not in metrics]
    if missing:
        raise ValueError(f"metrics file {path} lacks {missing} (not a regression task's metrics?)")
    return metrics


def summarise_regression(metrics_paths, config_hash: str = "") -> pd.DataFrame:
    from mnk.methods.metrics import seed_ci

    rows = []
    for path in metrics_paths:
        metrics = _read(path)
        selected = metrics.get("selected")
        rows.append({**{key: metrics.get(key) for key in SUMMARY_COLUMNS},
                     "selected": " ".join(f"{k}={v}" for k, v in selected.items()) if selected else "",
                     "config_hash": config_hash})
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).sort_values(["method", *SETTING, "seed"], ignore_index=True)
    for _, group in frame.groupby(["method", *SETTING], sort=False):
        ci = seed_ci(group["mse"].to_numpy(float))
        frame.loc[group.index, ["seeds_mse", "seeds_ci95_low", "seeds_ci95_high", "n_seeds"]] = [
            ci["mean"], ci["ci95_low"], ci["ci95_high"], ci["n_seeds"]]
    return frame


def per_task_regression(metrics_paths) -> pd.DataFrame:
    rows = []
    for path in metrics_paths:
        metrics = _read(path)
        base = {key: metrics.get(key) for key in PER_TASK_COLUMNS[:6]}
        rows += [{**base, "task": task, "mse": mse} for task, mse in enumerate(metrics["per_task_mse"])]
    return pd.DataFrame(rows, columns=PER_TASK_COLUMNS).sort_values(
        ["method", *SETTING, "seed", "task"], ignore_index=True)


def paired_regression(per_task: pd.DataFrame) -> pd.DataFrame:
    """MNK's MSE minus each method's on the same test tasks (negative: MNK better)."""
    return paired_differences(per_task, score="mse", setting=SETTING)


def curves_table(metrics_paths, tasks_by_experiment: dict) -> pd.DataFrame:
    """Each method's prediction on the `curve` task's grid (one test task), with the truth."""
    rows = []
    for path in metrics_paths:
        metrics = _read(path)
        tasks = tasks_by_experiment[metrics["experiment"]]
        x = np.asarray(tasks["points"])[np.asarray(tasks["curve_query"])[0], 0]
        truth = np.asarray(tasks["curve_query_labels"])[0]
        rows += [{"method": metrics["method"], "experiment": metrics["experiment"], "shot": metrics["shot"],
                  "n_train_tasks": metrics["n_train_tasks"], "seed": metrics["seed"], "x": float(a),
                  "prediction": float(p), "truth": float(t)}
                 for a, p, t in zip(x, metrics["curve_prediction"], truth)]
    return pd.DataFrame(rows)


def plot_mse(summary: pd.DataFrame, per_task: pd.DataFrame, png, pdf) -> None:
    """Test MSE against training tasks (log-log), one panel per K: mean over the test tasks of all
    seeds with the per-task 95% interval, and each seed's mean (the t interval over seeds is in
    summary.csv: with two or three seeds it spans decades)."""
    _style()
    import matplotlib.pyplot as plt

    from mnk.methods.metrics import accuracy_ci

    shots = sorted(summary["shot"].unique())
    fig, axes = plt.subplots(1, len(shots), figsize=(6.5 * len(shots), 4.6), squeeze=False)
    methods = _methods(summary)
    for ax, shot in zip(axes[0], shots):
        rows, tasks = summary[summary["shot"] == shot], per_task[per_task["shot"] == shot]
        for i, method in enumerate(methods):
            color, seeds = _color(method, i), rows[rows["method"] == method]
            ax.scatter(_dodge(i, len(methods), seeds["n_train_tasks"].to_numpy(float)), seeds["mse"], s=14,
                       color=color, alpha=0.55, linewidths=0)
            pooled = tasks[tasks["method"] == method].groupby("n_train_tasks")["mse"]
            cis = {n: accuracy_ci(g.to_numpy()) for n, g in pooled}
            x = np.array(sorted(cis), dtype=float)
            mean = np.array([cis[n]["accuracy"] for n in sorted(cis)])
            err = np.array([[m - cis[n]["ci95_low"], cis[n]["ci95_high"] - m] for n, m in zip(sorted(cis), mean)]).T
            ax.errorbar(_dodge(i, len(methods), x), mean, yerr=err, color=color, marker="o", capsize=3, lw=2,
                        label=METHOD_LABELS.get(method, method))
        ax.set_yscale("log")  # MSEs of the methods differ by factors
        _log_axis(ax.yaxis)
        _characters_axis(ax, sorted(rows["n_train_tasks"].unique()))  # log x, one tick per size
        ax.set(xlabel="training tasks", ylabel="test MSE (lower is better)", title=f"sinusoid, K = {shot}")
    _ordered_legend(axes[0][-1])
    fig.suptitle("Sinusoid regression: mean test MSE over the test tasks of all seeds; capped bars: per-task 95% CI; "
                 "dots: seed means", y=1.02)
    _save(fig, png, pdf)
    plt.close(fig)


def plot_curves(curves: pd.DataFrame, tasks_by_experiment: dict, png, pdf) -> None:
    """One test task (seed 0's first) at K = each shot with the most training tasks: its support
    points, its true curve and each method's prediction."""
    _style()
    import matplotlib.pyplot as plt

    shots = sorted(curves["shot"].unique())
    fig, axes = plt.subplots(1, len(shots), figsize=(6.5 * len(shots), 4.6), squeeze=False)
    for ax, shot in zip(axes[0], shots):
        rows = curves[curves["shot"] == shot]
        rows = rows[(rows["seed"] == rows["seed"].min()) & (rows["n_train_tasks"] == rows["n_train_tasks"].max())]
        experiment = rows["experiment"].iloc[0]
        first = rows[rows["method"] == rows["method"].iloc[0]]
        ax.plot(first["x"], first["truth"], color="black", lw=2.5, label="true curve")
        for i, method in enumerate(_methods(rows)):
            r = rows[rows["method"] == method]
            ax.plot(r["x"], r["prediction"], color=_color(method, i), lw=1.6, label=METHOD_LABELS.get(method, method))
        tasks = tasks_by_experiment[experiment]
        xs = np.asarray(tasks["points"])[np.asarray(tasks["curve_support"])[0], 0]
        ax.scatter(xs, np.asarray(tasks["curve_support_labels"])[0], color="black", marker="^", s=60, zorder=5,
                   label="support points")
        ax.set(xlabel="x", ylabel="y", title=f"K = {shot}, {int(rows['n_train_tasks'].iloc[0])} training tasks "
                                             f"(seed {int(rows['seed'].iloc[0])}, test task 0)")
    _ordered_legend(axes[0][-1])
    _save(fig, png, pdf)
    plt.close(fig)
