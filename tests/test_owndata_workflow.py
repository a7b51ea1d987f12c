"""The workflow on your own data: image-folder datasets and fixed test-task lists."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from mnk.io import load_npz
from mnk.tasklist import parse_task_list, write_omniglot_one_shot_list, write_task_list
from test_folder import make_folder
from test_workflow import COPY, REPO, planned_jobs, snakemake


def config_with(**sections) -> dict:
    """The tiny test config, with `sections` merged in (one level deep)."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    return config


def write_config(path, config) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def folder_data(root, channels=1):
    """A tiny dataset: 12 training classes, 6 test classes, 4 images each, light background."""
    make_folder(root / "train", {f"alpha{a}/c{c}": 4 for a in range(3) for c in range(4)}, channels)
    make_folder(root / "test", {f"omega/c{c}": 4 for c in range(6)}, channels, seed=1)
    return {"dataset": "folder", "image_size": 8,
            "folder": {"train_root": str(root / "train"), "test_root": str(root / "test")}}


def test_folder_dataset_dag(tmp_path):
    config = config_with(data=folder_data(tmp_path))
    rules = {rule for rule, _ in planned_jobs(REPO, "--forceall", "--configfile", write_config(tmp_path / "c.yaml", config))}
    assert "preprocess_folder" in rules and not rules & {"download_omniglot", "preprocess_omniglot"}


@pytest.mark.parametrize("edit,message", [
    (lambda c, t: c["data"].update(dataset="folder"), "folder"),
    (lambda c, t: c["data"].update(dataset="folder", folder={"train_root": str(t / "nowhere")}),
     "data.folder.train_root: folder .*nowhere does not exist"),
    (lambda c, t: c["tasks"].update(test_tasks=str(t / "list.csv"), way=[5]),
     "the task list is 2-way .* tasks.way is 5"),
    (lambda c, t: c["tasks"].update(test_tasks=str(t / "list.csv"), way=[2, 5]),
     r"tasks.way \(\[2, 5\]\) and tasks.shot \(\[1\]\) must hold one value each"),
])
def test_own_data_config_errors_before_any_job(tmp_path, edit, message):
    make_folder(tmp_path / "img", {"a": 2, "b": 2})
    write_task_list(tmp_path / "list.csv", [("t", role, c, f"img/{c}/0{k}.png")
                                            for role, k in (("support", 0), ("query", 1)) for c in "ab"])
    config = config_with()
    edit(config, tmp_path)
    result = snakemake(REPO, "--dry-run", "--configfile", write_config(tmp_path / "c.yaml", config), check=False)
    assert result.returncode != 0
    assert re.search(message, result.stderr + result.stdout), result.stderr[-2000:]


def run_project(tmp_path, config, mirror, monkeypatch):
    root = tmp_path / "project"
    for name in COPY:
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_config(root / "config" / "config.yaml", config)
    monkeypatch.setenv("OMNIGLOT_MIRROR", str(mirror))
    snakemake(root, "--cores", "2")
    return root


SMALL = {"n_characters": [20], "seeds": [0], "enlarge_ratio": 1}
BIG_BLOCKS = {"block_size": 400}  # few kernel jobs


@pytest.mark.slow
def test_twenty_way_one_shot_from_a_task_list_end_to_end(tmp_path, mirror, monkeypatch):
    """The classic protocol: 20-way 1-shot, one query per class, tasks within one alphabet."""
    csv_path = write_omniglot_one_shot_list(mirror / "images_evaluation.zip", tmp_path / "oneshot",
                                            n_tasks=3, alphabet="Angelic")
    listed = parse_task_list(csv_path)
    config = config_with(tasks={**SMALL, "way": [20], "shot": [1], "query": 1, "test_tasks": str(csv_path)},
                         kernel=BIG_BLOCKS)
    root = run_project(tmp_path, config, mirror, monkeypatch)
    exp = "20way1shot-20char-seed0"
    tasks = load_npz(root / "results" / "tasks" / exp / "tasks.npz")
    assert tasks["test_support"].shape == (3, 20) and tasks["test_query"].shape == (3, 20)
    assert str(tasks["test_tasks_id"]) == listed.list_id
    images = load_npz(root / "results" / "tasks" / exp / "images.npz")["images"]
    assert images.shape == (20 * 2 + 3 * 40, 28, 28)
    log = (root / "logs" / "make_tasks" / f"{exp}.log").read_text()
    assert f"the 3 of the list {listed.list_id}; tasks.n_test_tasks (4) is ignored" in log
    summary = pd.read_csv(root / "results" / "summary.csv")
    assert set(summary["method"]) >= {"mnk", "maml", "imaml"}
    assert (summary["way"] == 20).all() and (summary["n_test_tasks"] == 3).all()
    assert (summary["test_tasks"] == listed.list_id).all()


@pytest.mark.slow
def test_rgb_folder_dataset_end_to_end(tmp_path, mirror, monkeypatch):
    data = folder_data(tmp_path / "data", channels=3)
    config = config_with(data=data, tasks={**SMALL, "n_characters": [10], "query": 3, "n_test_tasks": 2},
                         kernel=BIG_BLOCKS, imaml={"enabled": False})  # iMAML on RGB: tests/test_folder.py
    root = run_project(tmp_path, config, mirror, monkeypatch)
    arrays = load_npz(root / "results" / "data" / "dataset.npz")
    assert arrays["images"].shape == (72, 3, 8, 8)
    assert list(arrays["alphabet_names"]) == ["alpha0", "alpha1", "alpha2", "omega"]
    exp = "5way1shot-10char-seed0"
    assert load_npz(root / "results" / "tasks" / exp / "images.npz")["images"].shape == (40 + 2 * 20, 3, 8, 8)
    summary = pd.read_csv(root / "results" / "summary.csv")
    assert set(summary["method"]) == {"mnk", "maml"} and np.isfinite(summary["accuracy"]).all()
    assert (summary["test_tasks"] == "sampled").all() and (summary["n_test_tasks"] == 2).all()
