"""Task sampling on real Omniglot ids: balance, disjointness, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mnk.tasks import TaskSpec, character_pools, make_tasks

SPEC = dict(way=5, shot=1, query=4, n_characters=10, seed=0, enlarge_ratio=3, n_test_tasks=6, n_val_tasks=3)


def _tasks(omniglot, **overrides):
    spec = TaskSpec(**{**SPEC, **overrides})
    return spec, make_tasks(omniglot["character"], omniglot["drawer"], omniglot["split"], spec)


def _characters(omniglot, tasks, name):
    ids = tasks["image_ids"]
    return omniglot["character"][ids[tasks[f"{name}_support"]]], omniglot["character"][ids[tasks[f"{name}_query"]]]


@pytest.mark.parametrize("split", ["background", "original"])
def test_tasks_are_balanced_disjoint_and_consistent(omniglot, split):
    spec, tasks = _tasks(omniglot, split=split)
    assert tasks["train_support"].shape == (spec.n_train_tasks, 5) == (6, 5)
    assert tasks["test_query"].shape == (6, 20)
    assert len(tasks["image_ids"]) == spec.n_train_images + spec.n_test_images
    for name in ("train", "val", "test"):
        support_chars, query_chars = _characters(omniglot, tasks, name)
        for t in range(len(support_chars)):
            # Labels are class-major and each label is one character: balanced classes.
            for label in range(spec.way):
                chars = np.r_[support_chars[t][tasks[f"{name}_support_labels"][t] == label],
                              query_chars[t][tasks[f"{name}_query_labels"][t] == label]]
                assert len(chars) == spec.shot + spec.query and len(set(chars)) == 1
            assert len(set(support_chars[t])) == spec.way
            # Support and query are disjoint images.
            assert not set(tasks[f"{name}_support"][t]) & set(tasks[f"{name}_query"][t])
    train_chars = set(_characters(omniglot, tasks, "train")[0].ravel())
    assert train_chars == set(tasks["train_characters"]) and len(train_chars) == 10
    assert set(_characters(omniglot, tasks, "val")[0].ravel()) <= train_chars
    test_chars = set(_characters(omniglot, tasks, "test")[0].ravel())
    assert not train_chars & test_chars
    train_pool, test_pool = character_pools(omniglot["character"], omniglot["split"], split)
    assert train_chars <= set(train_pool) and test_chars <= set(test_pool)
    if split == "background":
        assert (omniglot["split"][tasks["image_ids"][: spec.n_train_images]] == 0).all()
        assert (omniglot["split"][tasks["image_ids"][spec.n_train_images:]] == 1).all()
    else:
        assert max(train_chars) < 1200 <= min(test_chars)
    # Training tasks use exactly the experiment's training images, each of them.
    used = np.unique(np.r_[tasks["train_support"].ravel(), tasks["train_query"].ravel()])
    assert (used == np.arange(spec.n_train_images)).all()


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


@pytest.mark.parametrize("overrides,message", [
    ({"n_characters": 7}, "multiple of way"),
    ({"shot": 5, "query": 16}, "exceeds the 20 images"),
    ({"split": "random"}, "tasks.split must be one of"),
    ({"n_test_tasks": 0}, "n_test_tasks must be >= 1"),
])
def test_bad_specs_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec(**{**SPEC, **overrides})


def test_too_many_characters_is_an_error(omniglot):
    with pytest.raises(ValueError, match="exceeds the 964 training characters"):
        _tasks(omniglot, n_characters=965, way=5)
