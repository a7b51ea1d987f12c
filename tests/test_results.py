"""Summary table and figures from synthetic metrics files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mnk.results import normalized, plot_accuracy, plot_cost, plot_kernel_heatmap, summarise


def _metrics(tmp_path, method, chars, seed, accuracy):
    path = tmp_path / method / f"{chars}-{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"method": method, "experiment": f"5way1shot-{chars}char-seed{seed}", "way": 5, "shot": 1,
            "n_characters": chars, "n_train_tasks": chars // 5 * 3, "seed": seed, "accuracy": accuracy,
            "ci95_low": accuracy - 0.05, "ci95_high": accuracy + 0.05, "wall_seconds": 10.0 * chars,
            "device": "cpu", "device_name": "cpu (x86_64, 2 cores)", "git_revision": "abc1234"}
    if method == "mnk":
        data.update(kernel={"type": "cntk", "depth": 10, "gap": False, "fix": False, "pad": 0, "standardize": False},
                    kernel_seconds=8.0 * chars)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def summary(tmp_path):
    paths = [_metrics(tmp_path, method, chars, seed, 0.5 + 0.01 * chars + 0.1 * (method == "mnk") + 0.01 * seed)
             for method in ("mnk", "maml", "imaml") for chars in (5, 10, 20) for seed in (0, 1)]
    return summarise(reversed(paths), config_hash="deadbeef0001")


def test_summary_has_one_row_per_method_experiment_seed(summary):
    assert len(summary) == 18
    assert list(summary.columns[:7]) == ["method", "experiment", "way", "shot", "n_characters", "n_train_tasks", "seed"]
    row = summary[(summary.method == "mnk") & (summary.n_characters == 10) & (summary.seed == 1)].iloc[0]
    assert row.accuracy == pytest.approx(0.5 + 0.1 + 0.1 + 0.01)
    assert row.kernel == "cntk depth=10 gap=False fix=False pad=0 standardize=False"
    assert row.kernel_seconds == 80.0 and row.config_hash == "deadbeef0001" and row.git_revision == "abc1234"
    maml = summary[summary.method == "maml"]
    assert maml.kernel.eq("").all() and maml.kernel_seconds.isna().all()
    # Sorted: method, then n_characters, then seed.
    assert summary.method.tolist() == sorted(summary.method.tolist())
    assert summary[summary.method == "mnk"].n_characters.tolist() == [5, 5, 10, 10, 20, 20]


def test_summary_rejects_incomplete_metrics(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"method": "mnk", "accuracy": 0.5}))
    with pytest.raises(ValueError, match="lacks .*ci95_low"):
        summarise([path])


def test_figures_are_written_and_non_empty(summary, tmp_path):
    from PIL import Image

    plot_accuracy(summary, tmp_path / "a.png", tmp_path / "a.pdf")
    plot_cost(summary, tmp_path / "c.png", tmp_path / "c.pdf")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 5))
    gram = features @ features.T + np.eye(30)
    plot_kernel_heatmap(normalized(gram), normalized(gram) ** 2, tmp_path / "h.png", tmp_path / "h.pdf",
                        base_title="base", meta_title="meta")
    for name in ("a", "c", "h"):
        image = np.asarray(Image.open(tmp_path / f"{name}.png").convert("L"))
        assert image.shape[0] > 300 and image.shape[1] > 300
        assert image.std() > 10  # not a blank canvas
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_normalized_has_unit_diagonal():
    gram = np.array([[4.0, 2.0], [2.0, 9.0]])
    np.testing.assert_allclose(normalized(gram), [[1, 1 / 3], [1 / 3, 1]])
    pd.testing.assert_series_equal(pd.Series(np.diag(normalized(gram))), pd.Series([1.0, 1.0]))
