"""The study's outputs: the tidy summary table and the seaborn figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mnk.infra.io import load_json

SUMMARY_COLUMNS = [
    "method", "experiment", "way", "shot", "n_characters", "n_train_tasks", "seed",
    "accuracy", "ci95_low", "ci95_high", "n_test_tasks",
    "seeds_accuracy", "seeds_ci95_low", "seeds_ci95_high", "n_seeds",
    "test_tasks", "test_tasks_id", "selected", "meta_share", "stopped_by", "selected_iteration", "n_meta_updates",
    "cpu_seconds", "wall_seconds", "kernel_seconds", "device", "device_name", "kernel", "git_revision", "config_hash",
]
# Columns of a summary row computed over the seeds of its method and setting, not read.
SEED_COLUMNS = ["seeds_accuracy", "seeds_ci95_low", "seeds_ci95_high", "n_seeds"]
CURVE_COLUMNS = ["method", "experiment", "n_characters", "seed", "iteration", "val_acc", "selected"]
# One row per MNK experiment x grid setting: its validation accuracy (mnk_grid.csv).
GRID_COLUMNS = ["experiment", "way", "shot", "n_characters", "seed", "r2", "meta_time", "inner_time", "targets",
                "decoder", "val_accuracy", "val_meta_share", "kernel_regression_val_accuracy", "selected"]
PER_TASK_COLUMNS = ["method", "experiment", "way", "shot", "n_characters", "seed", "test_tasks_id", "task",
                    "accuracy"]
PAIRED_COLUMNS = ["method", "baseline", "way", "shot", "n_characters", "n_test_tasks", "mean_difference",
                  "ci95_low", "ci95_high", "n_seeds", "seeds_ci95_low", "seeds_ci95_high"]
METHOD_LABELS = {"mnk": "MNK", "maml": "MAML", "imaml": "iMAML",
                 "kernel_regression": "kernel regression (no meta)", "prototypes": "prototypes (no meta)"}
METHOD_ORDER = [METHOD_LABELS[m] for m in ("mnk", "maml", "imaml", "kernel_regression", "prototypes")]
METHOD_COLORS = {"mnk": "C0", "maml": "C1", "imaml": "C2", "kernel_regression": "C3", "prototypes": "C4"}
REFERENCE = "mnk"


def _read_metrics(path) -> dict:
    metrics = load_json(path)  # a damaged file is named, with the command that rebuilds it
    missing = [key for key in ("method", "accuracy", "ci95_low", "ci95_high", "n_characters", "seed")
               if key not in metrics]
    if missing:
        raise ValueError(f"metrics file {path} lacks {missing}")
    return metrics


def summarise(metrics_paths, config_hash: str = "", test_tasks: str = "sampled") -> pd.DataFrame:
    """One row per method x experiment x seed, from the metrics files.

    test_tasks: where the test tasks came from: "sampled", or the task list's
    `<file name>@<first 12 hex digits of its sha256>` (mnk.tasks.tasklist.list_id)."""
    rows = []
    for path in metrics_paths:
        metrics = _read_metrics(path)
        kernel, selected = metrics.get("kernel"), metrics.get("selected")
        rows.append({
            **{key: metrics.get(key) for key in SUMMARY_COLUMNS},
            "n_test_tasks": metrics.get("n_test_tasks", len(metrics.get("per_task_accuracy", [])) or None),
            "test_tasks_id": metrics.get("test_tasks_id", ""),
            "selected": " ".join(f"{k}={v}" for k, v in selected.items()) if selected else "",
            "kernel": _kernel_label(kernel) if kernel else "",
            "kernel_seconds": metrics.get("kernel_seconds", np.nan),
            "config_hash": config_hash,
            "test_tasks": test_tasks,
        })
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return _with_seed_intervals(frame.sort_values(["method", "way", "shot", "n_characters", "seed"],
                                                  ignore_index=True))


def _with_seed_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row gets its method and setting's mean over seeds with the t interval over the
    seed means (mnk.methods.metrics.seed_ci): training variance and test tasks together."""
    from mnk.methods.metrics import seed_ci

    for _, group in frame.groupby(["method", "way", "shot", "n_characters"], sort=False):
        ci = seed_ci(group["accuracy"].to_numpy(float))
        frame.loc[group.index, SEED_COLUMNS] = [ci["mean"], ci["ci95_low"], ci["ci95_high"], ci["n_seeds"]]
    return frame


