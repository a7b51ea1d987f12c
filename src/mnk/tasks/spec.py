"""One experiment's task settings: a frozen, validated object built from the `tasks` config
section (errors name the key) and passed whole to the task sampler (`mnk.tasks.sampling`).

Plain Python (numpy only inside `rng`): `mnk.study.config_checks` builds one per grid point in
Snakemake's own environment, so these rules are stated once and checked before any job.
"""

from __future__ import annotations

import itertools
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Mapping

from mnk.data.omniglot import SPLITS
from mnk.infra.checks import as_list, is_int


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
    n_val_characters: int = 20
    split: str = "background"

    def __post_init__(self):
        problems = spec_problems(asdict(self))
        if problems:
            raise ValueError("; ".join(problems))

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
    def n_val_images(self) -> int:
        return self.n_val_tasks * self.way * self.images_per_class

    @property
    def n_test_images(self) -> int:
        return self.n_test_tasks * self.way * self.images_per_class

    def rng(self, stream: int, *more: int):
        import numpy as np

        return np.random.default_rng([self.seed, stream, *more])


_LEAST = {"way": 1, "shot": 1, "query": 1, "n_characters": 1, "enlarge_ratio": 1, "n_test_tasks": 1,
          "n_val_tasks": 0, "n_val_characters": 0}


def spec_problems(settings: dict) -> list[str]:
    """Every rule the settings of one experiment (TaskSpec's fields) break, naming `tasks.` keys."""
    split = settings["split"]
    problems = [] if split in SPLITS else [f"tasks.split must be one of {SPLITS}, got {split!r}"]
    for key, least in _LEAST.items():
        if not (is_int(settings[key]) and settings[key] >= least):
            problems.append(f"tasks.{key} must be an integer >= {least}, got {settings[key]!r}")
    if problems:
        return problems
    way, n_characters = settings["way"], settings["n_characters"]
    if n_characters < way or n_characters % way:
        problems.append(f"tasks.n_characters {n_characters} is not a multiple of tasks.way {way}: training tasks "
                        f"split the training characters into groups of {way}")
    if settings["n_val_tasks"] and settings["n_val_characters"] < way:
        problems.append(f"tasks.n_val_characters {settings['n_val_characters']} is smaller than tasks.way {way}: "
                        "a validation task needs `way` distinct characters")
    return problems


def grid_problems(tasks: dict) -> list[str]:
    """spec_problems over every (way, shot, n_characters) of a `tasks` section, each once.

    Keys the section leaves out take TaskSpec's defaults (a missing key is the schema's business)."""
    defaults = {f.name: f.default for f in fields(TaskSpec) if f.default is not MISSING}
    given = {key: value for key, value in tasks.items() if key in _LEAST or key == "split"}
    problems = []
    for way, shot, size in itertools.product(*(as_list(tasks.get(key, [])) for key in ("way", "shot", "n_characters"))):
        settings = {**defaults, "query": 1, **given, "way": way, "shot": shot, "n_characters": size, "seed": 0}
        problems += [p for p in spec_problems(settings) if p not in problems]
    return problems


# The settings every experiment of the grid shares (the rest: way, shot, n_characters, seed).
SHARED_KEYS = ("split", "query", "enlarge_ratio", "n_test_tasks", "n_val_tasks", "n_val_characters")


@dataclass(frozen=True)
class TaskGrid:
    """The `tasks` section: the experiments' grid (way x shot x n_characters x seeds) and the
    settings they share; `spec` gives one experiment's TaskSpec."""

    way: tuple[int, ...]
    shot: tuple[int, ...]
    n_characters: tuple[int, ...]
    seeds: tuple[int, ...]
    query: int
    split: str = "background"
    enlarge_ratio: int = 1
    n_test_tasks: int = 100  # with a task list: the list's number of tasks
    n_val_tasks: int = 20
    n_val_characters: int = 20
    test_tasks: str | None = None  # a task list's path (mnk.tasks.tasklist)

    def __post_init__(self):
        problems = grid_problems(asdict(self))
        if not self.seeds or not all(is_int(seed) for seed in self.seeds):
            problems.append(f"tasks.seeds must be a non-empty list of integers, got {list(self.seeds)!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_section(cls, tasks: Mapping) -> "TaskGrid":
        grid = {key: tuple(as_list(tasks[key])) for key in ("way", "shot", "n_characters", "seeds") if key in tasks}
        shared = {key: tasks[key] for key in (*SHARED_KEYS, "test_tasks") if key in tasks}
        return cls(**grid, **shared)

    def shared(self) -> dict:
        return {key: getattr(self, key) for key in SHARED_KEYS}

    def spec(self, way: int, shot: int, n_characters: int, seed: int) -> TaskSpec:
        return TaskSpec(way=way, shot=shot, n_characters=n_characters, seed=seed, **self.shared())
