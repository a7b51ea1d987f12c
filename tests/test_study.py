"""mnk.study.selection: selection on validation tasks only, the baselines, the kernel checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnk.methods.mnk import DegenerateKernelError, MNKOptions
from mnk.study.selection import (
    kernel_regression_labels,
    method_metrics,
    mnk_labels,
    prototype_labels,
    require_computed,
    select_setting,
)

WAY, SHOT, QUERY = 3, 1, 2

from mnk.methods.options import MNKSection, Setting  # noqa: E402


def grid_settings(grid):
    return list(MNKSection.from_section({"grid": grid}).settings)


def _study(seed=0, n_classes=15, per_class=4, n_train=6, n_val=4, n_test=5):
    """Clustered images; tasks over disjoint train / val / test classes, class-major."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, 10)) * 1.5
    X = np.repeat(centres, per_class, axis=0) + rng.standard_normal((n_classes * per_class, 10))
    K = X @ X.T / 10 + 0.5 * np.exp(-((X[:, None] - X[None]) ** 2).sum(-1) / 20)
    classes = np.split(rng.permutation(n_classes), [5, 10])
    tasks = {"way": np.int64(WAY)}
    for name, pool, n in (("train", classes[0], n_train), ("val", classes[1], n_val), ("test", classes[2], n_test)):
        S, Q = [], []
        for _ in range(n):
            chosen = rng.choice(pool, WAY, replace=False)
            images = [c * per_class + rng.permutation(per_class)[: SHOT + QUERY] for c in chosen]
            S.append(np.concatenate([i[:SHOT] for i in images]))
            Q.append(np.concatenate([i[SHOT:] for i in images]))
        tasks[f"{name}_support"], tasks[f"{name}_query"] = np.array(S), np.array(Q)
        tasks[f"{name}_support_labels"] = np.tile(np.repeat(np.arange(WAY), SHOT), (n, 1))
        tasks[f"{name}_query_labels"] = np.tile(np.repeat(np.arange(WAY), QUERY), (n, 1))
    features = X[:, :6] + 0.1 * rng.standard_normal((len(X), 6))
    return K, tasks, features


GRID = {"r2": [1e-5, 1.0, 100.0], "targets": ["onehot", "encoder"], "decoder": ["nearest_centroid", "least_squares"]}
OPTIONS = MNKOptions(ridge=(1e-4, 1e-5))


def test_selection_never_reads_test_tasks():
    """Poisoned test labels and NaN kernel entries of every test image change nothing."""
    K, tasks, features = _study()
    settings = grid_settings(GRID)
    chosen, table = select_setting(K, tasks, features, settings, OPTIONS)
    test_images = np.unique(np.concatenate([tasks["test_support"], tasks["test_query"]], axis=1))
    K_bad = K.copy()
    K_bad[test_images, :] = K_bad[:, test_images] = np.nan
    features_bad = features.copy()
    features_bad[test_images] = np.nan
    poisoned = dict(tasks, test_query_labels=(tasks["test_query_labels"] + 1) % WAY,
                    test_support_labels=np.zeros_like(tasks["test_support_labels"]))
    chosen_bad, table_bad = select_setting(K_bad, poisoned, features_bad, settings, OPTIONS)
    assert chosen_bad == chosen and table_bad == table


def test_selection_picks_the_best_validation_accuracy_first_on_ties():
    K, tasks, features = _study(seed=1)
    settings = grid_settings(GRID)
    assert len(settings) == 12 and settings[0] == Setting(1e-5, math.inf, math.inf, "onehot", "nearest_centroid")
    chosen, table = select_setting(K, tasks, features, settings, OPTIONS)
    direct, shares = [], []
    for setting in settings:  # each setting evaluated on its own, from the saved labels
        prediction, labels, share = mnk_labels(K, tasks, "val", features, setting, OPTIONS)
        direct.append((labels == tasks["val_query_labels"]).mean(axis=1).mean())
        shares.append(share)
        if setting.targets == "onehot":  # the per-task term is then kernel regression's prediction
            per_task, _ = kernel_regression_labels(K, tasks, "val", OPTIONS)
            assert share == pytest.approx(np.linalg.norm(prediction - per_task) / np.linalg.norm(per_task), rel=1e-9)
    np.testing.assert_allclose([row["val_accuracy"] for row in table], direct, atol=1e-12)
    np.testing.assert_allclose([row["val_meta_share"] for row in table], shares, rtol=1e-12)
    assert chosen == settings[int(np.argmax(direct))]  # argmax: the first of equal maxima
    assert all(row["n_val_tasks"] == 4 for row in table)