def learning_curves(metrics_paths) -> pd.DataFrame:
    """Every meta-learner run's validation curve (one row per evaluation), the selected one marked."""
    rows = []
    for path in metrics_paths:
        metrics = _read_metrics(path)
        for entry in metrics.get("learning_curve") or []:
            rows.append({**{key: metrics.get(key) for key in CURVE_COLUMNS[:4]}, "iteration": entry["iteration"],
                         "val_acc": entry["val_acc"],
                         "selected": entry["iteration"] == metrics.get("selected_iteration")})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def mnk_grid_table(metrics_paths) -> pd.DataFrame:
    """Every MNK experiment's validation table (one row per grid setting), with kernel
    regression's validation accuracy on the same tasks and the selected setting marked."""
    rows = []
    for path in metrics_paths:
        metrics = _read_metrics(path)
        if metrics["method"] != "mnk":
            continue
        selected = metrics.get("selected") or {}
        for entry in metrics.get("validation") or []:
            setting = {key: entry[key] for key in GRID_COLUMNS[5:10]}
            rows.append({**{key: metrics.get(key) for key in GRID_COLUMNS[:5]}, **setting,
                         "val_accuracy": entry["val_accuracy"], "val_meta_share": entry.get("val_meta_share"),
                         "kernel_regression_val_accuracy": metrics.get("validation_kernel_regression"),
                         "selected": all(selected.get(key) == value for key, value in setting.items())})
    return pd.DataFrame(rows, columns=GRID_COLUMNS)


def per_task_table(metrics_paths) -> tuple[pd.DataFrame, list[str]]:
    """Long table of every test task's accuracy; and the metrics files without per-task accuracies."""
    rows, lacking = [], []
    for path in metrics_paths:
        metrics = _read_metrics(path)
        if "per_task_accuracy" not in metrics:
            lacking.append(str(path))
            continue
        base = {key: metrics.get(key) for key in PER_TASK_COLUMNS[:6]}
        for task, accuracy in enumerate(metrics["per_task_accuracy"]):
            rows.append({**base, "test_tasks_id": metrics.get("test_tasks_id", ""), "task": task, "accuracy": accuracy})
    frame = pd.DataFrame(rows, columns=PER_TASK_COLUMNS)
    return frame.sort_values(["method", "way", "shot", "n_characters", "seed", "task"], ignore_index=True), lacking


def _seed_differences(ref: pd.DataFrame, other: pd.DataFrame, what: str, score: str = "accuracy") -> np.ndarray:
    ids = set(ref["test_tasks_id"]), set(other["test_tasks_id"])
    if ids[0] != ids[1] or len(ref) != len(other):
        raise ValueError(f"cannot pair {what}: test tasks differ (test_tasks_id {sorted(ids[0])} vs "
                         f"{sorted(ids[1])}, {len(ref)} vs {len(other)} tasks)")
    return ref.sort_values("task")[score].to_numpy() - other.sort_values("task")[score].to_numpy()


OMNIGLOT_SETTING = ("way", "shot", "n_characters")


def paired_differences(per_task: pd.DataFrame, reference: str = REFERENCE, score: str = "accuracy",
                       setting: tuple[str, ...] = OMNIGLOT_SETTING) -> pd.DataFrame:
    """Per-test-task differences reference - baseline of `score`, seeds pooled, mean and 95% CI
    per `setting` (the grouping columns); and the t interval over the seeds' mean differences
    (training variance included: `seeds_ci95_*`).

    Pairs only experiments present for both methods, and refuses (ValueError) a pair whose
    test tasks differ (test_tasks_id or count). The interval is mnk.methods.metrics.accuracy_ci's
    normal interval over the pooled differences.
    """
    from mnk.methods.metrics import accuracy_ci, seed_ci

    rows = []
    for values, group in per_task.groupby(list(setting), sort=True):
        ref = group[group["method"] == reference]
        where = ("{}-way {}-shot {} characters".format(*values) if setting == OMNIGLOT_SETTING
                 else " ".join(f"{name} {value}" for name, value in zip(setting, values)))
        for baseline in sorted(set(group["method"]) - {reference}):
            other = group[group["method"] == baseline]
            seeds = sorted(set(ref["seed"]) & set(other["seed"]))
            if not seeds:
                continue
            by_seed = [
                _seed_differences(ref[ref["seed"] == seed], other[other["seed"] == seed],
                                  f"{reference} and {baseline} at {where} seed {seed}", score)
                for seed in seeds]
            ci = accuracy_ci(np.concatenate(by_seed))
            over_seeds = seed_ci([d.mean() for d in by_seed])
            rows.append({"method": reference, "baseline": baseline, **dict(zip(setting, values)),
                         "n_test_tasks": ci["n_tasks"], "mean_difference": ci["accuracy"],
                         "ci95_low": ci["ci95_low"], "ci95_high": ci["ci95_high"], "n_seeds": over_seeds["n_seeds"],
                         "seeds_ci95_low": over_seeds["ci95_low"], "seeds_ci95_high": over_seeds["ci95_high"]})
    columns = ["method", "baseline", *setting, *PAIRED_COLUMNS[5:]]
    return pd.DataFrame(rows, columns=columns)


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


