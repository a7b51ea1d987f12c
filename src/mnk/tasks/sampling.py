"""Few-shot task sampling: the one place where an experiment's tasks are decided.

Every method (MNK, MAML, iMAML) reads the same tasks file, so they all see exactly the
same training, validation and test tasks.

Paired, nested design. For a given (way, shot, query, seed, split) every experiment, whatever
its `n_characters`, has the same validation and test tasks, and the training characters are
nested: a seeded order of the training pool whose first `n_characters` are an experiment's
(the 10 of n=10 are among the 20 of n=20), each with the same `shot + query` images in every
experiment. The character pools: the split's test side for test tasks; on the training side,
a fixed, seeded validation pool of `n_val_characters` characters (never trained on) for the
validation tasks, the rest for training. Training tasks partition an experiment's characters
into groups of `way`; `enlarge_ratio` repeats the partition with fresh shuffles (the
original code's re-sampling of more tasks from the same characters and images). Validation
and test tasks have their own images per task, `shot + query` per class.

Each part is drawn from its own seeded stream, so nothing depends on the other experiments
of the grid (`make_pool` holds the largest experiment's training images plus the shared
validation and test images: `mnk.study.plan` computes the kernel once on it).

The tasks file indexes a local image list (`image_ids`, global ids into the preprocessed
file): training images [0, n_train_images) in (character, drawer) order, characters in the
nested order, then the validation tasks' images, then the test tasks' images, each in task
order. All task arrays are class-major: labels are repeat(arange(way), shot|query).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import numpy as np

from mnk.data.omniglot import DRAWERS, ORIGINAL_TRAIN_CHARACTERS, SPLITS  # noqa: F401 (re-exported)
from mnk.tasks.spec import TaskSpec  # noqa: F401 (re-exported: the sampler's options)

# Seeded streams, one per part of the design (values are arbitrary, fixed forever).
_VAL_CHARACTERS, _TRAIN_ORDER, _TRAIN_IMAGES, _VAL_TASKS, _TEST_TASKS, _TRAIN_TASKS = range(1, 7)


def character_pools(character: np.ndarray, split: np.ndarray, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted global character ids of the training pool and the test pool."""
    characters = np.unique(character)
    if split_name == "background":
        char_split = np.zeros(characters.max() + 1, dtype=np.int8)
        char_split[character] = split
        return characters[char_split[characters] == 0], characters[char_split[characters] == 1]
    return characters[:ORIGINAL_TRAIN_CHARACTERS], characters[ORIGINAL_TRAIN_CHARACTERS:]


