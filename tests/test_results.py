"""Summary table and figures from synthetic metrics files."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from mnk.study.results import (
    paired_differences,
    per_task_table,
    plot_accuracy,
    learning_curves,
    mnk_grid_table,
    plot_cost,
    plot_learning_curves,
    plot_mnk_grid,
    plot_mnk_spectrum,
    plot_paired,
    summarise,
)

N_TASKS = 8


def _per_task(method, chars, seed):
    """Per-task accuracies that differ between methods, seeds and tasks (multiples of 1/9)."""
    rng = np.random.default_rng([sum(map(ord, method)), chars, seed])
    return (rng.integers(0, 10, N_TASKS) / 9).tolist()


def _metrics(tmp_path, method, chars, seed, accuracy):
    path = tmp_path / method / f"{chars}-{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"method": method, "experiment": f"5way1shot-{chars}char-seed{seed}", "way": 5, "shot": 1,
            "n_characters": chars, "n_train_tasks": chars // 5 * 3, "seed": seed, "accuracy": accuracy,
            "ci95_low": accuracy - 0.05, "ci95_high": accuracy + 0.05, "wall_seconds": 10.0 * chars,
            "device": "cpu", "device_name": "cpu (x86_64, 2 cores)", "git_revision": "abc1234",
            "per_task_accuracy": _per_task(method, chars, seed), "test_tasks_id": f"{chars:04d}{seed:08d}",
            "n_test_tasks": N_TASKS, "cpu_seconds": 3.0 * chars + seed}
    if method in ("maml", "imaml"):
        data.update(selected_iteration=20, stopped_by="plateau", n_meta_updates=40,
                    learning_curve=[{"iteration": i, "val_acc": 0.5 + 0.01 * min(i, 20) - 0.001 * seed}
                                    for i in (10, 20, 30, 40)])
    if method == "mnk":
        data.update(kernel={"type": "cntk", "depth": 10, "gap": False, "fix": False, "pad": 0, "standardize": False},
                    kernel_seconds=8.0 * chars, meta_share=0.01 * chars + 0.001 * seed,
                    validation=_validation(chars, seed), validation_kernel_regression=0.6,
                    selected={"r2": 1.0, "meta_time": math.inf, "inner_time": 1.0, "targets": "onehot",
                              "decoder": "nearest_centroid"})
    path.write_text(json.dumps(data))
    return path


GRID_R2, GRID_TIMES = (1e-3, 1.0), ((math.inf, math.inf), (math.inf, 1.0), (2.0, math.inf))


def _validation(chars, seed):
    """An MNK validation table over r2 x (meta_time, inner_time), one-hot targets."""
    return [{"r2": r2, "meta_time": m, "inner_time": i, "targets": "onehot", "decoder": "nearest_centroid",
             "val_accuracy": 0.5 + 0.1 * r2 + 0.01 * k + 0.001 * seed + 0.0001 * chars, "val_meta_share": 0.1 / (1 + r2)}
            for r2 in GRID_R2 for k, (m, i) in enumerate(GRID_TIMES)]


@pytest.fixture
def summary(tmp_path):
    return summarise(reversed(_paths(tmp_path)), config_hash="deadbeef0001")


def _paths(tmp_path):
    return [_metrics(tmp_path, method, chars, seed, 0.5 + 0.01 * chars + 0.1 * (method == "mnk") + 0.01 * seed)
            for method in ("mnk", "maml", "imaml") for chars in (5, 10, 20) for seed in (0, 1)]


def test_summary_has_one_row_per_method_experiment_seed(summary):
    assert len(summary) == 18
    assert list(summary.columns[:7]) == ["method", "experiment", "way", "shot", "n_characters", "n_train_tasks", "seed"]
    row = summary[(summary.method == "mnk") & (summary.n_characters == 10) & (summary.seed == 1)].iloc[0]
    assert row.accuracy == pytest.approx(0.5 + 0.1 + 0.1 + 0.01)
    assert row.kernel == "cntk depth=10 gap=False fix=False pad=0 standardize=False"
    assert row.kernel_seconds == 80.0 and row.config_hash == "deadbeef0001" and row.git_revision == "abc1234"
    assert row.test_tasks_id == "001000000001" and row.n_test_tasks == N_TASKS
    assert row.meta_share == pytest.approx(0.101) and summary[summary.method == "maml"].meta_share.isna().all()
    maml = summary[summary.method == "maml"]
    assert maml.kernel.eq("").all() and maml.kernel_seconds.isna().all()
    # Sorted: method, then n_characters, then seed.
    assert summary.method.tolist() == sorted(summary.method.tolist())
    assert summary[summary.method == "mnk"].n_characters.tolist() == [5, 5, 10, 10, 20, 20]
    # the interval over seeds: accuracies 0.70 and 0.71 -> mean 0.705 +- 12.706 * 0.00707 / sqrt(2)
    half = 12.7062047362 * np.std([0.70, 0.71], ddof=1) / np.sqrt(2)
    assert (row.seeds_accuracy, row.n_seeds) == (pytest.approx(0.705), 2)
    assert (row.seeds_ci95_low, row.seeds_ci95_high) == pytest.approx((0.705 - half, 0.705 + half))


def test_mnk_grid_table_has_every_setting_and_marks_the_selected_one(tmp_path):
    grid = mnk_grid_table(_paths(tmp_path))
    assert len(grid) == 3 * 2 * len(GRID_R2) * len(GRID_TIMES)  # MNK runs only: 3 n_characters x 2 seeds
    assert grid.groupby("experiment")["selected"].sum().eq(1).all()
    chosen = grid[grid["selected"]]
    assert (chosen["r2"] == 1.0).all() and (chosen["inner_time"] == 1.0).all() and chosen["meta_time"].map(math.isinf).all()
    row = grid[(grid.n_characters == 20) & (grid.seed == 1) & (grid.r2 == 1e-3) & (grid.meta_time == 2.0)].iloc[0]
    assert row.val_accuracy == pytest.approx(0.5 + 1e-4 + 0.02 + 0.001 + 0.002)
    assert row.kernel_regression_val_accuracy == 0.6 and row.val_meta_share == pytest.approx(0.1 / 1.001)


def test_summary_rejects_incomplete_metrics(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"method": "mnk", "accuracy": 0.5}))
    with pytest.raises(ValueError, match="lacks .*ci95_low"):
        summarise([path])


def test_a_corrupt_metrics_file_is_named(tmp_path):
    """A truncated metrics.json was a bare JSONDecodeError; now the file and its cure are named."""
    from mnk.infra.io import CorruptFileError

    paths = _paths(tmp_path)
    paths[4].write_text(paths[4].read_text()[:40])
    with pytest.raises(CorruptFileError, match=rf"JSON file {re.escape(str(paths[4]))} is corrupt or truncated "
                                               rf"\(JSONDecodeError: .*\); rebuild it, .*--forcerun {re.escape(str(paths[4]))}"):
        summarise(paths)


def test_paired_differences_equal_a_direct_computation(tmp_path):
    """mean and 95% CI of MNK - baseline over the test tasks of both seeds, by hand."""
    per_task, lacking = per_task_table(_paths(tmp_path))
    assert not lacking and len(per_task) == 3 * 3 * 2 * N_TASKS
    paired = paired_differences(per_task)
    assert list(paired.columns) == ["method", "baseline", "way", "shot", "n_characters", "n_test_tasks",
                                    "mean_difference", "ci95_low", "ci95_high", "n_seeds", "seeds_ci95_low",
                                    "seeds_ci95_high"]
    assert len(paired) == 2 * 3 and set(paired.baseline) == {"maml", "imaml"} and set(paired.method) == {"mnk"}
    for row in paired.itertuples():
        d = np.concatenate([np.subtract(_per_task("mnk", row.n_characters, seed),
                                        _per_task(row.baseline, row.n_characters, seed)) for seed in (0, 1)])
        half = 1.96 * np.sqrt(((d - d.mean()) ** 2).mean()) / np.sqrt(len(d))
        assert row.n_test_tasks == 2 * N_TASKS
        assert row.mean_difference == pytest.approx(d.mean(), abs=1e-12)
        assert (row.ci95_low, row.ci95_high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
        # over seeds: t interval (1 degree of freedom: t = 12.706) of the two seeds' mean differences
        seed_means = d.reshape(2, N_TASKS).mean(axis=1)
        half = 12.7062047362 * np.std(seed_means, ddof=1) / np.sqrt(2)
        assert row.n_seeds == 2
        assert (row.seeds_ci95_low, row.seeds_ci95_high) == pytest.approx(
            (seed_means.mean() - half, seed_means.mean() + half), abs=1e-9)


def test_pairing_refuses_different_test_tasks(tmp_path):
    paths = _paths(tmp_path)
    path = next(p for p in paths if p.parent.name == "maml" and p.name == "10-1.json")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "test_tasks_id": "ffffffffffff"}))
    with pytest.raises(ValueError, match=r"cannot pair mnk and maml at 5-way 1-shot 10 characters seed 1"):
        paired_differences(per_task_table(paths)[0])
    path.write_text(json.dumps({**data, "per_task_accuracy": data["per_task_accuracy"][:-1]}))
    with pytest.raises(ValueError, match="8 vs 7 tasks"):
        paired_differences(per_task_table(paths)[0])
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "per_task_accuracy"}))
    assert per_task_table(paths)[1] == [str(path)]


def test_figures_are_written_and_non_empty(summary, tmp_path):
    from PIL import Image

    per_task, _ = per_task_table(_paths(tmp_path / "m"))
    plot_accuracy(summary, per_task, tmp_path / "a.png", tmp_path / "a.pdf")
    plot_paired(paired_differences(per_task), tmp_path / "p.png", tmp_path / "p.pdf")
    plot_cost(summary, tmp_path / "c.png", tmp_path / "c.pdf")
    curves = learning_curves(_paths(tmp_path / "m"))
    assert len(curves) == 2 * 3 * 2 * 4 and curves["selected"].sum() == 2 * 3 * 2  # one per run
    assert (curves[curves["selected"]]["iteration"] == 20).all()
    plot_learning_curves(curves, summary, tmp_path / "l.png", tmp_path / "l.pdf")
    plot_mnk_grid(mnk_grid_table(_paths(tmp_path / "m")), tmp_path / "g.png", tmp_path / "g.pdf")
    rng = np.random.default_rng(0)
    spectra = [(chars, seed, np.sort(rng.exponential(size=40))[::-1], rng.uniform(0.1, 0.5, 40))
               for chars in (5, 10) for seed in (0, 1)]
    plot_mnk_spectrum(spectra, [1e-3, 1.0], [math.inf, 2.0], tmp_path / "s.png", tmp_path / "s.pdf")
    for name in ("a", "p", "c", "g", "s", "l"):
        image = np.asarray(Image.open(tmp_path / f"{name}.png").convert("L"))
        assert image.shape[0] > 300 and image.shape[1] > 300
        assert image.std() > 10  # not a blank canvas
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