def _settings(frame: pd.DataFrame) -> list[tuple[int, int]]:
    return sorted({(int(w), int(k)) for w, k in zip(frame["way"], frame["shot"])})


def _methods(frame: pd.DataFrame, column: str = "method") -> list[str]:
    present = set(frame[column])
    return [m for m in METHOD_LABELS if m in present] + sorted(present - set(METHOD_LABELS))


def _dodge(i: int, n: int, x: np.ndarray) -> np.ndarray:
    """Small multiplicative offsets so that methods at one x do not hide each other (log x)."""
    return x * 1.025 ** (i - (n - 1) / 2)


def _color(method: str, i: int) -> str:
    return METHOD_COLORS.get(method, f"C{5 + i}")


def _percent_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))


def _characters_axis(ax, characters) -> None:
    ax.set_xscale("log")
    ax.set_xticks(characters)
    ax.set_xticklabels([str(c) for c in characters])
    ax.minorticks_off()


def plot_accuracy(summary: pd.DataFrame, per_task: pd.DataFrame, png, pdf) -> None:
    """Test accuracy against training characters, per (way, shot).

    Per method: the mean over all test tasks of all seeds with two 95% intervals: the
    per-task one (mnk.methods.metrics.accuracy_ci over the pooled tasks; thick, capped) and
    the seed-and-task one (t over the seed means, mnk.methods.metrics.seed_ci; thin line), and
    one small point per seed (that seed's mean); a dashed line at chance (1 / way). Methods
    without per-task accuracies get their seed points only.
    """
    _style()
    import matplotlib.pyplot as plt

    from mnk.methods.metrics import accuracy_ci

    settings = _settings(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(7.5 * len(settings), 5.0), squeeze=False)
    methods = _methods(summary)
    for ax, (way, shot) in zip(axes[0], settings):
        rows = summary[(summary["way"] == way) & (summary["shot"] == shot)]
        tasks = per_task[(per_task["way"] == way) & (per_task["shot"] == shot)]
        characters = sorted(rows["n_characters"].unique())
        for i, method in enumerate(methods):
            color = _color(method, i)
            seeds = rows[rows["method"] == method]
            ax.scatter(_dodge(i, len(methods), seeds["n_characters"].to_numpy(float)), seeds["accuracy"],
                       s=14, color=color, alpha=0.55, linewidths=0)
            pooled = tasks[tasks["method"] == method].groupby("n_characters")["accuracy"]
            if len(pooled):
                cis = {c: accuracy_ci(a.to_numpy()) for c, a in pooled}
                x = np.array(sorted(cis), dtype=float)
                mean = np.array([cis[c]["accuracy"] for c in sorted(cis)])
                err = np.array([[m - cis[c]["ci95_low"], cis[c]["ci95_high"] - m] for c, m in zip(sorted(cis), mean)]).T
                n = sorted({cis[c]["n_tasks"] for c in cis})
                ax.errorbar(_dodge(i, len(methods), x), mean, yerr=err, color=color, marker="o", capsize=3, lw=2,
                            label=f"{METHOD_LABELS.get(method, method)} (CI over {'/'.join(map(str, n))} tasks)")
                _seed_interval(ax, _dodge(i, len(methods), x), seeds, sorted(cis), color)
            else:
                label = f"{METHOD_LABELS.get(method, method)} (seed means only)"
                means = seeds.groupby("n_characters")["accuracy"].mean()
                ax.errorbar(_dodge(i, len(methods), means.index.to_numpy(float)), means.to_numpy(), color=color,
                            ls=":", label=label)
        ax.axhline(1.0 / way, color="0.3", ls="--", lw=1)
        ax.annotate(f"chance ({100 / way:.0f}%)", (0.01, 1.0 / way), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=9, color="0.3")
        _characters_axis(ax, characters)
        _percent_axis(ax)
        ax.set(xlabel="training characters", ylabel="test accuracy", title=f"{way}-way {shot}-shot")
    _ordered_legend(axes[0][-1])
    fig.suptitle("Omniglot test accuracy: mean over test tasks (all seeds); capped bars: per-task 95% CI;\n"
                 "thin lines: 95% CI over seeds (training variance and test tasks); dots: seeds", y=1.07)
    _save(fig, png, pdf)
    plt.close(fig)


