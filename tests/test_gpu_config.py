"""config/gpu.yaml: its plan fits one GPU's 15 minutes, and a scaled-down copy (the same
keys and structure, tiny counts, on the CPU) runs end to end."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from test_workflow import COPY, REPO, snakemake

GPU_CONFIG = REPO / "config" / "gpu.yaml"


def _gpu_config() -> dict:
    return yaml.safe_load(GPU_CONFIG.read_text())


def test_gpu_plan_fits_fifteen_minutes_on_one_gpu():
    out = subprocess.run([sys.executable, "-m", "mnk.study.cost", str(GPU_CONFIG)], cwd=REPO, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(REPO / "src")}).stdout
    minutes = float(re.search(r"\(([\d.]+) GPU-minutes on one H200\)", out).group(1))
    assert minutes <= 13, out  # the rest of the 15 minutes: data preparation, encoders, solves
    config = _gpu_config()
    assert config["kernel"] | {"image_size": 28, "pad": 2, "depth": 20, "gap": True, "standardize": True} == \
        config["kernel"], "gpu.yaml must keep the paper's kernel"
    assert len(config["tasks"]["seeds"]) >= 2 and config["tasks"]["n_test_tasks"] >= 100
    assert len(config["tasks"]["n_characters"]) >= 3


def scaled_down(config: dict) -> dict:
    """The same structure as gpu.yaml, with counts a 2-core CPU runs in about a minute."""
    small = copy.deepcopy(config)
    small["data"]["source"] = "mirror"
    small["tasks"].update(n_characters=[5, 10], seeds=[0, 1], query=2, enlarge_ratio=2, n_test_tasks=2,
                          n_val_tasks=2, n_val_characters=5)
    small["kernel"].update(image_size=6, depth=3, block_size=40, backend="cpu", dtype="float64")
    small["encoder"].update(width=8, epochs=1)
    for method in ("maml", "imaml"):
        small[method]["options"].update(hidden=4, meta_iterations=2, meta_batch_size=2, eval_every=1,
                                        inner_steps=1, test_inner_steps=1)
    small["device"] = "cpu"
    return small


@pytest.mark.slow
def test_scaled_down_gpu_config_runs_on_the_cpu(tmp_path, mirror, monkeypatch):
    root = tmp_path / "project"
    for name in COPY:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    config = scaled_down(_gpu_config())
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("OMNIGLOT_MIRROR", str(mirror))
    snakemake(root, "--cores", "2")
    summary = pd.read_csv(root / "results" / "summary.csv")
    assert set(summary.method) == {"mnk", "kernel_regression", "prototypes", "maml", "imaml"}
    assert len(summary) == 5 * 2 * 2  # methods x n_characters x seeds
    # paired design: one test-task set per seed, shared by every method and n_characters
    assert summary.groupby("seed").test_tasks_id.nunique().eq(1).all()
    assert (root / "results" / "paired.csv").exists()
