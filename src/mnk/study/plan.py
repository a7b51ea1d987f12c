"""The study's kernel plan, computed once from the config: image pools, blocks, identity.

Importable without numpy or torch: the Snakefile imports it from Snakemake's own
environment, and the jobs receive what it computed (a block's coordinates) as params.

One image pool per (way, shot, seed): the training images of the largest experiment (its
characters in the seeded order whose prefixes are the smaller experiments' characters),
then the validation tasks' images, then the test tasks' images, `task_size` consecutive
images per task (`mnk.tasks.sampling.make_pool`). Every experiment of the pool uses a prefix of the
training images and all of the validation and test images, so its kernel is a sub-kernel
of the pool's. The pool's kernel is needed only between training x training images (lower
triangle), (validation + test) x training images and within each task; those pairs are cut
into blocks of at most `kernel.block_size` images per side, one job each, computed once
for all the experiments of the pool.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnk.study.config import StudyConfig

EXPERIMENT_PATTERN = r"(\d+)way(\d+)shot-(\d+)char-seed(\d+)"
POOL_PATTERN = r"pool-(\d+)way(\d+)shot-seed(\d+)"
BLOCK_PATTERN = r"(train|cross|task)-\d+-\d+"

@dataclass(frozen=True)
class Block:
    kind: str  # "train": train x train, "cross": (val + test) x train, "task": within tasks
    i: int
    j: int
    rows: tuple[int, int]  # pool positions [start, stop)
    cols: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.i}-{self.j}"

    def n_pairs(self, task_size: int) -> int:
        """Distinct image pairs the block computes (symmetric Grams count their triangle)."""
        rows = self.rows[1] - self.rows[0]
        if self.kind == "task":
            return rows // task_size * task_size * (task_size + 1) // 2
        if self.rows == self.cols:
            return rows * (rows + 1) // 2
        return rows * (self.cols[1] - self.cols[0])


@dataclass(frozen=True)
class PoolPlan:
    """The image pool of one (way, shot, seed) and its blocks."""

    way: int
    shot: int
    seed: int
    query: int
    n_characters: tuple[int, ...]  # the experiments', ascending
    n_val_tasks: int
    n_test_tasks: int
    block_size: int

    @property
    def name(self) -> str:
        return f"pool-{self.way}way{self.shot}shot-seed{self.seed}"

    @property
    def task_size(self) -> int:
        return self.way * (self.shot + self.query)

    def n_train_images(self, n_characters: int | None = None) -> int:
        return (n_characters or max(self.n_characters)) * (self.shot + self.query)

    @property
    def val_start(self) -> int:
        return self.n_train_images()

    @property
    def test_start(self) -> int:
        return self.val_start + self.n_val_tasks * self.task_size

    @property
    def n_images(self) -> int:
        return self.test_start + self.n_test_tasks * self.task_size

    def local_to_pool(self, n_characters: int) -> tuple[tuple[int, int, int], ...]:
        """(local start, pool start, length) of each run of an experiment's local images."""
        n_train = self.n_train_images(n_characters)
        return (0, 0, n_train), (n_train, self.val_start, self.n_images - self.val_start)

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        if self.block_size < 1:
            raise ValueError(f"kernel.block_size must be >= 1, got {self.block_size}")
        train = _chunks(0, self.val_start, self.block_size)
        blocks = [Block("train", i, j, rows, cols) for i, rows in enumerate(train) for j, cols in enumerate(train[: i + 1])]
        size = max(self.task_size, self.block_size // self.task_size * self.task_size)
        for i, rows in enumerate(_chunks(self.val_start, self.n_images, size)):
            blocks += [Block("cross", i, j, rows, cols) for j, cols in enumerate(train)]
            blocks.append(Block("task", i, 0, rows, rows))
        return tuple(blocks)

    @property
    def n_blocks(self) -> int:
        """len(blocks), counted without listing them (the config checks bound it before planning)."""
        n_train = math.ceil(self.val_start / self.block_size)
        size = max(self.task_size, self.block_size // self.task_size * self.task_size)
        n_eval = math.ceil((self.n_images - self.val_start) / size)
        return n_train * (n_train + 1) // 2 + n_eval * (n_train + 1)

    def block(self, name: str) -> Block:
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(f"no kernel block named {name!r} in {self.name}")

    def experiment_blocks(self, n_characters: int) -> list[Block]:
        """The blocks holding some entry of an experiment's kernel (train blocks have j <= i)."""
        n_train = self.n_train_images(n_characters)
        return [b for b in self.blocks
                if b.kind == "task" or (b.kind == "train" and b.rows[0] < n_train) or (b.kind == "cross" and b.cols[0] < n_train)]

    def pairs_by_stage(self) -> dict[str, int]:
        """Planned pairs, counted from the blocks, by what they are for."""
        stages = dict.fromkeys(STAGES, 0)
        segments = {"val": (self.val_start, self.test_start), "test": (self.test_start, self.n_images)}
        for b in self.blocks:
            if b.kind == "train":
                stages["train x train"] += b.n_pairs(self.task_size)
                continue
            for label, (lo, hi) in segments.items():
                rows = max(0, min(hi, b.rows[1]) - max(lo, b.rows[0]))  # chunks hold whole tasks
                if b.kind == "cross":
                    stages[f"{label} x train"] += rows * (b.cols[1] - b.cols[0])
                else:
                    stages[f"within {label} tasks"] += rows // self.task_size * self.task_size * (self.task_size + 1) // 2
        return stages


STAGES = ("train x train", "val x train", "test x train", "within val tasks", "within test tasks")


def _chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(k, min(stop, k + size)) for k in range(start, stop, size)]


# ------------------------------------------------------------------------- the study


def experiment_ids(study: StudyConfig) -> list[str]:
    if study.regression:
        return study.sinusoid.experiment_ids()
    grid = study.tasks
    return [f"{w}way{s}shot-{n}char-seed{seed}" for w in grid.way for s in grid.shot
            for n in grid.n_characters for seed in grid.seeds]


def experiment_pattern(study: StudyConfig) -> str:
    """The `exp` wildcard's pattern: the classification grid's ids, or the sinusoid study's."""
    from mnk.tasks.sinusoid import EXPERIMENT_PATTERN as SINUSOID_PATTERN

    return SINUSOID_PATTERN if study.regression else EXPERIMENT_PATTERN


def parse_experiment(exp: str) -> dict:
    """An experiment id's settings (way, shot, n_characters, seed; a sinusoid one's shot,
    n_train_tasks, seed)."""
    from mnk.tasks.sinusoid import parse_sinusoid_experiment

    if exp.startswith("sinusoid-"):
        return parse_sinusoid_experiment(exp)
    match = re.fullmatch(EXPERIMENT_PATTERN, exp)
    if match is None:
        raise ValueError(f"not an experiment id: {exp!r}")
    way, shot, chars, seed = map(int, match.groups())
    return {"way": way, "shot": shot, "n_characters": chars, "seed": seed}


def pools(study: StudyConfig) -> dict[str, PoolPlan]:
    """Every image pool of the study, by name (none for regression tasks)."""
    if study.regression:
        return {}
    t = study.tasks
    chars = tuple(sorted(set(t.n_characters)))
    plans = [PoolPlan(w, s, seed, t.query, chars, t.n_val_tasks, t.n_test_tasks, study.kernel.block_size)
             for w in t.way for s in t.shot for seed in t.seeds]
    return {p.name: p for p in plans}


# Kernel blocks (one job each) a study may plan: the dry run of 2,430 took 15 s on the 2-core
# VM, and planning grows faster than the number of jobs (an unbounded count hung it at 17 GB).
MAX_KERNEL_BLOCKS = 5000


def check_plan_size(plans: dict[str, PoolPlan]) -> None:
    """Refuse a study of more than MAX_KERNEL_BLOCKS kernel blocks, counted before they are listed."""
    from mnk.study.config_checks import ConfigError

    blocks = sum(pool.n_blocks for pool in plans.values())
    if blocks > MAX_KERNEL_BLOCKS:
        first = next(iter(plans.values()))
        raise ConfigError(
            f"invalid configuration:\n  - the study would plan {blocks} kernel blocks (jobs) in {len(plans)} image "
            f"pools, more than {MAX_KERNEL_BLOCKS}: raise kernel.block_size ({first.block_size}) or lower "
            "tasks.n_characters, n_val_tasks, n_test_tasks, query, way, shot or the number of seeds")


def pool_name(exp: str) -> str:
    e = parse_experiment(exp)
    return f"pool-{e['way']}way{e['shot']}shot-seed{e['seed']}"


# ---------------------------------------------------------------- identity and hashes


def canonical(value):
    """Dicts with sorted keys, recursively: reordering keys in the config file is no change."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def kernel_identity(study: StudyConfig) -> dict:
    """Everything that decides a kernel value of given images (not how it is computed)."""
    kernel = asdict(study.kernel.options)
    kernel["image_size"] = study.kernel_image_size
    kernel["source"] = study.kernel_source
    data = {"image_size": study.data.image_size, "resample": study.data.resample}
    if study.data.dataset == "folder":  # (Omniglot identities stay as they were)
        data.update(dataset=study.data.dataset, folder=study.data.params()["folder"])
    identity = {"kernel": kernel, "data": data}
    if study.test_tasks:  # the list's images have no global ids: its identity tells them apart
        identity["test_tasks"] = study.test_tasks["list_id"]
    return canonical(identity)


def short_hash(obj) -> str:
    """12 hex digits of the SHA-256 of `obj` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def as_params(obj) -> dict:
    """A Block or PoolPlan as plain data (JSON types) for a job's params."""
    return json.loads(json.dumps(asdict(obj)))


def from_params(cls, params: dict):
    """Inverse of as_params (lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