def _seed_interval(ax, x, rows: pd.DataFrame, characters, color) -> None:
    """The t interval over seeds (summary's seeds_ci95_*) as thin vertical lines at x."""
    first = rows.groupby("n_characters")[["seeds_ci95_low", "seeds_ci95_high"]].first()
    first = first.reindex(characters)
    ax.vlines(x, first["seeds_ci95_low"], first["seeds_ci95_high"], color=color, lw=0.9, alpha=0.8)


def plot_paired(paired: pd.DataFrame, png, pdf) -> None:
    """Paired per-test-task difference MNK - baseline with its two 95% CIs (per task, capped;
    over seeds, thin), and the zero line."""
    _style()
    import matplotlib.pyplot as plt

    settings = _settings(paired) if len(paired) else [(0, 0)]
    fig, axes = plt.subplots(1, len(settings), figsize=(7.5 * len(settings), 5.0), squeeze=False)
    baselines = _methods(paired, "baseline") if len(paired) else []
    for ax, (way, shot) in zip(axes[0], settings):
        rows = paired[(paired["way"] == way) & (paired["shot"] == shot)]
        for i, baseline in enumerate(baselines):
            r = rows[rows["baseline"] == baseline].sort_values("n_characters")
            if r.empty:
                continue
            mean = r["mean_difference"].to_numpy()
            err = np.vstack([mean - r["ci95_low"].to_numpy(), r["ci95_high"].to_numpy() - mean])
            n = "/".join(map(str, sorted(set(r["n_test_tasks"]))))
            x = _dodge(i, len(baselines), r["n_characters"].to_numpy(float))
            ax.errorbar(x, mean, yerr=err, color=_color(baseline, i), marker="o", capsize=3, lw=2,
                        label=f"MNK - {METHOD_LABELS.get(baseline, baseline)} ({n} tasks)")
            if "seeds_ci95_low" in r:
                ax.vlines(x, r["seeds_ci95_low"], r["seeds_ci95_high"], color=_color(baseline, i), lw=0.9)
        ax.axhline(0.0, color="black", lw=1)
        if len(rows):
            _characters_axis(ax, sorted(rows["n_characters"].unique()))
        ax.yaxis.set_major_formatter(__import__("matplotlib.ticker").ticker.FuncFormatter(
            lambda v, _: f"{100 * v:+.0f} pp"))
        ax.set(xlabel="training characters", ylabel="MNK accuracy minus baseline",
               title=f"{way}-way {shot}-shot" if way else "no pairs")
    if baselines:
        _ordered_legend(axes[0][-1])
    fig.suptitle("Paired differences on the same test tasks; capped bars: per-task 95% CI (seeds pooled);\n"
                 "thin lines: 95% CI over seeds; above 0: MNK better", y=1.07)
    _save(fig, png, pdf)
    plt.close(fig)


