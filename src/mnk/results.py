"""The study's outputs: the tidy summary table and the seaborn figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = [
    "method", "experiment", "way", "shot", "n_characters", "n_train_tasks", "seed",
    "accuracy", "ci95_low", "ci95_high", "wall_seconds", "kernel_seconds", "device",
    "device_name", "kernel", "git_revision", "config_hash",
]
METHOD_LABELS = {"mnk": "MNK", "maml": "MAML", "imaml": "iMAML"}
METHOD_ORDER = ["MNK", "MAML", "iMAML"]


def summarise(metrics_paths, config_hash: str = "") -> pd.DataFrame:
    """One row per method x experiment x seed, from the metrics files."""
    rows = []
    for path in metrics_paths:
        metrics = json.loads(Path(path).read_text())
        missing = [key for key in ("method", "accuracy", "ci95_low", "ci95_high", "n_characters", "seed")
                   if key not in metrics]
        if missing:
            raise ValueError(f"metrics file {path} lacks {missing}")
        kernel = metrics.get("kernel")
        rows.append({
            **{key: metrics.get(key) for key in SUMMARY_COLUMNS},
            "kernel": _kernel_label(kernel) if kernel else "",
            "kernel_seconds": metrics.get("kernel_seconds", np.nan),
            "config_hash": config_hash,
        })
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return frame.sort_values(["method", "way", "shot", "n_characters", "seed"], ignore_index=True)


def _kernel_label(kernel: dict) -> str:
    if kernel["type"] == "ntk":
        return f"ntk depth={kernel['depth']}"
    return (f"cntk depth={kernel['depth']} gap={kernel['gap']} fix={kernel['fix']} "
            f"pad={kernel['pad']} standardize={kernel['standardize']}")


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.3)
    return sns


def _save(fig, png, pdf):
    for path in (png, pdf):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=200, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight")


def plot_accuracy(summary: pd.DataFrame, png, pdf) -> None:
    """Test accuracy against training characters, mean and 95% interval over seeds."""
    sns = _style()
    import matplotlib.pyplot as plt

    data = summary.assign(Method=summary["method"].map(METHOD_LABELS),
                          setting=summary["way"].astype(str) + "-way " + summary["shot"].astype(str) + "-shot")
    grid = sns.relplot(data=data, x="n_characters", y="accuracy", hue="Method", style="Method",
                       hue_order=[m for m in METHOD_ORDER if m in set(data["Method"])],
                       col="setting", kind="line", markers=True, dashes=False, errorbar=("ci", 95),
                       height=4.2, aspect=1.25, facet_kws={"sharey": False})
    tasks = data.groupby("n_characters")["n_train_tasks"].first()
    for ax in grid.axes.flat:
        ax.set_xticks(tasks.index)
        ax.set_xticklabels([f"{c}\n({t})" for c, t in tasks.items()])
    grid.set_axis_labels("training characters (training tasks)", "test accuracy")
    grid.figure.suptitle("Omniglot few-shot test accuracy (mean, 95% CI over seeds)", y=1.04)
    _save(grid.figure, png, pdf)
    plt.close(grid.figure)


def plot_cost(summary: pd.DataFrame, png, pdf) -> None:
    """Wall time of each method, and of MNK's kernel stage, against training tasks."""
    sns = _style()
    import matplotlib.pyplot as plt

    data = summary.assign(Method=summary["method"].map(METHOD_LABELS))
    kernel = data[data["method"] == "mnk"].assign(Method="MNK kernel stage", wall_seconds=lambda d: d["kernel_seconds"])
    data = pd.concat([data, kernel], ignore_index=True)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    order = [m for m in METHOD_ORDER + ["MNK kernel stage"] if m in set(data["Method"])]
    sns.lineplot(data=data, x="n_train_tasks", y="wall_seconds", hue="Method", style="Method",
                 hue_order=order, style_order=order, markers=True, dashes=False, errorbar=("ci", 95), ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="training tasks", ylabel="wall time (s)",
           title="Compute cost per experiment")
    from matplotlib.ticker import FormatStrFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(FormatStrFormatter(""))
    _save(fig, png, pdf)
    plt.close(fig)


def plot_kernel_heatmap(base: np.ndarray, meta: np.ndarray, png, pdf, *, base_title: str, meta_title: str) -> None:
    """Side-by-side heatmaps of a normalised base-kernel block and an MNK block."""
    sns = _style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, matrix, title in zip(axes, (base, meta), (base_title, meta_title)):
        sns.heatmap(matrix, ax=ax, cmap="viridis", square=True, xticklabels=False, yticklabels=False,
                    cbar_kws={"shrink": 0.8})
        ax.set_title(title)
    _save(fig, png, pdf)
    plt.close(fig)


def normalized(K: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.clip(np.diag(K), 1e-300, None))
    return K / d[:, None] / d[None, :]
