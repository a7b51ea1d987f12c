"""The workflow on your own data: image-folder datasets and fixed test-task lists.

Kept small for CI's 2 cores: the end-to-end runs use tiny folder datasets (no Omniglot
preprocessing); the task list is built from the Omniglot mirror's evaluation archive.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from mnk.infra.io import load_npz
from mnk.tasks.tasklist import list_tasks_id, parse_task_list, write_omniglot_one_shot_list, write_task_list
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


def folder_data(root, train: dict, test: dict, channels=1, image_size=28) -> dict:
    """A tiny folder dataset (a training root and a test root, light background)."""
    make_folder(root / "train", train, channels)
    make_folder(root / "test", test, channels, seed=1)
    return {"dataset": "folder", "image_size": image_size,
            "folder": {"train_root": str(root / "train"), "test_root": str(root / "test")}}


def test_folder_dataset_dag(tmp_path):
    data = folder_data(tmp_path, {f"alpha{a}/c{c}": 5 for a in range(4) for c in range(5)},
                       {f"omega/c{c}": 5 for c in range(6)})
    config = config_with(data=data, tasks={"n_characters": [5, 10], "n_val_characters": 10})
    rules = {rule for rule, _ in planned_jobs(REPO, "--forceall", "--configfile",
                                              write_config(tmp_path / "c.yaml", config))}
    assert "preprocess_folder" in rules and "make_pool" in rules
    assert not rules & {"download_omniglot", "preprocess_omniglot"}


def two_way_list(tmp_path, query=1):
    make_folder(tmp_path / "img", {"a": 1 + query, "b": 1 + query})
    rows = [("t", role, c, f"img/{c}/{k:02d}.png") for role, ks in (("support", [0]), ("query", range(1, 1 + query)))
            for c in "ab" for k in ks]
    return write_task_list(tmp_path / "list.csv", rows)


@pytest.mark.parametrize("edit,message", [
    (lambda c, t: c["data"].update(dataset="folder"), "folder"),
    (lambda c, t: c["data"].update(dataset="folder", folder={"train_root": str(t / "nowhere")}),
     "data.folder.train_root: folder .*nowhere does not exist"),
    (lambda c, t: c["tasks"].update(test_tasks=str(t / "list.csv"), way=[5]),
     r"the task list is 2-way .* but the configuration's tasks.way is 5"),
    (lambda c, t: c["tasks"].update(test_tasks=str(t / "list.csv"), way=[2], shot=[3], n_characters=[4]),
     r"the task list is 1-shot .* tasks.shot is 3"),
    (lambda c, t: c["tasks"].update(test_tasks=str(t / "list.csv"), way=[2, 5], n_characters=[10]),
     r"tasks.way \(\[2, 5\]\) and tasks.shot \(\[1\]\) must hold one value each"),
    (lambda c, t: c["tasks"].update(test_tasks=str(t / "list.csv"), way=[2], n_characters=[4]),
     "the task list has 1 query images per class but tasks.query is 4"),
    (lambda c, t: c["tasks"].update(test_tasks=str(t / "missing.csv")), "task list .*missing.csv does not exist"),
    (lambda c, t: c["tasks"].update(test_tasks=str(t / "bad.csv"), way=[2], query=1, n_characters=[4]),
     r"bad.csv, row 3, task 't': image .* is both support and query"),
])
def test_own_data_config_errors_before_any_job(tmp_path, edit, message):
    csv_path = two_way_list(tmp_path)
    lines = csv_path.read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join([lines[0], lines[1], lines[1].replace("support", "query")]) + "\n")
    config = config_with()
    edit(config, tmp_path)
    result = snakemake(REPO, "--dry-run", "--configfile", write_config(tmp_path / "c.yaml", config), check=False)
    assert result.returncode != 0
    assert re.search(message, result.stderr + result.stdout), (result.stderr + result.stdout)[-2000:]


def test_omniglot_bounds_do_not_apply_to_a_folder_dataset(tmp_path):
    """shot + query above Omniglot's 20 is fine for a folder whose classes have enough images."""
    data = folder_data(tmp_path, {f"c{c}": 22 for c in range(10)}, {f"t{c}": 22 for c in range(5)}, image_size=16)
    config = config_with(data=data, tasks={"n_characters": [5], "n_val_characters": 5, "query": 20},
                         kernel={"image_size": 8})
    assert planned_jobs(REPO, "--forceall", "--configfile", write_config(tmp_path / "c.yaml", config))
    config["data"]["dataset"] = "omniglot"
    result = snakemake(REPO, "--dry-run", "--configfile", write_config(tmp_path / "o.yaml", config), check=False)
    assert result.returncode != 0 and "exceeds the 20 images" in result.stderr + result.stdout