def _ordered_legend(ax) -> None:
    """Legend outside the axes (every entry is an errorbar container: plotting order kept)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


def _log_axis(axis, values=None) -> None:
    """Log axis with labelled ticks: the data's own values if given and within a decade, else 1-2-5."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    values = np.asarray(sorted(set(np.round(values, 12))) if values is not None else [], dtype=float)
    values = values[values > 0]
    if len(values) and values.max() / values.min() < 10:
        axis.set_major_locator(FixedLocator(values))
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_cost(summary: pd.DataFrame, png, pdf) -> None:
    """Measured CPU time of each method (its kernel share, encoder and solve, or its training)
    against training characters, per (way, shot) (log-log; the x labels give the MNK's
    training tasks too)."""
    _style()
    import matplotlib.pyplot as plt

    settings = _settings(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.5), squeeze=False)
    for ax, (way, shot) in zip(axes[0], settings):
        rows = summary[(summary["way"] == way) & (summary["shot"] == shot)]
        for i, method in enumerate(_methods(rows)):
            mean = rows[rows["method"] == method].groupby("n_characters")["cpu_seconds"].mean().dropna()
            if len(mean):
                ax.plot(mean.index, mean.to_numpy(), "-", marker="o", ms=4, color=_color(method, i),
                        label=METHOD_LABELS.get(method, method))
        tasks = rows.groupby("n_characters")["n_train_tasks"].first()
        ax.set(yscale="log", xlabel="training characters (training tasks)", ylabel="CPU seconds per experiment",
               title=f"{way}-way {shot}-shot")
        _characters_axis(ax, list(tasks.index))
        ax.set_xticklabels([f"{c}\n({t})" for c, t in tasks.items()])
        _log_axis(ax.yaxis)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle("Compute per experiment, measured (mean over seeds)", y=1.02)
    _save(fig, png, pdf)
    plt.close(fig)


def _time_label(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def plot_mnk_grid(grid: pd.DataFrame, png, pdf) -> None:
    """Validation accuracy over the MNK grid: one panel per (way, shot, n_characters), r2 on
    the x axis (log), one line per (targets, decoder, meta_time, inner_time), means over the
    seeds; per-task kernel regression on the same validation tasks as a horizontal line, the
    y axis from 25 points below it (settings far worse leave the frame)."""
    _style()
    import matplotlib.pyplot as plt

    # one-hot predictions decode alike under both decoders (argmax): one line for them
    first_decoder = grid[grid["targets"] == "onehot"]["decoder"].min()
    grid = grid[(grid["targets"] != "onehot") | (grid["decoder"] == first_decoder)]
    panels = sorted({(int(w), int(k), int(c)) for w, k, c in zip(grid["way"], grid["shot"], grid["n_characters"])})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.8), squeeze=False,
                             sharey=True)
    lines = sorted({(t, d, m, i) for t, d, m, i in zip(grid["targets"], grid["decoder"], grid["meta_time"],
                                                        grid["inner_time"])})
    targets = sorted({(t, d) for t, d, _, _ in lines})
    times = sorted({(m, i) for _, _, m, i in lines}, key=lambda mi: (-mi[0], -mi[1]))
    styles = ["-", "--", ":", "-."]
    for ax, (way, shot, chars) in zip(axes[0], panels):
        rows = grid[(grid["way"] == way) & (grid["shot"] == shot) & (grid["n_characters"] == chars)]
        for t, d, m, i in lines:
            line = rows[(rows["targets"] == t) & (rows["decoder"] == d) & (rows["meta_time"] == m)
                        & (rows["inner_time"] == i)]
            mean = line.groupby("r2")["val_accuracy"].mean()
            color = f"C{targets.index((t, d))}"
            style = styles[times.index((m, i)) % len(styles)]
            width = 2.2 if times.index((m, i)) == 0 else 1.2
            label = f"{t}{'' if t == 'onehot' else ' ' + d}, meta_time {_time_label(m)}, inner_time {_time_label(i)}"
            ax.plot(mean.index, mean.to_numpy(), style, color=color, lw=width, marker="o", ms=3, label=label)
        reference = rows.groupby("seed")["kernel_regression_val_accuracy"].first().astype(float).mean()
        if math.isfinite(reference):
            ax.axhline(reference, color="black", lw=1.5, label="kernel regression (no meta)")
            ax.set_ylim(max(1.0 / way, reference - 0.25), min(1.0, reference + 0.1))  # settings far below leave the frame
        ax.set_xscale("log")
        _percent_axis(ax)
        ax.set(xlabel="r2 (ridge on the MNK)", ylabel="validation accuracy",
               title=f"{way}-way {shot}-shot, {chars} characters")
    if panels:
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    fig.suptitle("MNK validation accuracy over the grid (mean over seeds); colour: targets, line style: times",
                 y=1.02)
    _save(fig, png, pdf)
    plt.close(fig)


