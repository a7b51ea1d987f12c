"""The sinusoid regression study (issue 26): its tasks, the MNK's regression solve against direct
computations, MAML's squared error, the tables, the config's refusals, and a scaled-down run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mnk.kernels.ntk import ntk_gram
from mnk.methods.mnk import MNKOptions
from mnk.study.config import ConfigError, parse_config
from mnk.study.regression import regression_kernel, solve_regression
from mnk.tasks.sinusoid import SinusoidOptions, experiment_tasks

REPO = Path(__file__).resolve().parents[1]
SMALL = SinusoidOptions(shot=(5, 10), n_train_tasks=(6, 24), seeds=(0,), n_val_tasks=12, n_test_tasks=30)


def _kernel(tasks, options=SMALL):
    return lambda points: regression_kernel(tasks["points"][points], depth=options.depth, bias=options.bias)


# ------------------------------------------------------------------------------- the tasks


def test_tasks_are_nested_shared_and_follow_the_family():
    few, many = (experiment_tasks(SMALL, shot=5, n_train_tasks=n, seed=0) for n in (6, 24))
    ten = experiment_tasks(SMALL, shot=10, n_train_tasks=6, seed=0)
    x = lambda t, key: t["points"][t[key], 0]  # noqa: E731
    for part in ("support", "query"):  # the first training tasks of the larger set, the same evaluation tasks
        np.testing.assert_array_equal(x(few, f"train_{part}"), x(many, f"train_{part}")[:6])
        for s in ("val", "test"):
            np.testing.assert_array_equal(x(few, f"{s}_{part}"), x(many, f"{s}_{part}"))
            np.testing.assert_array_equal(few[f"{s}_{part}_labels"], many[f"{s}_{part}_labels"])
    np.testing.assert_array_equal(x(ten, "test_support")[:, :5], x(few, "test_support"))  # K=5 in K=10
    np.testing.assert_array_equal(x(ten, "test_query"), x(few, "test_query"))
    assert str(few["test_tasks_id"]) == str(many["test_tasks_id"]) != str(ten["test_tasks_id"])
    other_seed = experiment_tasks(SMALL, shot=5, n_train_tasks=6, seed=1)
    assert not np.array_equal(x(other_seed, "test_query"), x(few, "test_query"))
    for s in ("train", "val", "test"):
        amplitude, phase = few[f"{s}_amplitude"], few[f"{s}_phase"]
        assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0 and phase.min() >= 0 and phase.max() <= math.pi
        for part in ("support", "query"):
            truth = amplitude[:, None] * np.sin(x(few, f"{s}_{part}") - phase[:, None])
            np.testing.assert_allclose(few[f"{s}_{part}_labels"], truth, rtol=0, atol=1e-12)
            assert np.abs(x(few, f"{s}_{part}")).max() <= 5.0
    assert len(np.unique(few["points"])) == len(few["points"])  # every point its own: no leak between sets


def test_bad_sinusoid_options_name_their_key():
    with pytest.raises(ValueError, match=r"sinusoid.amplitude must be \[low, high\] with low < high"):
        SinusoidOptions(amplitude=(5.0, 0.1))
    with pytest.raises(ValueError, match="sinusoid.shot must be a list of distinct integers >= 1"):
        SinusoidOptions(shot=(5, 5))
    with pytest.raises(ValueError, match="sinusoid.n_test_tasks must be at most 5000 tasks"):
        SinusoidOptions(n_test_tasks=6000)


# ------------------------------------------------------------------------ the MNK solve


def test_kernel_regression_is_each_task_solved_alone():
    """The baseline against a direct solve: unit-diagonal NTK of [x, 1], (K_ss + r1 I)^-1 y per task."""
    tasks = experiment_tasks(SMALL, shot=5, n_train_tasks=6, seed=0)
    r1 = 1e-5
    result = solve_regression(tasks, [(1.0, math.inf, math.inf)], MNKOptions(ridge=(r1, 1.0)), _kernel(tasks))
    expected = []
    for s, q, ys, yq in zip(tasks["test_support"], tasks["test_query"], tasks["test_support_labels"],
                            tasks["test_query_labels"]):
        idx = np.concatenate([s, q])
        features = np.stack([tasks["points"][idx, 0], np.ones(len(idx))], axis=1)
        K = ntk_gram(features, depth=SMALL.depth) + r1 * np.eye(len(idx))
        d = np.sqrt(np.diag(K))
        K = K / d[:, None] / d[None, :]
        ns = len(s)
        prediction = K[ns:, :ns] @ np.linalg.solve(K[:ns, :ns] + r1 * np.eye(ns), ys)
        expected.append(((prediction - yq) ** 2).mean())
    np.testing.assert_allclose(result["kernel_regression"][0], expected, rtol=1e-8)


def test_the_meta_term_cuts_the_error_of_per_task_regression_on_sinusoids():
    """Targets that mean the same in every task: the MNK's meta term must help (paired, test tasks)."""
    tasks = experiment_tasks(SMALL, shot=5, n_train_tasks=24, seed=0)
    result = solve_regression(tasks, [(1.0, math.inf, math.inf)], MNKOptions(ridge=(1e-5, 1.0)), _kernel(tasks))
    mnk_mse, share = result["mnk"]
    difference = mnk_mse - result["kernel_regression"][0]
    assert difference.mean() < 0 and share > 0.05, (difference.mean(), share)
    switched_off = solve_regression(tasks, [(1e6, math.inf, math.inf)], MNKOptions(ridge=(1e-5, 1e6)), _kernel(tasks))
    np.testing.assert_allclose(switched_off["mnk"][0], result["kernel_regression"][0], rtol=1e-4)
    assert switched_off["mnk"][1] < 1e-4