def run_project(tmp_path, config):
    root = tmp_path / "project"
    for name in COPY:
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_config(root / "config" / "config.yaml", config)
    snakemake(root, "--cores", "2")
    return root


ONE_PASS = {"seeds": [0], "enlarge_ratio": 1, "n_val_tasks": 1}
BIG_BLOCKS = {"block_size": 400}  # few kernel jobs


@pytest.mark.slow
def test_twenty_way_one_shot_from_a_task_list_end_to_end(tmp_path, mirror):
    """The classic protocol: 20-way 1-shot, one query per class, each task within one alphabet,
    tested on a list from Omniglot's evaluation images; training on a small grey folder dataset."""
    csv_path = write_omniglot_one_shot_list(mirror / "images_evaluation.zip", tmp_path / "oneshot",
                                            n_tasks=3, alphabet="Angelic")
    listed = parse_task_list(csv_path)
    data = folder_data(tmp_path / "data", {f"alpha{a}/c{c}": 2 for a in range(4) for c in range(10)},
                       {f"omega/c{c}": 2 for c in range(20)})
    config = config_with(data=data, kernel=BIG_BLOCKS, tasks={
        **ONE_PASS, "way": [20], "shot": [1], "query": 1, "n_characters": [20], "n_val_characters": 20,
        "test_tasks": str(csv_path)})
    root = run_project(tmp_path, config)
    exp, pool = "20way1shot-20char-seed0", "pool-20way1shot-seed0"
    tasks = load_npz(root / "results" / "tasks" / exp / "tasks.npz")
    assert tasks["test_support"].shape == (3, 20) and tasks["test_query"].shape == (3, 20)
    assert str(tasks["test_tasks_id"]) == list_tasks_id(listed) and str(tasks["test_tasks_list"]) == listed.list_id
    images = load_npz(root / "results" / "tasks" / exp / "images.npz")["images"]
    assert images.shape == (20 * 2 + 20 * 2 + 3 * 40, 28, 28)
    # the list's images, preprocessed as Omniglot's (inverted: background 0), in task layout
    first_query = tasks["test_query"][0, 0]
    want = 1.0 - np.asarray(__import__("PIL.Image").Image.open(listed.paths[listed.query_ids[0, 0]])
                            .convert("L").resize((28, 28), 1), np.float32) / 255.0
    np.testing.assert_allclose(images[first_query], want, atol=1e-6)
    pool_images = load_npz(root / "results" / "tasks" / pool / "images.npz")["images"]
    np.testing.assert_array_equal(pool_images[-120:], images[-120:])
    for name in ("make_pool/" + pool, "make_tasks/" + exp):
        log = (root / "logs" / f"{name}.log").read_text()
        assert f"the 3 of the list {listed.list_id}; tasks.n_test_tasks is ignored" in log
    summary = pd.read_csv(root / "results" / "summary.csv")
    assert set(summary["method"]) == {"mnk", "maml", "imaml", "kernel_regression", "prototypes"}
    assert (summary["way"] == 20).all() and (summary["n_test_tasks"] == 3).all()
    assert (summary["test_tasks"] == listed.list_id).all() and listed.list_id.startswith("tasks.csv@")
    assert (summary["test_tasks_id"] == list_tasks_id(listed)).all()
    assert np.isfinite(summary["accuracy"]).all()
    assert (root / "results" / "figures" / "accuracy.png").is_file()


