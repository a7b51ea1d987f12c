"""Few-shot task sampling: the one place where an experiment's tasks are decided.

Every method (MNK, MAML, iMAML) reads the same tasks file, so they all see exactly the
same training tasks and are tested on exactly the same test tasks.

An experiment's training data are `n_characters` characters with `shot + query` images
(drawers) each, chosen once. Training tasks partition those characters into groups of
`way`; `enlarge_ratio` repeats the partition with fresh shuffles (the original code's
re-sampling of more tasks from the same characters and images), so there are
`enlarge_ratio * (n_characters // way)` training tasks over `n_characters * (shot + query)`
images: the kernel is computed over exactly those images. Validation tasks (for MAML
model selection) are drawn from the training images; test tasks from test characters,
disjoint from the training ones.

The tasks file indexes a local image list (`image_ids`, global ids into the preprocessed
file): training images first, in (character, drawer) order, then the test tasks' images in
task order. All task arrays are class-major: labels are repeat(arange(way), shot|query).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mnk.omniglot import DRAWERS, ORIGINAL_TRAIN_CHARACTERS, SPLITS  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class TaskSpec:
    way: int
    shot: int
    query: int
    n_characters: int
    seed: int
    enlarge_ratio: int = 1
    n_test_tasks: int = 100
    n_val_tasks: int = 20
    split: str = "background"

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"tasks.split must be one of {SPLITS}, got {self.split!r}")
        for key in ("way", "shot", "query", "n_characters", "enlarge_ratio", "n_test_tasks"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.n_val_tasks < 0:
            raise ValueError(f"n_val_tasks must be >= 0, got {self.n_val_tasks}")
        if self.shot + self.query > DRAWERS:
            raise ValueError(
                f"shot + query = {self.shot + self.query} exceeds the {DRAWERS} images per "
                "Omniglot character"
            )
        if self.n_characters < self.way or self.n_characters % self.way:
            raise ValueError(
                f"n_characters ({self.n_characters}) must be a positive multiple of way ({self.way})"
            )

    @property
    def images_per_class(self) -> int:
        return self.shot + self.query

    @property
    def n_train_tasks(self) -> int:
        return self.enlarge_ratio * (self.n_characters // self.way)

    @property
    def n_train_images(self) -> int:
        return self.n_characters * self.images_per_class

    @property
    def n_test_images(self) -> int:
        return self.n_test_tasks * self.way * self.images_per_class


def character_pools(character: np.ndarray, split: np.ndarray, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted global character ids of the training pool and the test pool."""
    characters = np.unique(character)
    if split_name == "background":
        char_split = np.zeros(characters.max() + 1, dtype=np.int8)
        char_split[character] = split
        return characters[char_split[characters] == 0], characters[char_split[characters] == 1]
    return characters[:ORIGINAL_TRAIN_CHARACTERS], characters[ORIGINAL_TRAIN_CHARACTERS:]


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


def make_tasks(character: np.ndarray, drawer: np.ndarray, split: np.ndarray, spec: TaskSpec) -> dict[str, np.ndarray]:
    """Sample an experiment's tasks; deterministic for a given spec (and data)."""
    rng = np.random.default_rng([spec.seed, spec.way, spec.shot, spec.query, spec.n_characters])
    by_character = _images_by_character(np.asarray(character), np.asarray(drawer))
    train_pool, test_pool = character_pools(character, split, spec.split)
    if spec.n_characters > len(train_pool):
        raise ValueError(f"n_characters={spec.n_characters} exceeds the {len(train_pool)} training characters")
    if spec.way > len(test_pool):
        raise ValueError(f"way={spec.way} exceeds the {len(test_pool)} test characters")
    per_class = spec.images_per_class

    train_chars = np.sort(rng.choice(train_pool, spec.n_characters, replace=False))
    # Fixed images per training character: the experiment's training set.
    train_images = {int(c): np.sort(rng.choice(by_character[int(c)], per_class, replace=False)) for c in train_chars}
    image_ids = np.concatenate([train_images[int(c)] for c in train_chars])
    local = {int(g): i for i, g in enumerate(image_ids)}
    train_local = {c: np.array([local[int(g)] for g in ids]) for c, ids in train_images.items()}

    n_groups = spec.n_characters // spec.way
    groups = np.concatenate([rng.permutation(train_chars).reshape(n_groups, spec.way) for _ in range(spec.enlarge_ratio)])
    train_s, train_q = _tasks_from_groups(groups, train_local, spec.shot, rng)

    val_groups = np.asarray([rng.choice(train_chars, spec.way, replace=False) for _ in range(spec.n_val_tasks)])
    val_s, val_q = _tasks_from_groups(val_groups.reshape(-1, spec.way), train_local, spec.shot, rng)

    # Test tasks: fresh images of test characters, appended to the local image list.
    test_groups = [rng.choice(test_pool, spec.way, replace=False) for _ in range(spec.n_test_tasks)]
    test_s, test_q, next_id, test_ids = [], [], len(image_ids), []
    for group in test_groups:
        pools = {}
        for c in group:
            chosen = rng.choice(by_character[int(c)], per_class, replace=False)
            pools[int(c)] = np.arange(next_id, next_id + per_class)
            test_ids.append(chosen)
            next_id += per_class
        s, q = _tasks_from_groups([[int(c) for c in group]], pools, spec.shot, rng)
        test_s.append(s[0])
        test_q.append(q[0])
    image_ids = np.concatenate([image_ids, *test_ids])

    labels_s = np.repeat(np.arange(spec.way), spec.shot)
    labels_q = np.repeat(np.arange(spec.way), spec.query)
    out = {
        "image_ids": image_ids.astype(np.int64),
        "n_train_images": np.int64(spec.n_train_images),
        "train_characters": train_chars.astype(np.int64),
        "test_characters": np.unique(np.asarray(test_groups)).astype(np.int64),
        "train_task_characters": groups.astype(np.int64),
        "test_task_characters": np.asarray(test_groups, dtype=np.int64),
        "way": np.int64(spec.way),
        "shot": np.int64(spec.shot),
        "query": np.int64(spec.query),
    }
    for name, (s, q) in {"train": (train_s, train_q), "val": (val_s, val_q),
                         "test": (np.asarray(test_s, dtype=np.int64), np.asarray(test_q, dtype=np.int64))}.items():
        s = s.reshape(-1, spec.way * spec.shot)
        q = q.reshape(-1, spec.way * spec.query)
        out[f"{name}_support"] = s
        out[f"{name}_query"] = q
        out[f"{name}_support_labels"] = np.broadcast_to(labels_s, s.shape).copy()
        out[f"{name}_query_labels"] = np.broadcast_to(labels_q, q.shape).copy()
    return out


def spec_dict(spec: TaskSpec) -> dict:
    return asdict(spec)