def test_grid_of_one_is_the_fixed_setting_and_larger_grids_need_validation_tasks():
    K, tasks, features = _study(seed=2)
    one = grid_settings({"r2": [1e-5], "targets": ["encoder"], "decoder": ["nearest_centroid"]})
    no_val = {k: (v[:0] if k.startswith("val_") else v) for k, v in tasks.items()}
    assert select_setting(K, no_val, features, one, OPTIONS) == (one[0], [])
    with pytest.raises(ValueError, match="12 settings but there are no validation tasks"):
        select_setting(K, no_val, features, grid_settings(GRID), OPTIONS)
    with pytest.raises(ValueError, match=r"mnk.grid.decoder must be .*, got \['argmax'\]"):
        grid_settings({**GRID, "decoder": ["argmax"]})
    with pytest.raises(ValueError, match="mnk.grid.r2 must be a non-empty list"):
        grid_settings({**GRID, "r2": []})


def _normalised(K, r1):
    d = np.sqrt(np.diag(K) + r1)
    return (K + r1 * np.eye(len(K))) / np.outer(d, d)


def test_kernel_regression_baseline_is_per_task_one_hot_regression():
    K, tasks, _ = _study(seed=3)
    r1 = 1e-3
    for r1 in (1e-3, 0.5):  # the option reaches the code: each r1 gives its own regression
        prediction, labels = kernel_regression_labels(K, tasks, "test", MNKOptions(ridge=(r1, 0.0)))
        Kn = _normalised(K, r1)
        for s, q, got, got_labels in zip(tasks["test_support"], tasks["test_query"], prediction, labels):
            # one-hot targets, class-major support: the columns of the inverse are the classes
            scores = Kn[np.ix_(q, s)] @ np.linalg.inv(Kn[np.ix_(s, s)] + r1 * np.eye(len(s)))
            np.testing.assert_allclose(got, scores, atol=1e-10)
            np.testing.assert_array_equal(got_labels, scores.argmax(-1))
    with pytest.raises(DegenerateKernelError):
        kernel_regression_labels(np.zeros_like(K), tasks, "test", MNKOptions(ridge=(r1, 0.0)))


def test_prototypes_baseline_is_nearest_support_mean():
    _, tasks, features = _study(seed=4)
    _, labels = prototype_labels(features, tasks, "test")
    for s, q, got in zip(tasks["test_support"], tasks["test_query"], labels):
        means = np.stack([features[s[k * SHOT:(k + 1) * SHOT]].mean(0) for k in range(WAY)])
        want = [int(np.argmin(((means - features[i]) ** 2).sum(1))) for i in q]
        np.testing.assert_array_equal(got, want)


def test_method_metrics_equal_direct_computation():
    _, tasks, _ = _study(seed=5)
    labels = np.random.default_rng(0).integers(0, WAY, tasks["test_query_labels"].shape)
    m = method_metrics("x", labels, tasks)
    per_task = [(a == b).mean() for a, b in zip(labels, tasks["test_query_labels"])]
    assert m["per_task_accuracy"] == pytest.approx(per_task)
    assert m["accuracy"] == pytest.approx(np.mean(per_task))
    half = 1.96 * np.std(per_task) / np.sqrt(len(per_task))
    assert m["ci95_high"] - m["accuracy"] == pytest.approx(half)
    assert m["test_tasks_id"] == "" and m["n_test_tasks"] == 5
    assert method_metrics("x", labels, dict(tasks, test_tasks_id=np.str_("0123abcd4567")))["test_tasks_id"] == "0123abcd4567"


def test_uncomputed_kernel_entries_are_refused():
    K, tasks, _ = _study(seed=6)
    computed = np.ones(K.shape, bool)
    require_computed(computed, tasks, ["val", "test"], with_train=True)
    i, j = tasks["test_query"][2, 1], tasks["train_support"][0, 0]
    computed[i, j] = False
    with pytest.raises(ValueError, match=rf"kernel.npz: 1 entries .*\[{i}, {j}\] for the test tasks"):
        require_computed(computed, tasks, ["val", "test"], with_train=True, what="kernel.npz")
    # the per-task baseline does not read test x train entries
    require_computed(computed, tasks, ["test"], with_train=False)
    computed[i, tasks["test_support"][2, 0]] = False
    with pytest.raises(ValueError, match="never computed"):
        require_computed(computed, tasks, ["test"], with_train=False)
