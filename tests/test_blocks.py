"""Kernel blocks: exactly the needed pairs, assembly, and refusal of bad blocks."""

from __future__ import annotations

import numpy as np
import pytest

from mnk.blocks import assemble, block_by_name, compute_block, plan_blocks, write_block
from mnk.io import load_npz, save_npz
from mnk.runtime import resolve_device

PARAMS = {"type": "ntk", "depth": 3}


def _coverage(blocks, n):
    """How often each unordered pair (row >= col) is computed (diagonal blocks are
    symmetric Gram matrices: their lower triangle counts)."""
    covered = np.zeros((n, n), dtype=int)
    for b in blocks:
        (r0, r1), (c0, c1) = b.rows, b.cols
        ones = np.ones((r1 - r0, c1 - c0), dtype=int)
        covered[r0:r1, c0:c1] += np.tril(ones) if b.rows == b.cols else ones
    return covered


def test_plan_covers_each_needed_pair_once():
    n_train, n_tasks, task_size = 23, 5, 6
    blocks = plan_blocks(n_train, n_tasks, task_size, block_size=10)
    n = n_train + n_tasks * task_size
    covered = _coverage([b for b in blocks if b.kind != "test"], n)
    lower = np.tril(np.ones((n_train, n_train), dtype=int))
    np.testing.assert_array_equal(covered[:n_train, :n_train], lower)
    np.testing.assert_array_equal(covered[n_train:, :n_train], 1)  # test x train
    assert covered[:n_train, n_train:].sum() == 0 and covered[n_train:, n_train:].sum() == 0
    tests = [b for b in blocks if b.kind == "test"]
    # Test blocks hold whole tasks, and every test image is in exactly one of them.
    assert all((b.rows[1] - b.rows[0]) % task_size == 0 and (b.rows[0] - n_train) % task_size == 0 for b in tests)
    assert sum(b.rows[1] - b.rows[0] for b in tests) == n_tasks * task_size
    assert len({b.name for b in blocks}) == len(blocks)
    assert block_by_name(blocks, "cross-1-2").rows == (n_train + 6, n_train + 12)
    with pytest.raises(KeyError, match="no kernel block named 'train-9-9'"):
        block_by_name(blocks, "train-9-9")
    with pytest.raises(ValueError, match="block_size"):
        plan_blocks(10, 1, 5, 0)


def test_blocks_assemble_to_the_one_shot_gram(tmp_path):
    from mnk.kernels import ntk_gram

    rng = np.random.default_rng(0)
    n_train, n_tasks, task_size = 11, 3, 4
    images = rng.normal(size=(n_train + n_tasks * task_size, 5, 5))
    blocks = plan_blocks(n_train, n_tasks, task_size, block_size=4)
    paths = []
    for block in blocks:
        path = tmp_path / f"{block.name}.npz"
        write_block(path, compute_block(images, block, PARAMS, task_size), block, PARAMS, seconds=0.5)
        paths.append(path)
    K, computed, seconds = assemble(paths, len(images), PARAMS)
    full = ntk_gram(images, depth=3)
    np.testing.assert_allclose(K[computed], full[computed], rtol=1e-13)
    assert (K[~computed] == 0).all() and (seconds == 0.5).all()
    assert computed[:n_train].all() and computed[:, :n_train].all()
    assert not computed[n_train, n_train + task_size]  # different test tasks: not needed


def test_nan_block_is_refused_and_not_written(tmp_path):
    block = plan_blocks(4, 1, 2, 4)[0]
    values = np.ones((4, 4))
    values[2, 1] = np.nan
    with pytest.raises(FloatingPointError, match=r"kernel block train-0-0 has 1 non-finite values \(first at \(2, 1\)\)"):
        write_block(tmp_path / "b.npz", values, block, PARAMS)
    assert list(tmp_path.iterdir()) == []


def test_assemble_refuses_blocks_of_other_kernel_or_with_nan(tmp_path):
    block = plan_blocks(4, 1, 2, 4)[0]
    write_block(tmp_path / "b.npz", np.eye(4), block, PARAMS)
    with pytest.raises(ValueError, match="was computed with .*\"depth\": 3.*expected .*\"depth\": 4"):
        assemble([tmp_path / "b.npz"], 6, {"type": "ntk", "depth": 4})
    tampered = load_npz(tmp_path / "b.npz")
    tampered["values"] = np.full((4, 4), np.inf)
    save_npz(tmp_path / "c.npz", **tampered)
    with pytest.raises(FloatingPointError, match="c.npz contains NaN or inf"):
        assemble([tmp_path / "c.npz"], 6, PARAMS)


def test_unknown_kernel_type_is_named():
    block = plan_blocks(2, 1, 2, 2)[0]
    with pytest.raises(ValueError, match="kernel.type must be 'cntk' or 'ntk', got 'rbf'"):
        compute_block(np.zeros((4, 3, 3)), block, {"type": "rbf"}, 2)


def test_missing_gpu_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="device 'cuda' was requested but torch sees no CUDA GPU"):
        resolve_device("cuda")