def test_the_setting_is_chosen_on_validation_mse_only():
    tasks = experiment_tasks(SMALL, shot=5, n_train_tasks=24, seed=0)
    settings = [(1e6, math.inf, math.inf), (1.0, math.inf, math.inf), (1.0, 1.0, math.inf)]
    result = solve_regression(tasks, settings, MNKOptions(ridge=(1e-5, 1.0)), _kernel(tasks))
    val = [row["val_mse"] for row in result["validation"]]
    assert tuple(result["selected"].values()) == settings[int(np.argmin(val))]
    poisoned = {**tasks, "test_query_labels": tasks["test_query_labels"] * 0 + 100.0}  # test targets never read
    assert solve_regression(poisoned, settings, MNKOptions(ridge=(1e-5, 1.0)), _kernel(tasks))["selected"] == \
        result["selected"]


# ------------------------------------------------------------------------------- MAML


def test_maml_on_points_trains_the_2x40_net_on_squared_error_and_reports_the_selected_mse():
    from torch.func import functional_call

    from mnk.methods.maml import _accuracy, _loss_and_logits, options_from_config, train_and_evaluate
    from mnk.methods.nets import build_network

    net = build_network("mlp", n_classes=1, image_size=(), hidden=40, in_channels=1)
    assert sum(p.numel() for p in net.parameters()) == 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1
    x, y = torch.randn(7, 1), torch.randn(7)
    params = dict(net.named_parameters())
    loss, out = _loss_and_logits(net, params, x, y)
    torch.testing.assert_close(loss, ((net(x)[:, 0] - y) ** 2).mean())
    torch.testing.assert_close(_accuracy(out, y), -loss)

    tasks = experiment_tasks(SMALL, shot=5, n_train_tasks=24, seed=0)
    options = options_from_config("maml", dict(
        network="mlp", hidden=40, invert=True, standardize=False, task_sampling="fixed", meta_iterations=60,
        epochs=None, meta_batch_size=6, meta_lr=0.01, inner_steps=1, inner_lr=0.01, test_inner_steps=1,
        eval_every=10, patience=3, implementation="vmap"))
    metrics, checkpoint = train_and_evaluate(tasks["points"], tasks, method="maml", options=options, seed=0,
                                             progress=False)
    assert metrics["task_type"] == "regression" and "accuracy" not in metrics
    net.load_state_dict(checkpoint["state_dict"])  # the selected checkpoint, adapted by hand
    expected = []
    for s, q, ys, yq in zip(tasks["test_support"], tasks["test_query"], tasks["test_support_labels"],
                            tasks["test_query_labels"]):
        xs, xq = (torch.as_tensor(tasks["points"][i], dtype=torch.float32) for i in (s, q))
        theta = {k: v.detach().requires_grad_(True) for k, v in net.named_parameters()}
        support = ((functional_call(net, theta, (xs,))[:, 0] - torch.as_tensor(ys, dtype=torch.float32)) ** 2).mean()
        grads = torch.autograd.grad(support, list(theta.values()))
        adapted = {k: v - 0.01 * g for (k, v), g in zip(theta.items(), grads)}
        prediction = functional_call(net, adapted, (xq,))[:, 0].detach().double().numpy()
        expected.append(((prediction - yq) ** 2).mean())
    np.testing.assert_allclose(metrics["per_task_mse"], expected, rtol=1e-4)
    assert metrics["mse"] == pytest.approx(np.mean(expected), rel=1e-4)
    best = max(metrics["learning_curve"], key=lambda e: -e["val_mse"])
    assert metrics["selected_iteration"] == best["iteration"] and metrics["val_mse"] == best["val_mse"]
    assert len(metrics["curve_prediction"]) == tasks["curve_query"].shape[1]


