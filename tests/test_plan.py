"""The kernel plan: importable without numpy/torch, cost of the configs, identity hash."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mnk.study import cost, plan
from mnk.study.config import parse_config


def _config(repo, name):
    return yaml.safe_load((repo / "config" / name).read_text())


def test_plan_imports_without_numpy_or_torch(repo):
    code = ("import sys; sys.modules.update(numpy=None, torch=None, scipy=None); "
            f"sys.path.insert(0, {str(repo / 'src')!r}); import mnk.study.plan, mnk.study.config, mnk.study.cost as c; print(len(c.STAGES))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


def _pooled_pairs_directly(config):
    t = config["tasks"]
    total = 0
    for way in t["way"]:
        for shot in t["shot"]:
            per_class, size = shot + t["query"], way * (shot + t["query"])
            n = max(t["n_characters"]) * per_class
            tasks = t["n_val_tasks"] + t["n_test_tasks"]
            total += len(t["seeds"]) * (n * (n + 1) // 2 + tasks * size * n + tasks * size * (size + 1) // 2)
    return total


def test_paper_config_pairs_fall_to_at_most_55_percent(repo):
    config = _config(repo, "paper.yaml")
    lines = cost.cost_lines(parse_config(config))
    total = int(lines[-1].removeprefix("total kernel pairs: "))
    assert lines[-1].startswith("total kernel pairs: ")
    assert total == _pooled_pairs_directly(config)
    # The former plan: one kernel per experiment, 6.6e8 pairs (docs/slurm.md).
    assert total <= 0.55 * 6.6e8 and config["tasks"]["n_val_tasks"] > 0
    assert config["tasks"]["n_test_tasks"] == 200 and len(config["tasks"]["seeds"]) == 3


def test_make_cost_prints_the_total(repo):
    result = subprocess.run(["make", "-s", "cost", "CONFIG=config/test.yaml"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"total kernel pairs: {_pooled_pairs_directly(_config(repo, 'test.yaml'))}"


def test_block_identity_ignores_runtime_settings(repo):
    config = _config(repo, "test.yaml")
    other = {**config, "kernel": {**config["kernel"], "backend": "cuda", "block_size": 7}}
    assert plan.kernel_identity(parse_config(other)) == plan.kernel_identity(parse_config(config))
    for key, value in (("depth", 4), ("image_size", 14), ("pad", 3)):
        changed = {**config, "kernel": {**config["kernel"], key: value}}
        assert plan.short_hash(plan.kernel_identity(parse_config(changed))) != plan.short_hash(plan.kernel_identity(parse_config(config)))
    data = {**config, "data": {**config["data"], "resample": "box"}}
    assert plan.kernel_identity(parse_config(data)) != plan.kernel_identity(parse_config(config))


@pytest.mark.parametrize("edit,message", [
    ({"n_characters": [5, 12]}, "tasks.n_characters 12 is not a multiple of tasks.way 5"),
    ({"query": 20}, r"tasks.shot \+ tasks.query = 1 \+ 20 = 21 exceeds"),
    ({"n_characters": [960]}, "exceeds the 964 training characters"),
    ({"n_val_characters": 2}, r"tasks.n_val_characters 2 is smaller than tasks.way 5"),
])
def test_task_settings_are_checked_before_any_download(repo, edit, message):
    config = _config(repo, "test.yaml")
    config["tasks"].update(edit)
    with pytest.raises(ValueError, match=message):
        plan.pools(parse_config(config))


def test_the_block_count_equals_the_listed_blocks():
    """PoolPlan.n_blocks (what check_plan_size bounds, without listing) against len(blocks)."""
    import random

    rng = random.Random(0)
    for _ in range(300):
        pool = plan.PoolPlan(rng.randint(2, 6), rng.randint(1, 3), 0, rng.randint(1, 5),
                             tuple(sorted(rng.sample(range(2, 60), 2))), rng.randint(0, 20), rng.randint(1, 30),
                             rng.randint(1, 200))
        assert pool.n_blocks == len(pool.blocks), pool
