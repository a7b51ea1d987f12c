"""Task sampling on real Omniglot ids: pools, balance, disjointness, nesting, shared test
tasks, determinism. Expected values come from the raw arrays, not from mnk.tasks.sampling."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mnk.tasks.sampling import TaskSpec, character_pools, make_pool, make_tasks

SPEC = dict(way=5, shot=1, query=4, n_characters=10, seed=0, enlarge_ratio=3, n_test_tasks=6, n_val_tasks=3,
            n_val_characters=10)


def _tasks(omniglot, **overrides):
    spec = TaskSpec(**{**SPEC, **overrides})
    return spec, make_tasks(omniglot["character"], omniglot["drawer"], omniglot["split"], spec)


def _characters(omniglot, tasks, name):
    ids = tasks["image_ids"]
    return omniglot["character"][ids[tasks[f"{name}_support"]]], omniglot["character"][ids[tasks[f"{name}_query"]]]


def test_pools_of_both_splits_computed_directly(omniglot):
    character, split, names = omniglot["character"], omniglot["split"], omniglot["character_names"]
    background = set(np.unique(character[split == 0]).tolist())
    evaluation = set(np.unique(character[split == 1]).tolist())
    assert (len(background), len(evaluation)) == (964, 659) and not background & evaluation
    train, test = character_pools(character, split, "background")
    assert set(train.tolist()) == background and set(test.tolist()) == evaluation
    # The original code's split: the first 1200 of the 1,623 characters in name order
    # (background archive first), i.e. all background ones and the first 236 evaluation ones.
    order = sorted(range(len(names)), key=lambda c: (not str(names[c]).startswith("images_background"), str(names[c])))
    first = set(order[:1200])
    train, test = character_pools(character, split, "original")
    assert (len(train), len(test)) == (1200, 423)
    assert set(train.tolist()) == first and set(test.tolist()) == set(order[1200:])
    assert background < first and not set(train.tolist()) & set(test.tolist())


@pytest.mark.parametrize("split", ["background", "original"])
def test_tasks_are_balanced_disjoint_and_consistent(omniglot, split):
    spec, tasks = _tasks(omniglot, split=split)
    assert tasks["train_support"].shape == (spec.n_train_tasks, 5) == (6, 5)
    assert tasks["test_query"].shape == (6, 20) and tasks["val_query"].shape == (3, 20)
    assert len(tasks["image_ids"]) == spec.n_train_images + spec.n_val_images + spec.n_test_images
    for name in ("train", "val", "test"):
        support_chars, query_chars = _characters(omniglot, tasks, name)
        for t in range(len(support_chars)):
            # Labels are class-major and each label is one character: balanced classes.
            for label in range(spec.way):
                chars = np.r_[support_chars[t][tasks[f"{name}_support_labels"][t] == label],
                              query_chars[t][tasks[f"{name}_query_labels"][t] == label]]
                assert len(chars) == spec.shot + spec.query and len(set(chars)) == 1
            assert len(set(support_chars[t])) == spec.way
            # Support and query are disjoint images, globally too.
            assert not set(tasks["image_ids"][tasks[f"{name}_support"][t]]) & set(
                tasks["image_ids"][tasks[f"{name}_query"][t]])
    train_chars = set(_characters(omniglot, tasks, "train")[0].ravel())
    assert train_chars == set(tasks["train_characters"]) and len(train_chars) == 10
    val_chars = set(_characters(omniglot, tasks, "val")[0].ravel())
    test_chars = set(_characters(omniglot, tasks, "test")[0].ravel())
    assert val_chars <= set(tasks["val_characters"]) and len(set(tasks["val_characters"])) == 10
    assert test_chars == set(tasks["test_characters"])
    assert not set(tasks["val_characters"]) & train_chars and not set(tasks["val_characters"]) & test_chars
    assert not train_chars & test_chars
    n_train, n_val = spec.n_train_images, spec.n_val_images
    ids = tasks["image_ids"]
    if split == "background":
        assert (omniglot["split"][ids[: n_train + n_val]] == 0).all() and (omniglot["split"][ids[n_train + n_val:]] == 1).all()
    else:
        assert max(train_chars | set(tasks["val_characters"])) < 1200 <= min(test_chars)
    # Layout: training images, then validation, then test images; every one used.
    used = np.unique(np.r_[tasks["train_support"].ravel(), tasks["train_query"].ravel()])
    assert (used == np.arange(n_train)).all()
    used = np.unique(np.r_[tasks["val_support"].ravel(), tasks["val_query"].ravel()])
    assert (used == np.arange(n_train, n_train + n_val)).all()
    used = np.unique(np.r_[tasks["test_support"].ravel(), tasks["test_query"].ravel()])
    assert (used == np.arange(n_train + n_val, len(ids))).all()
    np.testing.assert_array_equal(tasks["train_image_characters"], omniglot["character"][ids[:n_train]])


def test_training_characters_are_nested_with_the_same_images(omniglot):
    experiments = {n: _tasks(omniglot, n_characters=n)[1] for n in (5, 10, 20)}
    for small, big in ((5, 10), (10, 20)):
        a, b = experiments[small], experiments[big]
        assert set(a["train_characters"]) < set(b["train_characters"])
        for c in a["train_characters"]:
            images_a = a["image_ids"][: a["n_train_images"]][a["train_image_characters"] == c]
            images_b = b["image_ids"][: b["n_train_images"]][b["train_image_characters"] == c]
            np.testing.assert_array_equal(np.sort(images_a), np.sort(images_b))
        assert len(set(a["image_ids"][: a["n_train_images"]])) == small * 5  # 5 distinct images each


def test_every_n_characters_shares_validation_and_test_tasks(omniglot):
    experiments = [_tasks(omniglot, n_characters=n)[1] for n in (5, 10, 20)]
    for name in ("val", "test"):
        reference = None
        for tasks in experiments:
            ids = tasks["image_ids"]
            glob = np.concatenate([ids[tasks[f"{name}_support"]], ids[tasks[f"{name}_query"]]], axis=1)
            reference = glob if reference is None else reference
            np.testing.assert_array_equal(glob, reference)
    direct = []
    for tasks in experiments:
        glob = np.concatenate([tasks["image_ids"][tasks["test_support"]], tasks["image_ids"][tasks["test_query"]]], axis=1)
        direct.append(hashlib.sha256(glob.astype(np.int64).tobytes()).hexdigest()[:12])
        assert str(tasks["test_tasks_id"]) == direct[-1]
    assert len(set(direct)) == 1
    _, other_seed = _tasks(omniglot, seed=1)
    assert str(other_seed["test_tasks_id"]) != direct[0]
    np.testing.assert_array_equal(experiments[0]["val_characters"], experiments[2]["val_characters"])


def test_pool_is_the_largest_experiment_and_prefixes_the_others(omniglot):
    spec = TaskSpec(**{**SPEC, "n_characters": 20})
    pool = make_pool(omniglot["character"], omniglot["drawer"], omniglot["split"], spec)
    _, small = _tasks(omniglot, n_characters=5)
    n_small, n_pool = int(small["n_train_images"]), int(pool["n_train_images"])
    assert n_pool == 100
    np.testing.assert_array_equal(small["image_ids"][:n_small], pool["image_ids"][:n_small])
    np.testing.assert_array_equal(small["image_ids"][n_small:], pool["image_ids"][n_pool:])


def test_enlarge_ratio_resamples_the_same_characters(omniglot):
    spec, tasks = _tasks(omniglot, enlarge_ratio=4)
    groups = tasks["train_task_characters"]
    assert groups.shape == (8, 5)
    for round_ in range(4):  # each round partitions all training characters
        assert sorted(groups[2 * round_: 2 * round_ + 2].ravel()) == sorted(tasks["train_characters"])


def test_same_spec_same_tasks_and_new_seed_new_tasks(omniglot):
    _, first = _tasks(omniglot)
    _, again = _tasks(omniglot)
    _, other = _tasks(omniglot, seed=1)
    assert first.keys() == again.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["image_ids"], other["image_ids"])
    assert not np.array_equal(first["val_characters"], other["val_characters"])


def test_no_validation_tasks(omniglot):
    _, tasks = _tasks(omniglot, n_val_tasks=0)
    assert tasks["val_support"].shape == (0, 5) and tasks["val_query"].shape == (0, 20)


@pytest.mark.parametrize("overrides,message", [
    ({"n_characters": 7}, "tasks.n_characters 7 is not a multiple of tasks.way 5"),
    ({"split": "random"}, "tasks.split must be one of"),
    ({"n_test_tasks": 0}, "tasks.n_test_tasks must be an integer >= 1, got 0"),
    ({"n_val_characters": 3}, "tasks.n_val_characters 3 is smaller than tasks.way 5"),
])
def test_bad_specs_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec(**{**SPEC, **overrides})


def test_more_images_per_class_than_the_data_has_is_an_error(omniglot):
    with pytest.raises(ValueError, match=r"shot \+ query = 21 exceeds the 20 images of the dataset's smallest"):
        _tasks(omniglot, shot=5, query=16)


def test_too_many_characters_is_an_error(omniglot):
    with pytest.raises(ValueError, match="n_characters=960 \\+ n_val_characters=10 exceed the 964 training"):
        _tasks(omniglot, n_characters=960, way=5)


@pytest.mark.parametrize("seed", range(3))
def test_training_characters_are_the_training_side_less_the_validation_pool(seed):
    """Validation characters are half the training side and the experiment takes all the
    rest: drawing its characters from the whole side would pick one of the 20 validation
    characters except with probability 1 / C(40, 20) (about 7e-12). Synthetic ids."""
    n_side, n_test_side, drawers = 40, 10, 4
    character = np.repeat(np.arange(n_side + n_test_side), drawers)
    drawer = np.tile(np.arange(drawers), n_side + n_test_side)
    split = (character >= n_side).astype(np.int8)  # the first 40 characters: the training side
    spec = TaskSpec(way=5, shot=1, query=1, n_characters=20, n_val_characters=20, seed=seed,
                    n_test_tasks=2, n_val_tasks=2)
    tasks = make_tasks(character, drawer, split, spec)
    train, val = set(tasks["train_characters"].tolist()), set(tasks["val_characters"].tolist())
    assert len(train) == len(val) == 20 and not train & val
    assert train | val == set(range(n_side))
    assert set(character[tasks["image_ids"][: tasks["n_train_images"]]].tolist()) == train