# ---------------------------------------------------------------------------- the tables


def test_paired_mse_differences_are_mnk_minus_each_method_on_the_same_tasks(tmp_path):
    from mnk.study.regression_results import paired_regression, per_task_regression, summarise_regression

    rng = np.random.default_rng(0)
    paths, per_task = [], {}
    for method in ("mnk", "maml"):
        for seed in (0, 1):
            mse = rng.uniform(0.1, 3.0, size=20)
            per_task[method, seed] = mse
            path = tmp_path / f"{method}{seed}.json"
            path.write_text(json.dumps({"method": method, "experiment": f"sinusoid-5shot-10tasks-seed{seed}",
                                        "shot": 5, "n_train_tasks": 10, "seed": seed, "mse": float(mse.mean()),
                                        "per_task_mse": mse.tolist(), "test_tasks_id": f"id{seed}"}))
            paths.append(path)
    paired = paired_regression(per_task_regression(paths))
    difference = np.concatenate([per_task["mnk", s] - per_task["maml", s] for s in (0, 1)])
    row = paired.iloc[0]
    assert (row["method"], row["baseline"], row["shot"], row["n_train_tasks"]) == ("mnk", "maml", 5, 10)
    assert row["mean_difference"] == pytest.approx(difference.mean())
    half = 1.96 * difference.std() / math.sqrt(len(difference))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((difference.mean() - half, difference.mean() + half))
    summary = summarise_regression(paths)
    assert summary[summary["method"] == "mnk"]["seeds_mse"].iloc[0] == pytest.approx(
        np.mean([per_task["mnk", s].mean() for s in (0, 1)]))


# --------------------------------------------------------------------- config and workflow


def _config(**edits):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    sinusoid = yaml.safe_load((REPO / "config" / "sinusoid.yaml").read_text())
    for key, value in sinusoid.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    for method in ("maml", "imaml"):
        config[method]["options"] = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text())[method]["options"],
                                     **sinusoid[method]["options"]}
    for path, value in edits.items():
        *parents, last = path.split(".")
        target = config
        for parent in parents:
            target = target[parent]
        target[last] = value
    return config


def test_the_sinusoid_config_parses_and_wrong_networks_are_refused():
    from mnk.study.config import SCHEMA

    study = parse_config(_config(), schema=SCHEMA)
    assert study.regression and study.sinusoid.shot == (5, 10)
    with pytest.raises(ConfigError, match="maml.options.network 'conv3' cannot read the points"):
        parse_config(_config(**{"maml.options.network": "conv3"}), schema=SCHEMA)
    omniglot = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    omniglot["imaml"]["options"]["network"] = "mlp"
    with pytest.raises(ConfigError, match="imaml.options.network 'mlp' takes points, not the images"):
        parse_config(omniglot, schema=SCHEMA)
    with pytest.raises(ConfigError, match="sinusoid.x_range"):
        parse_config(_config(**{"sinusoid.x_range": [5.0, -5.0]}), schema=SCHEMA)


@pytest.mark.slow
def test_a_scaled_down_sinusoid_study_runs_through_snakemake(tmp_path):
    from tests.test_workflow import COPY, snakemake

    for name in COPY:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    small = yaml.safe_load((REPO / "config" / "sinusoid.yaml").read_text())
    small["sinusoid"].update(shot=[5], n_train_tasks=[4, 12], seeds=[0], n_val_tasks=8, n_test_tasks=10)
    for method in ("maml", "imaml"):
        small[method]["options"].update(meta_iterations=40, eval_every=10, patience=2)
    (tmp_path / "config" / "small.yaml").write_text(yaml.safe_dump(small))
    snakemake(tmp_path, "--cores", "2", "--configfile", "config/small.yaml")
    import pandas as pd

    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert sorted(set(summary["method"])) == ["imaml", "kernel_regression", "maml", "mnk"]
    assert len(summary) == 8 and summary["mse"].notna().all() and (summary["n_test_tasks"] == 10).all()
    assert summary["test_tasks_id"].nunique() == 1  # the same test tasks for every method and size
    assert summary[summary["method"] == "mnk"]["meta_share"].notna().all()
    paired = pd.read_csv(tmp_path / "results" / "paired.csv")
    assert set(paired["baseline"]) == {"imaml", "kernel_regression", "maml"} and len(paired) == 6
    for figure in ("mse.png", "sinusoid_curves.png"):
        assert (tmp_path / "results" / "figures" / figure).stat().st_size > 10_000