@pytest.mark.slow
def test_rgb_folder_dataset_end_to_end(tmp_path):
    data = folder_data(tmp_path / "data", {f"alpha{a}/c{c}": 3 for a in range(2) for c in range(5)},
                       {f"omega/c{c}": 3 for c in range(5)}, channels=3, image_size=16)
    config = config_with(data=data, kernel={**BIG_BLOCKS, "image_size": 8},
                         tasks={**ONE_PASS, "n_characters": [5], "n_val_characters": 5, "query": 2,
                                "n_test_tasks": 2},
                         imaml={"enabled": False})  # iMAML's imaml4 net needs > 8 pixels; RGB iMAML: test_folder.py
    root = run_project(tmp_path, config)
    arrays = load_npz(root / "results" / "data" / "dataset.npz")
    assert arrays["images"].shape == (45, 3, 16, 16)
    assert list(arrays["alphabet_names"]) == ["alpha0", "alpha1", "omega"]
    exp = "5way1shot-5char-seed0"
    assert load_npz(root / "results" / "tasks" / exp / "images.npz")["images"].shape == (15 + 15 + 2 * 15, 3, 16, 16)
    summary = pd.read_csv(root / "results" / "summary.csv")
    assert set(summary["method"]) == {"mnk", "maml", "kernel_regression", "prototypes"}
    assert np.isfinite(summary["accuracy"]).all()
    assert (summary["test_tasks"] == "sampled").all() and (summary["n_test_tasks"] == 2).all()


@pytest.mark.slow
def test_an_edit_behind_a_linked_class_reruns_preprocessing(tmp_path):
    """The data fingerprint follows folder links: an image edited under a linked class is seen
    (the former `rglob` fingerprint gave "Nothing to be done")."""
    data = folder_data(tmp_path / "data", {f"c{c}": 5 for c in range(9)}, {f"t{c}": 5 for c in range(5)}, image_size=16)
    make_folder(tmp_path / "elsewhere", {"c9": 5}, seed=2)
    (tmp_path / "data" / "train" / "c9").symlink_to(tmp_path / "elsewhere" / "c9")
    config = config_with(data=data, tasks={"n_characters": [5], "n_val_characters": 5}, kernel={"image_size": 8})
    root = tmp_path / "project"
    for name in COPY:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_config(root / "config" / "config.yaml", config)
    snakemake(root, "--cores", "1", "results/data/dataset.npz")
    assert load_npz(root / "results" / "data" / "dataset.npz")["images"].shape == (75, 16, 16)
    assert not planned_jobs(root, "results/data/dataset.npz")
    image = tmp_path / "elsewhere" / "c9" / "03.png"
    image.write_bytes((tmp_path / "data" / "train" / "c0" / "00.png").read_bytes())
    assert [rule for rule, _ in planned_jobs(root, "results/data/dataset.npz")] == ["preprocess_folder"]


def test_config_checks_apply_omniglot_bounds_to_omniglot_only():
    from mnk.study.config_checks import task_problems

    tasks = {"way": [5], "shot": [5], "n_characters": [5000], "query": 30, "split": "background",
             "n_val_characters": 20, "n_val_tasks": 1}
    omniglot = " ".join(task_problems(tasks))
    assert "exceeds the 20 images" in omniglot and "exceeds the 964 training" in omniglot
    assert task_problems(tasks, "folder") == []
    assert "Omniglot's first-1200" in task_problems({**tasks, "split": "original"}, "folder")[0]


def test_kernel_identity_names_the_folder_dataset_and_the_list(tmp_path):
    from mnk.study import plan
    from mnk.study.config import parse_config

    config = config_with()
    base = plan.kernel_identity(parse_config(config))
    assert set(base) == {"kernel", "data"} and set(base["data"]) == {"image_size", "resample"}  # as before
    folder = {**config, "data": {**config["data"], "dataset": "folder", "folder": {"train_root": "x"}}}
    assert plan.kernel_identity(parse_config(folder))["data"]["dataset"] == "folder"
    listed = {**config, "tasks": {**config["tasks"], "way": [2], "query": 1, "n_characters": [4],
                                  "test_tasks": str(two_way_list(tmp_path))}}
    assert plan.kernel_identity(parse_config(listed))["test_tasks"] == parse_task_list(two_way_list(tmp_path)).list_id
    assert parse_config(listed).tasks.n_test_tasks == 1
    assert parse_config(config).tasks.n_test_tasks == config["tasks"]["n_test_tasks"]
