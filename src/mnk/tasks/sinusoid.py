"""Sinusoid regression tasks: the MAML paper's first benchmark (Finn et al. 2017, section 5.1).

A task is y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi] and inputs x ~ U[-5, 5];
K support points, `query` query points, squared error. Targets mean the same in every task
(unlike the arbitrary class order of a few-shot classification task), so what meta-training
learns transfers: the case where the answer is known (issue 26).

One seed draws three streams of tasks, each point independently: training, validation and
test. Every experiment of the seed (n_train_tasks x shot) takes the first n training tasks
(nested), the same validation and test tasks, and the first `shot` points of each task's
support draw (so K = 5 and K = 10 share tasks, queries and their first five support points).

Plain Python at import (numpy inside the functions): the options are checked in Snakemake's
own environment.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

from mnk.infra.checks import is_int, is_number, require

__all__ = ["SinusoidOptions", "experiment_tasks", "sinusoid_experiment_id", "EXPERIMENT_PATTERN"]

EXPERIMENT_PATTERN = r"sinusoid-(\d+)shot-(\d+)tasks-seed(\d+)"
# Seeded streams (arbitrary, fixed forever), one per task set.
_STREAMS = {"train": 1, "val": 2, "test": 3}
CURVE_POINTS = 200  # the x grid of the one test task drawn with each method's prediction
_MAX_TASKS = 5000  # per set: bounds the kernel (points squared) before any job


@dataclass(frozen=True)
class SinusoidOptions:
    """The `sinusoid` section: the task family, the study's grid and the kernel's input map."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    shot: tuple[int, ...] = (5, 10)
    query: int = 10
    n_train_tasks: tuple[int, ...] = (10, 40, 160)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_val_tasks: int = 50
    n_test_tasks: int = 100
    depth: int = 2  # hidden layers of the fully connected ReLU NTK (the MAML paper's 2 x 40 net)
    bias: float = 1.0  # the constant input feature appended to x (a first-layer bias)

    def __post_init__(self):
        for name in ("amplitude", "phase", "x_range"):
            low_high = getattr(self, name)
            require(len(low_high) == 2 and all(is_number(v) and math.isfinite(v) for v in low_high)
                    and low_high[0] < low_high[1], f"sinusoid.{name}", "[low, high] with low < high", low_high)
        for name, least in (("shot", 1), ("n_train_tasks", 1), ("seeds", 0)):
            values = getattr(self, name)
            require(bool(values) and all(is_int(v) and v >= least for v in values) and len(set(values)) == len(values),
                    f"sinusoid.{name}", f"a list of distinct integers >= {least}", values)
        for name in ("query", "n_val_tasks", "n_test_tasks", "depth"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"sinusoid.{name}", "an integer >= 1", value)
        for name in ("n_train_tasks", "n_val_tasks", "n_test_tasks"):
            most = max(getattr(self, name)) if name == "n_train_tasks" else getattr(self, name)
            require(most <= _MAX_TASKS, f"sinusoid.{name}", f"at most {_MAX_TASKS} tasks", most)
        require(is_number(self.bias) and math.isfinite(self.bias) and self.bias > 0, "sinusoid.bias",
                "a number > 0", self.bias)

    @classmethod
    def from_section(cls, section: Mapping) -> "SinusoidOptions":
        tuples = ("amplitude", "phase", "x_range", "shot", "n_train_tasks", "seeds")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in section.items()})

    def params(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def points_per_task(self) -> int:
        return max(self.shot) + self.query

    def experiment_ids(self) -> list[str]:
        return [sinusoid_experiment_id(shot, n, seed)
                for shot in self.shot for n in self.n_train_tasks for seed in self.seeds]


def sinusoid_experiment_id(shot: int, n_train_tasks: int, seed: int) -> str:
    return f"sinusoid-{shot}shot-{n_train_tasks}tasks-seed{seed}"


def parse_sinusoid_experiment(exp: str) -> dict:
    import re

    match = re.fullmatch(EXPERIMENT_PATTERN, exp)
    if match is None:
        raise ValueError(f"not a sinusoid experiment id: {exp!r}")
    shot, n_tasks, seed = map(int, match.groups())
    return {"shot": shot, "n_train_tasks": n_tasks, "seed": seed}


def _draw(options: SinusoidOptions, seed: int, set_name: str, n_tasks: int):
    """(amplitude (n,), phase (n,), x (n, points_per_task)) of the set's stream: task t's
    draws never depend on how many tasks are drawn after it."""
    import numpy as np

    rng = np.random.default_rng([seed, _STREAMS[set_name]])
    draws = rng.uniform(size=(n_tasks, 2 + options.points_per_task))  # one row per task, in order
    scale = lambda u, low_high: low_high[0] + (low_high[1] - low_high[0]) * u  # noqa: E731
    return (scale(draws[:, 0], options.amplitude), scale(draws[:, 1], options.phase),
            scale(draws[:, 2:], options.x_range))


def experiment_tasks(options: SinusoidOptions, *, shot: int, n_train_tasks: int, seed: int) -> dict:
    """One experiment's tasks in the layout the learners read (mnk.methods.maml): `points`
    (N, 1) float64 x values; per set `{set}_support` / `{set}_query` indices into them and
    `{set}_support_labels` / `{set}_query_labels` float targets; amplitudes and phases kept
    (`{set}_amplitude`, `{set}_phase`) for the figures; `way` 1 (one output)."""
    import numpy as np

    sizes = {"train": n_train_tasks, "val": options.n_val_tasks, "test": options.n_test_tasks}
    out, points, start = {}, [], 0
    for set_name, n in sizes.items():
        amplitude, phase, x = _draw(options, seed, set_name, n)
        x = np.concatenate([x[:, :shot], x[:, max(options.shot):]], axis=1)  # first `shot` + the queries
        y = amplitude[:, None] * np.sin(x - phase[:, None])
        index = start + np.arange(x.size).reshape(x.shape)
        points.append(x.reshape(-1))
        start += x.size
        out.update({f"{set_name}_support": index[:, :shot], f"{set_name}_query": index[:, shot:],
                    f"{set_name}_support_labels": y[:, :shot], f"{set_name}_query_labels": y[:, shot:],
                    f"{set_name}_amplitude": amplitude, f"{set_name}_phase": phase})
    # The figure's task: test task 0's support, its true curve on a grid of x as queries.
    grid = np.linspace(*options.x_range, CURVE_POINTS)
    out.update(curve_support=out["test_support"][:1], curve_support_labels=out["test_support_labels"][:1],
               curve_query=start + np.arange(CURVE_POINTS)[None],
               curve_query_labels=true_curve(out["test_amplitude"][0], out["test_phase"][0], grid)[None])
    points.append(grid)
    out["points"] = np.concatenate(points)[:, None]
    test_draw = "|".join(f"{v}" for v in (*options.amplitude, *options.phase, *options.x_range, options.query,
                                            options.n_test_tasks, seed))
    out.update(way=np.asarray(1), shot=np.asarray(shot), query=np.asarray(options.query),
               n_train_images=np.asarray(out["train_query"].max() + 1),
               test_tasks_id=np.asarray(_short_hash(test_draw + f"|shot{shot}")))
    return out


def true_curve(amplitude: float, phase: float, x):
    import numpy as np

    return amplitude * np.sin(np.asarray(x) - phase)


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]