def plot_mnk_spectrum(spectra, r2_values, meta_times, png, pdf) -> None:
    """Eigenvalues of the normalised training MNK (fixed settings, mnk.study.selection.mnk_spectrum)
    against their rank, one line per experiment (colour: training characters), with the
    grid's effective ridges Lam_pp / Phi_pp = r2 (1 + r2 + Phi_pp) / Phi_pp (median, and the
    range over query points shaded) and 1 / meta_time for finite meta-training times.

    spectra: (n_characters, seed, eigenvalues, phi_diagonal) per experiment."""
    _style()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    spectra = sorted(spectra, key=lambda s: (int(s[0]), int(s[1])))
    characters = sorted({int(c) for c, _, _, _ in spectra})
    for chars, seed, eigenvalues, _ in spectra:
        positive = np.asarray(eigenvalues)[np.asarray(eigenvalues) > 0]
        index = characters.index(int(chars))
        ax.plot(np.arange(1, len(positive) + 1), positive, color=f"C{index}", lw=1.2, alpha=0.8,
                label=f"{chars} characters" if seed == min(s for c, s, _, _ in spectra if c == chars) else None)
    diagonal = np.concatenate([np.asarray(d) for _, _, _, d in spectra]) if spectra else np.ones(1)
    for r2 in sorted(r2_values):
        ridge = r2 * (1 + r2 + diagonal) / diagonal
        ax.axhspan(ridge.min(), ridge.max(), color="0.5", alpha=0.12, lw=0)
        ax.axhline(float(np.median(ridge)), color="0.35", lw=0.9, ls="--")
        ax.annotate(f"r2={r2:g}", (1.0, float(np.median(ridge))), xycoords=("axes fraction", "data"),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=8, color="0.25")
    for t in sorted(t for t in meta_times if math.isfinite(t)):
        ax.axhline(1.0 / t, color="C3", lw=0.9, ls=":")
        ax.annotate(f"1/meta_time={1 / t:g}", (0.0, 1.0 / t), xycoords=("axes fraction", "data"),
                    xytext=(3, 2), textcoords="offset points", va="bottom", fontsize=8, color="C3")
    ax.set(yscale="log", xscale="log", xlabel="eigenvalue rank",
           ylabel="eigenvalue of the normalised MNK (training queries)",
           title="MNK spectrum at fixed settings and the grid's effective ridges")
    ax.legend(loc="lower left", frameon=False)
    _save(fig, png, pdf)
    plt.close(fig)


def plot_learning_curves(curves: pd.DataFrame, summary: pd.DataFrame, png, pdf) -> None:
    """Left: validation accuracy against meta-updates of every MAML/iMAML run, the selected
    checkpoint marked. Right: test accuracy against measured CPU seconds for every method
    (per experiment; meta-learners joined across training characters by their seed means)."""
    _style()
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.0))
    learners = _methods(curves) if len(curves) else []
    styles = dict(zip(sorted(curves["n_characters"].unique()) if len(curves) else [], ["-", "--", ":", "-."] * 9))
    labelled = set()
    for i, method in enumerate(learners):
        color = _color(method, i)
        for (chars, seed), run in curves[curves["method"] == method].groupby(["n_characters", "seed"]):
            run = run.sort_values("iteration")
            label = f"{METHOD_LABELS.get(method, method)}, {chars} characters"
            left.plot(run["iteration"], run["val_acc"], styles[chars], color=color, lw=1, alpha=0.7,
                      label=None if label in labelled else label)
            labelled.add(label)
            chosen = run[run["selected"]]
            left.scatter(chosen["iteration"], chosen["val_acc"], color=color, marker="*", s=60, zorder=3)
    left.set(xlabel="meta-updates", ylabel="validation accuracy", title="Validation accuracy during meta-training\n"
             "(star: selected; a curve ends where training stopped)")
    _percent_axis(left)
    if learners:
        left.legend(loc="lower right", fontsize=8, frameon=False)
    for i, method in enumerate(_methods(summary)):
        rows = summary[summary["method"] == method].dropna(subset=["cpu_seconds"])
        color = _color(method, i)
        right.scatter(rows["cpu_seconds"], rows["accuracy"], color=color, s=18, alpha=0.6,
                      label=METHOD_LABELS.get(method, method))
        if method in learners:
            means = rows.groupby("n_characters")[["cpu_seconds", "accuracy"]].mean()
            right.plot(means["cpu_seconds"], means["accuracy"], color=color, lw=1.5)
    right.set(xscale="log", xlabel="CPU seconds per experiment (measured)", ylabel="test accuracy",
              title="Test accuracy per unit of compute\n"
                    "(points: experiments; lines: learners' means)")
    _percent_axis(right)
    right.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    _save(fig, png, pdf)
    plt.close(fig)