def image_ids_hash(ids) -> str:
    """12 hex digits of the SHA-256 of image ids (int64, in the given order)."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:12]


def test_tasks_id(image_ids: np.ndarray, support: np.ndarray, query: np.ndarray) -> str:
    """Identity of a set of test tasks: their global image ids, support then query, task by task."""
    return image_ids_hash(np.asarray(image_ids)[np.concatenate([support, query], axis=1)])


test_tasks_id.__test__ = False  # not a pytest test, despite its name


def _images_by_character(character: np.ndarray, drawer: np.ndarray) -> dict[int, np.ndarray]:
    order = np.lexsort((drawer, character))
    chars = character[order]
    starts = np.flatnonzero(np.r_[True, chars[1:] != chars[:-1]])
    ends = np.r_[starts[1:], len(order)]
    return {int(chars[s]): order[s:e] for s, e in zip(starts, ends)}


def _tasks_from_groups(groups, pools, shot, rng):
    """groups: (n_tasks, way) keys into `pools` (class -> image ids, >= shot + query each)."""
    support, query = [], []
    for group in groups:
        task_support, task_query = [], []
        for cls in group:
            images = rng.permutation(pools[cls])
            task_support.append(images[:shot])
            task_query.append(images[shot:])
        support.append(np.concatenate(task_support))
        query.append(np.concatenate(task_query))
    return np.asarray(support, dtype=np.int64), np.asarray(query, dtype=np.int64)


def _fixed_image_tasks(characters, n_tasks, by_character, spec, rng):
    """Tasks of `way` random characters, each with its own `shot + query` random images:
    (task characters, global ids (n_tasks, way, shot + query), first `shot` are support)."""
    groups = np.asarray([rng.choice(characters, spec.way, replace=False) for _ in range(n_tasks)], dtype=np.int64)
    images = [[rng.choice(by_character[int(c)], spec.images_per_class, replace=False) for c in g] for g in groups]
    shape = (n_tasks, spec.way, spec.images_per_class)
    return groups.reshape(n_tasks, spec.way), np.asarray(images, dtype=np.int64).reshape(shape)


def _design(character, drawer, split, spec: TaskSpec) -> dict:
    """The parts every experiment of (way, shot, query, seed, split) shares, and its own
    training characters (a prefix of the nested order) with their fixed images."""
    by_character = _images_by_character(np.asarray(character), np.asarray(drawer))
    fewest = min(len(images) for images in by_character.values())
    if spec.images_per_class > fewest:  # Omniglot: 20 (DRAWERS); a folder dataset: its smallest class
        raise ValueError(f"shot + query = {spec.images_per_class} exceeds the {fewest} images of the "
                         "dataset's smallest class")
    train_side, test_pool = character_pools(character, split, spec.split)
    if spec.n_characters + spec.n_val_characters > len(train_side):
        raise ValueError(f"n_characters={spec.n_characters} + n_val_characters={spec.n_val_characters} exceed "
                         f"the {len(train_side)} training characters")
    if spec.way > len(test_pool):
        raise ValueError(f"way={spec.way} exceeds the {len(test_pool)} test characters")
    val_chars = np.sort(spec.rng(_VAL_CHARACTERS).choice(train_side, spec.n_val_characters, replace=False))
    order = spec.rng(_TRAIN_ORDER).permutation(np.setdiff1d(train_side, val_chars))
    train_chars = order[: spec.n_characters]
    rng = spec.rng(_TRAIN_IMAGES, spec.images_per_class)  # sequential: a prefix draws the same images
    train_images = np.stack([np.sort(rng.choice(by_character[int(c)], spec.images_per_class, replace=False))
                             for c in train_chars])
    task_key = (spec.way, spec.shot, spec.query)
    val = _fixed_image_tasks(val_chars, spec.n_val_tasks, by_character, spec, spec.rng(_VAL_TASKS, *task_key))
    test = _fixed_image_tasks(test_pool, spec.n_test_tasks, by_character, spec, spec.rng(_TEST_TASKS, *task_key))
    return {"train_characters": train_chars, "train_images": train_images, "val_characters": val_chars,
            "val": val, "test": test}


def _local_tasks(images: np.ndarray, start: int, shot: int) -> tuple[np.ndarray, np.ndarray]:
    """Local support/query indices of fixed-image tasks stored from `start` in task order."""
    n_tasks, way, per_class = images.shape
    local = start + np.arange(images.size).reshape(images.shape)
    return local[:, :, :shot].reshape(n_tasks, way * shot), local[:, :, shot:].reshape(n_tasks, way * (per_class - shot))


def make_tasks(character: np.ndarray, drawer: np.ndarray, split: np.ndarray, spec: TaskSpec) -> dict[str, np.ndarray]:
    """Sample an experiment's tasks; deterministic for a given spec (and data)."""
    design = _design(character, drawer, split, spec)
    train_chars, train_images = design["train_characters"], design["train_images"]
    (val_groups, val_images), (test_groups, test_images) = design["val"], design["test"]
    image_ids = np.concatenate([train_images.ravel(), val_images.ravel(), test_images.ravel()])

    rng = spec.rng(_TRAIN_TASKS, spec.way, spec.shot, spec.query, spec.n_characters)
    per_class = spec.images_per_class
    train_local = {int(c): np.arange(k * per_class, (k + 1) * per_class) for k, c in enumerate(train_chars)}
    n_groups = spec.n_characters // spec.way
    groups = np.concatenate([rng.permutation(train_chars).reshape(n_groups, spec.way) for _ in range(spec.enlarge_ratio)])
    tasks = {"train": _tasks_from_groups(groups, train_local, spec.shot, rng),
             "val": _local_tasks(val_images, spec.n_train_images, spec.shot),
             "test": _local_tasks(test_images, spec.n_train_images + spec.n_val_images, spec.shot)}
    out = {
        "image_ids": image_ids.astype(np.int64),
        "n_train_images": np.int64(spec.n_train_images),
        "n_val_images": np.int64(spec.n_val_images),
        "train_characters": train_chars.astype(np.int64),
        "val_characters": design["val_characters"].astype(np.int64),
        "test_characters": np.unique(test_groups).astype(np.int64),
        "train_image_characters": np.repeat(train_chars, per_class).astype(np.int64),
        "train_task_characters": groups.astype(np.int64),
        "val_task_characters": val_groups,
        "test_task_characters": test_groups,
        "test_tasks_id": np.array(test_tasks_id(image_ids, *tasks["test"])),
        "way": np.int64(spec.way),
        "shot": np.int64(spec.shot),
        "query": np.int64(spec.query),
    }
    labels_s = np.repeat(np.arange(spec.way), spec.shot)
    labels_q = np.repeat(np.arange(spec.way), spec.query)
    for name, (s, q) in tasks.items():
        s = s.reshape(-1, spec.way * spec.shot)
        q = q.reshape(-1, spec.way * spec.query)
        out[f"{name}_support"], out[f"{name}_query"] = s, q
        out[f"{name}_support_labels"] = np.broadcast_to(labels_s, s.shape).copy()
        out[f"{name}_query_labels"] = np.broadcast_to(labels_q, q.shape).copy()
    return out


def make_pool(character: np.ndarray, drawer: np.ndarray, split: np.ndarray, spec: TaskSpec) -> dict[str, np.ndarray]:
    """The image pool of all experiments up to `spec.n_characters` (the largest) of this
    (way, shot, query, seed, split): the largest experiment's local image list, which every
    smaller experiment's training images prefix (`mnk.study.plan.PoolPlan.local_to_pool`)."""
    return pool_of(make_tasks(character, drawer, split, spec))


# What a pool file holds of its largest experiment's tasks: the image list and the test tasks'
# identity (with a task list, the list's too), not the task layout.
POOL_KEYS = ("image_ids", "n_train_images", "n_val_images", "test_tasks_id", "way", "shot", "query", "test_tasks_list")


def pool_of(tasks: dict) -> dict:
    """The pool file of the largest experiment's `tasks` (the make_tasks arrays)."""
    return {key: tasks[key] for key in POOL_KEYS if key in tasks}


def spec_dict(spec: TaskSpec) -> dict:
    return asdict(spec)
