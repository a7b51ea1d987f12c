"""Kernel blocks of an image pool: each needed pair once, gathered sub-kernels equal a direct
computation, foreign/stale/missing blocks and missing entries are refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnk.study.blocks import (block_identity, check_computed, check_tasks_match_pool, compute_block, gather, prepare_images,
                        write_block)
from mnk.infra.io import load_npz, save_npz
from mnk.kernels.gram import cntk_gram
from mnk.kernels.options import KernelOptions
from mnk.kernels.transform import transform_images
from mnk.study import plan as study_plan
from mnk.study.config import parse_config
from mnk.study.plan import PoolPlan
from mnk.infra.runtime import resolve_device
from mnk.tasks.sampling import TaskSpec, make_pool, make_tasks

WAY, SHOT, QUERY, N_VAL, N_TEST = 2, 1, 2, 2, 3
CHARS = (2, 4, 6)
CONFIG = {"data": {"image_size": 8, "resample": "lanczos"},
          "kernel": {"type": "cntk", "image_size": 6, "resample": "bicubic", "source": "preprocessed", "depth": 3,
                     "gap": False, "fix": False, "pad": 1, "standardize": True, "block_size": 7, "backend": "cpu"}}


def kernel_identity(config):
    """The identity the workflow gives blocks, for the tiny config with these data and kernel."""
    study = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "test.yaml").read_text())
    study["data"].update(config["data"])
    study["kernel"].update(config["kernel"])
    for learner in ("maml", "imaml"):  # no network fits these tiny images; the kernel needs none
        study[learner]["enabled"] = False
    return study_plan.kernel_identity(parse_config(study))


@pytest.fixture(scope="module")
def data():
    """A small Omniglot-like set: 40 characters x 20 drawers, 30 on the training side."""
    rng = np.random.default_rng(0)
    character = np.repeat(np.arange(40), 20).astype(np.int16)
    return {"character": character, "drawer": np.tile(np.arange(1, 21), 40).astype(np.int8),
            "split": (character >= 30).astype(np.int8), "images": rng.random((800, 8, 8)).astype(np.float32)}


def _spec(n_characters, seed=0):
    return TaskSpec(way=WAY, shot=SHOT, query=QUERY, n_characters=n_characters, seed=seed, n_test_tasks=N_TEST,
                    n_val_tasks=N_VAL, n_val_characters=4)


def _pool(seed=0):
    return PoolPlan(WAY, SHOT, seed, QUERY, CHARS, N_VAL, N_TEST, block_size=7)


def _write_blocks(folder, data, seed=0, config=CONFIG, names=None):
    """What the kernel_block jobs do, for every block of the pool (or the named ones)."""
    plan = _pool(seed)
    ids = make_pool(data["character"], data["drawer"], data["split"], _spec(max(CHARS), seed))["image_ids"]
    raw = data["images"][ids]
    options = KernelOptions.from_section(kernel_identity(config)["kernel"])

    def prepare(positions):
        return prepare_images(raw[slice(*positions)], options, reference=raw[: plan.val_start])

    paths = []
    for block in plan.blocks:
        if names is None or block.name in names:
            values = compute_block(prepare(block.rows), prepare(block.cols), block, options, plan.task_size, "cpu")
            paths.append(folder / f"{block.name}.npz")
            write_block(paths[-1], values, block_identity(plan, block, ids, kernel_identity(config)), seconds=1.0,
                        cpu_seconds=2.0)
    return plan, ids, paths


@pytest.fixture(scope="module")
def pool_blocks(tmp_path_factory, data):
    return _write_blocks(tmp_path_factory.mktemp("blocks"), data)


def _coverage(blocks, n, task_size):
    """How often each unordered pair (row >= col) of pool positions is computed."""
    covered = np.zeros((n, n), dtype=int)
    for b in blocks:
        (r0, r1), (c0, c1) = b.rows, b.cols
        if b.kind == "task":
            for start in range(r0, r1, task_size):
                covered[start:start + task_size, start:start + task_size] += np.tril(np.ones((task_size, task_size), int))
        else:
            ones = np.ones((r1 - r0, c1 - c0), dtype=int)
            covered[r0:r1, c0:c1] += np.tril(ones) if b.rows == b.cols else ones
    return covered


def test_each_needed_pair_is_computed_once_across_experiments():
    plan = _pool()
    size = WAY * (SHOT + QUERY)
    n_train, n_other = max(CHARS) * (SHOT + QUERY), (N_VAL + N_TEST) * size
    n = n_train + n_other
    assert plan.n_images == n and plan.val_start == n_train
    covered = _coverage(plan.blocks, n, size)
    expected = np.zeros((n, n), dtype=int)
    expected[:n_train, :n_train] = np.tril(np.ones((n_train, n_train), int))
    expected[n_train:, :n_train] = 1
    for start in range(n_train, n, size):
        expected[start:start + size, start:start + size] = np.tril(np.ones((size, size), int))
    np.testing.assert_array_equal(covered, expected)
    direct = n_train * (n_train + 1) // 2 + n_other * n_train + (N_VAL + N_TEST) * size * (size + 1) // 2
    assert sum(b.n_pairs(size) for b in plan.blocks) == direct == sum(plan.pairs_by_stage().values())
    assert plan.pairs_by_stage()["val x train"] == N_VAL * size * n_train
    # Each experiment's blocks cover its prefix of the training images, and no block is
    # read that holds none of its entries.
    for chars in CHARS:
        m = chars * (SHOT + QUERY)
        blocks = plan.experiment_blocks(chars)
        mine = _coverage(blocks, n, size)
        assert (mine[:m, :m] == expected[:m, :m]).all() and (mine[n_train:, :m] == 1).all()
        assert all(b.kind == "task" or b.cols[0] < m for b in blocks)
    assert len({b.name for b in plan.blocks}) == len(plan.blocks)
    with pytest.raises(KeyError, match="no kernel block named 'train-9-9' in pool-2way1shot-seed0"):
        plan.block("train-9-9")


def _expected_mask(tasks):
    n_local, n = len(tasks["image_ids"]), int(tasks["n_train_images"])
    mask = np.zeros((n_local, n_local), dtype=bool)
    mask[:n, :n] = mask[n:, :n] = mask[:n, n:] = True
    for name in ("val", "test"):
        for ids in np.concatenate([tasks[f"{name}_support"], tasks[f"{name}_query"]], axis=1):
            mask[np.ix_(ids, ids)] = True
    return mask


def test_gathered_sub_kernels_equal_a_direct_computation(data, pool_blocks):
    plan, pool_ids, paths = pool_blocks
    reference = data["images"][pool_ids[: plan.val_start]]
    for chars in CHARS:
        tasks = make_tasks(data["character"], data["drawer"], data["split"], _spec(chars))
        check_tasks_match_pool(plan, chars, tasks["image_ids"], pool_ids, "tasks.npz")
        K, computed, seconds, cpu = gather(plan, chars, paths, pool_ids, kernel_identity(CONFIG))
        check_computed(computed, tasks, f"{chars} characters")
        images = transform_images(data["images"][tasks["image_ids"]], image_size=6, resample="bicubic", pad=1,
                                  standardize=True, reference=reference)
        direct = cntk_gram(images, depth=3, gap=False, fix=False, backend="cpu")
        np.testing.assert_array_equal(computed, _expected_mask(tasks))
        np.testing.assert_allclose(K[computed], direct[computed], rtol=1e-12)
        assert (K[~computed] == 0).all()
        assert len(seconds) == len(plan.experiment_blocks(chars)) and 0 < seconds.sum() <= len(seconds)
        np.testing.assert_array_equal(cpu, 2 * seconds)  # the same share of each block's CPU time


def test_foreign_stale_and_misplaced_blocks_are_refused_by_name(tmp_path, data, pool_blocks):
    plan, pool_ids, paths = pool_blocks
    identity = kernel_identity(CONFIG)
    by_name = {p.stem: p for p in paths}
    # Foreign: the same block of another seed's pool (other images).
    _, _, (foreign,) = _write_blocks(tmp_path, data, seed=1, names={"task-0-0"})
    with pytest.raises(ValueError, match=rf"{foreign} is not block task-0-0 .*row_images.*foreign or stale"):
        gather(plan, 2, [foreign if p.stem == "task-0-0" else p for p in paths], pool_ids, identity)
    # Stale: computed with other kernel options.
    stale_config = {**CONFIG, "kernel": {**CONFIG["kernel"], "depth": 4}}
    (tmp_path / "stale").mkdir()
    _, _, (stale,) = _write_blocks(tmp_path / "stale", data, config=stale_config, names={"train-0-0"})
    with pytest.raises(ValueError, match=rf"{stale}.*kernel '"):
        gather(plan, 2, [stale if p.stem == "train-0-0" else p for p in paths], pool_ids, identity)
    # Misplaced: another block's file under this block's name.
    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / "cross-1-0.npz"
    shutil.copyfile(by_name["cross-0-0"], moved)
    with pytest.raises(ValueError, match=r"cross-1-0.npz is not block cross-1-0 .*block 'cross-0-0'"):
        gather(plan, 2, [moved if p.stem == "cross-1-0" else p for p in paths], pool_ids, identity)
    # Missing and corrupt.
    with pytest.raises(ValueError, match="kernel block task-1-0 of pool-2way1shot-seed0 is missing"):
        gather(plan, 2, [p for p in paths if p.stem != "task-1-0"], pool_ids, identity)
    corrupt = tmp_path / "moved" / "task-1-0.npz"
    corrupt.write_bytes(by_name["task-1-0"].read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{corrupt} is unreadable"):
        gather(plan, 2, [corrupt if p.stem == "task-1-0" else p for p in paths], pool_ids, identity)
    tampered = load_npz(by_name["task-2-0"])
    tampered["values"] = np.full_like(tampered["values"], np.inf)
    save_npz(tmp_path / "moved" / "task-2-0.npz", **tampered)
    with pytest.raises(FloatingPointError, match="task-2-0.npz contains NaN or inf"):
        gather(plan, 2, [tmp_path / "moved" / "task-2-0.npz" if p.stem == "task-2-0" else p for p in paths],
               pool_ids, identity)


def test_tasks_of_another_pool_and_missing_entries_are_refused(data, pool_blocks):
    plan, pool_ids, paths = pool_blocks
    other = make_tasks(data["character"], data["drawer"], data["split"], _spec(4, seed=1))
    with pytest.raises(ValueError, match="t.npz: the experiment's images are not those of pool-2way1shot-seed0"):
        check_tasks_match_pool(plan, 4, other["image_ids"], pool_ids, "t.npz")
    tasks = make_tasks(data["character"], data["drawer"], data["split"], _spec(4))
    _, computed, _, _ = gather(plan, 4, paths, pool_ids, kernel_identity(CONFIG))
    ids = np.r_[tasks["test_support"][1], tasks["test_query"][1]]
    computed[ids[0], ids[-1]] = False
    with pytest.raises(ValueError, match="exp: 1 kernel entries within test task 1 are not computed"):
        check_computed(computed, tasks, "exp")
    computed[:] = True
    computed[3, 2] = False
    with pytest.raises(ValueError, match="1 kernel entries training x training"):
        check_computed(computed, tasks, "exp")


def test_nan_block_is_refused_and_not_written(tmp_path):
    values = np.ones((4, 4))
    values[2, 1] = np.nan
    with pytest.raises(FloatingPointError, match=r"kernel block train-0-0 has 1 non-finite values \(first at \(2, 1\)\)"):
        write_block(tmp_path / "b.npz", values, {"block": "train-0-0"})
    assert list(tmp_path.iterdir()) == []


def test_missing_gpu_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="device 'cuda' was requested but torch sees no CUDA GPU"):
        resolve_device("cuda")
