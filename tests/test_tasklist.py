"""Fixed test-task lists (mnk.tasks.tasklist): parsing, layout, Omniglot one-shot lists, errors."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from mnk.data import archive as data
from mnk.data.folder import load_image
from mnk.data.options import DataOptions, ImageOptions
from mnk.tasks.tasklist import (TaskListError, layout_test_tasks, list_tasks_id, local_images, parse_task_list,
                          read_task_list,
                          replace_test_tasks, task_list_shape, write_omniglot_one_shot_list,
                          write_task_list)
from test_folder import SIZE, make_folder

ALPHABET = "Angelic"  # the evaluation alphabet with exactly 20 characters


@pytest.fixture
def images(tmp_path):
    """tmp_path/img/<class>/<k>.png: 4 classes x 4 grey images on a light background."""
    return make_folder(tmp_path / "img", {c: 4 for c in "abcd"})


def rows_for(task, labels, support, query):
    """Rows of one task: `support` / `query` image indices per label."""
    out = [(task, "support", c, f"img/{c}/{k:02d}.png") for c in labels for k in support]
    return out + [(task, "query", c, f"img/{c}/{k:02d}.png") for c in labels for k in query]


def test_small_list_order_layout_and_images(tmp_path, images):
    rows = rows_for("t1", "ba", [0, 1], [2]) + rows_for("t2", "cd", [3, 0], [1])
    rows = rows[::2] + rows[1::2]  # rows of a task need not be consecutive, nor classes
    csv_path = write_task_list(tmp_path / "list.csv", rows)
    options = ImageOptions(SIZE, "lanczos", "auto")
    tasks = read_task_list(csv_path, options, way=2, shot=2)
    assert (tasks.n_tasks, tasks.way, tasks.shot, tasks.query, tasks.task_size) == (2, 2, 2, 1, 6)
    assert tasks.task_names == ("t1", "t2")
    assert tasks.sha256 == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert tasks.list_id == f"list.csv@{tasks.sha256[:12]}"
    assert task_list_shape(csv_path, way=2, shot=2) == {"n_tasks": 2, "way": 2, "shot": 2, "query": 1,
                                                        "task_size": 6, "list_id": tasks.list_id}

    def named(ids):
        return [(p.parent.name, int(p.stem)) for p in (tasks.paths[i] for i in ids)]

    # class-major, classes in order of first appearance, images in CSV order
    order_t1 = [r for r in rows if r[0] == "t1"]
    first = list(dict.fromkeys(r[2] for r in order_t1))
    assert list(tasks.class_names[0]) == first
    expect_s = [(r[2], int(r[3][-6:-4])) for c in first for r in order_t1 if r[1] == "support" and r[2] == c]
    assert named(tasks.support[0]) == expect_s
    assert sorted(named(tasks.query_ids[1])) == [("c", 1), ("d", 1)]
    assert len(set(tasks.paths)) == len(tasks.paths) == 12
    for i, path in enumerate(tasks.paths):  # the dataset's preprocessing, image by image
        c, k = path.parent.name, int(path.stem)
        np.testing.assert_allclose(tasks.images[i], 1.0 - images[c, k] / 255.0, atol=1e-7)

    order, arrays = layout_test_tasks(tasks, offset=10)
    assert order.shape == (12,)
    np.testing.assert_array_equal(order[:6], np.r_[tasks.support[0], tasks.query_ids[0]])
    np.testing.assert_array_equal(arrays["test_support"], [[10, 11, 12, 13], [16, 17, 18, 19]])
    np.testing.assert_array_equal(arrays["test_query"], [[14, 15], [20, 21]])
    np.testing.assert_array_equal(arrays["test_support_labels"], [[0, 0, 1, 1]] * 2)
    np.testing.assert_array_equal(arrays["test_query_labels"], [[0, 1]] * 2)


def test_omniglot_one_shot_list(mirror, tmp_path):
    """20-way 1-shot, one query per class, all within one alphabet (the classic protocol)."""
    archive = mirror / "images_evaluation.zip"
    csv_path = write_omniglot_one_shot_list(archive, tmp_path / "oneshot", n_tasks=3, alphabet=ALPHABET)
    tasks = read_task_list(csv_path, ImageOptions.omniglot(28, "lanczos"), way=20, shot=1)
    assert (tasks.n_tasks, tasks.way, tasks.shot, tasks.query) == (3, 20, 1, 1)
    with zipfile.ZipFile(archive) as zf:
        for t in range(tasks.n_tasks):
            support = [tasks.paths[i] for i in tasks.support[t]]
            query = [tasks.paths[i] for i in tasks.query_ids[t]]
            # the same 20 distinct characters of one alphabet, in the same class order
            assert [p.parent.name for p in support] == [p.parent.name for p in query] == list(tasks.class_names[t])
            assert len(set(tasks.class_names[t])) == 20
            assert {p.parent.parent.name for p in support + query} == {ALPHABET}
            # one drawer for the support images, another for the queries (file <id>_<drawer>.png)
            drawers = [{re.fullmatch(r"\d+_(\d+)", p.stem).group(1) for p in side} for side in (support, query)]
            assert len(drawers[0]) == len(drawers[1]) == 1 and drawers[0] != drawers[1]
            for i in np.r_[tasks.support[t], tasks.query_ids[t]]:
                p = tasks.paths[i]
                member = f"images_evaluation/{ALPHABET}/{p.parent.name}/{p.name}"
                np.testing.assert_array_equal(tasks.images[i], data.image_to_array(zf.read(member), 28, "lanczos"))
    again = write_omniglot_one_shot_list(archive, tmp_path / "again", n_tasks=3, alphabet=ALPHABET)
    assert again.read_bytes() == csv_path.read_bytes()  # deterministic
    with pytest.raises(ValueError, match="alphabet 'Klingon' is not in"):
        write_omniglot_one_shot_list(archive, tmp_path / "x", n_tasks=1, alphabet="Klingon")


def test_make_omniglot_tasklist_script(mirror, tmp_path, repo):
    result = subprocess.run([sys.executable, str(repo / "scripts" / "make_omniglot_tasklist.py"),
                             str(mirror / "images_evaluation.zip"), str(tmp_path / "l"), "--n-tasks", "2"],
                            capture_output=True, text=True, check=True)
    assert "2 tasks, 20-way 1-shot, 1 query per class, 80 images" in result.stdout
    tasks = parse_task_list(tmp_path / "l" / "tasks.csv")
    for t in range(2):  # random alphabet per task, but one alphabet within each task
        assert len({tasks.paths[i].parent.parent.name for i in tasks.support[t]}) == 1


# ------------------------------------------------------------------------ errors


def check_error(tmp_path, rows, pattern, header=("task", "role", "label", "path"), **config):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    with pytest.raises(TaskListError, match=pattern):
        parse_task_list(csv_path, **config)


def test_config_mismatch_names_both(tmp_path, images):
    rows = rows_for("t1", "abc", [0], [1])
    check_error(tmp_path, rows, r"3-way .* but the configuration's tasks.way is 5", way=5, shot=1)
    check_error(tmp_path, rows, r"1-shot .* but the configuration's tasks.shot is 2", way=3, shot=2)
    with pytest.raises(TaskListError, match=r"3-way .* tasks.way is 4"):  # also when planning the DAG
        task_list_shape(tmp_path / "bad.csv", way=4)


@pytest.mark.parametrize("rows,pattern", [
    (rows_for("t1", "ab", [0, 1], [2])[:-1], r"row 2, task 't1': unbalanced task: query images per class \{a: 1, b: 0\}"),
    (rows_for("t1", "ab", [0, 1], [2])[1:], r"row 2, task 't1': unbalanced task: support images per class \{a: 1, b: 2\}"),
    (rows_for("t1", "ab", [0], [0]), r"row 4, task 't1': image 00.png is both support and query \(also row 2\)"),
    (rows_for("t1", "ab", [0, 0], [1]), r"row 3, task 't1': image 00.png is twice in the support set \(also row 2\)"),
    (rows_for("t1", "ab", [0], [1]) + rows_for("t2", "abc", [0], [1]),
     r"row 6, task 't2': is \{'way': 3, 'shot': 1, 'query': 1\} but task 't1' is \{'way': 2"),
    (rows_for("t1", "ab", [0], [1]) + [("t1", "train", "a", "img/a/02.png")],
     r"row 6, task 't1': role must be 'support' or 'query', got 'train'"),
    (rows_for("t1", "ab", [0], [1]) + [("t1", "query", "", "img/a/02.png")], r"row 6, task 't1': empty field\(s\) \['label'\]"),
    (rows_for("t1", "ab", [0], [1]) + [("t1", "query", "a", "img/a/99.png")],
     r"row 6, task 't1': image file img/a/99.png does not exist"),
    ([], r"row 1: the list has no tasks"),
])
def test_errors_name_task_and_row(tmp_path, images, rows, pattern):
    check_error(tmp_path, rows, pattern)


def test_a_query_that_is_a_byte_copy_of_its_support_image_is_refused(tmp_path, images):
    """Duplicates are found by content, not only by path: a copied support image as query
    answers itself (measured: accuracy 0.55 -> 0.575)."""
    copy = tmp_path / "img" / "b" / "07.png"
    copy.write_bytes((tmp_path / "img" / "b" / "00.png").read_bytes())
    rows = rows_for("t1", "ab", [0], [1]) + rows_for("t2", "ab", [0], [2])
    rows[-1] = ("t2", "query", "b", "img/b/07.png")
    check_error(tmp_path, rows, r"row 9, task 't2': image 07.png \(a byte copy of 00.png\) is both support and "
                                r"query \(also row 7\)")
    rows[-1] = ("t2", "query", "b", "img/b/02.png")
    rows[1] = ("t1", "support", "b", "img/b/07.png")  # the copy in another task: allowed
    assert parse_task_list(write_task_list(tmp_path / "ok.csv", rows)).n_tasks == 2


def folder_dataset(root):
    """A one-root folder dataset of 8 classes x 4 images: a-d training side, e-h test side."""
    from mnk.data.folder import read_folder_dataset

    make_folder(root, {c: 4 for c in "abcdefgh"})
    options = DataOptions.from_section({"dataset": "folder", "image_size": SIZE,
                                        "folder": {"train_root": str(root), "split": 0.5}})
    return read_folder_dataset(root, image_size=SIZE, split=0.5), options


@pytest.mark.parametrize("how", ["path", "link", "copy"])
def test_a_list_of_the_datasets_training_images_is_refused(tmp_path, how):
    """A test list pointing at the dataset's training images (measured: accuracy 0.55 -> 0.675),
    by its own path, through a link or as a copy, is refused naming the row."""
    import logging

    from mnk.tasks.sampling import TaskSpec
    from mnk.tasks.tasklist import sample_tasks

    data, options = folder_dataset(tmp_path / "data")
    spec = TaskSpec(way=2, shot=1, query=1, n_characters=2, seed=0, n_test_tasks=1, n_val_tasks=0,
                    n_val_characters=0)
    rows = [("t1", role, c, f"data/{c}/{k:02d}.png") for role, k in (("support", 0), ("query", 1)) for c in "ef"]
    csv_path = write_task_list(tmp_path / "list.csv", rows)
    params = {"path": str(csv_path)}
    tasks, _ = sample_tasks(data, spec, params, options, logging.getLogger("test"))  # test-side images: fine
    assert tasks["test_support"].shape == (1, 2)
    training = tmp_path / "data" / "b" / "02.png"
    if how == "link":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "x.png").symlink_to(training)
        training = tmp_path / "elsewhere" / "x.png"
    elif how == "copy":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "x.png").write_bytes(training.read_bytes())
        training = tmp_path / "elsewhere" / "x.png"
    rows[3] = ("t1", "query", "f", str(training))
    write_task_list(csv_path, rows)
    with pytest.raises(TaskListError, match=r"list.csv, row 5, task 't1': image \S*(b/02|x)\.png is a training image "
                                            r"of the dataset \(the pixels of its image 6, class b"):
        sample_tasks(data, spec, params, options, logging.getLogger("test"))


def test_missing_column_and_missing_file(tmp_path):
    check_error(tmp_path, [("t1", "support", "a")], r"row 1: missing column\(s\) \['path'\]", header=("task", "role", "label"))
    with pytest.raises(TaskListError, match="nowhere.csv does not exist"):
        parse_task_list(tmp_path / "nowhere.csv")


def test_an_image_may_recur_across_tasks(tmp_path, images):
    rows = rows_for("t1", "ab", [0], [1]) + rows_for("t2", "ab", [1], [0])
    tasks = parse_task_list(write_task_list(tmp_path / "l.csv", rows))
    assert len(tasks.paths) == 4  # stored once ...
    order, _ = layout_test_tasks(tasks, 0)
    assert len(order) == 8  # ... laid out once per task
    np.testing.assert_array_equal(tasks.support[1], tasks.query_ids[0])
    assert load_image(tasks.paths[0], ImageOptions(SIZE)).shape == (SIZE, SIZE)


def test_replace_test_tasks_keeps_training_side(tmp_path, images):
    from mnk.tasks.sampling import TaskSpec, make_tasks

    # a toy dataset in the make_tasks format: 8 classes x 4 images, the last 4 classes test
    character = np.repeat(np.arange(8), 4)
    drawer, split = np.tile(np.arange(4), 8), (character >= 4).astype(np.int8)
    spec = TaskSpec(way=2, shot=1, query=1, n_characters=2, seed=0, n_test_tasks=3, n_val_tasks=2, n_val_characters=2)
    sampled = make_tasks(character, drawer, split, spec)
    rows = rows_for("t1", "ab", [0], [1, 2]) + rows_for("t2", "cd", [2], [0, 3])
    task_list = read_task_list(write_task_list(tmp_path / "l.csv", rows),
                               DataOptions(image_size=SIZE).image, way=2, shot=1)
    tasks, order = replace_test_tasks(sampled, task_list)
    n_train = spec.n_train_images + spec.n_val_images  # training, then validation images
    for key in ("train_support", "train_query", "val_support", "val_query", "train_characters"):
        np.testing.assert_array_equal(tasks[key], sampled[key])
    np.testing.assert_array_equal(tasks["image_ids"][:n_train], sampled["image_ids"][:n_train])
    assert len(tasks["image_ids"]) == n_train + 2 * 6 == n_train + len(order)
    np.testing.assert_array_equal(tasks["image_ids"][n_train:], -1 - order)
    assert tasks["test_support"].shape == (2, 2) and tasks["test_query"].shape == (2, 4)
    np.testing.assert_array_equal(tasks["test_query_labels"], [[0, 0, 1, 1]] * 2)
    # the local image of test support slot (task 1, class 1) is the CSV's d/02.png
    local = tasks["test_support"][1, 1] - n_train
    assert task_list.paths[order[local]].relative_to(tmp_path).as_posix() == "img/d/02.png"
    assert str(tasks["test_tasks_list"]) == task_list.list_id
    assert str(tasks["test_tasks_id"]) == list_tasks_id(task_list) != str(sampled["test_tasks_id"])
    images = local_images(np.zeros((32, SIZE, SIZE), np.float32), tasks, task_list)
    np.testing.assert_array_equal(images[n_train + local], task_list.images[order[local]])
    assert not images[:n_train].any()
