"""Kernel blocks of an image pool: compute one, write it with its identity, gather an
experiment's sub-kernel from verified blocks.

The plan (which pairs, which blocks) is `mnk.study.plan`; a block job receives its `Block`.
Every block file records what it is: the pool, the block's name and coordinates, hashes of
the global image ids of its rows, its columns and the standardisation reference, and the
hash of the kernel options that decide its values (`mnk.study.plan.kernel_identity`). The gather
compares each block with what the plan and the pool file say it must be and refuses a
foreign or stale one by name; it then checks that every entry the solve reads is computed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mnk.kernels.options import KernelOptions
from mnk.study.plan import Block, PoolPlan, short_hash
from mnk.tasks.sampling import image_ids_hash

log = logging.getLogger("mnk.study.blocks")
RECOVER = "delete it (or run snakemake with --forcerun kernel_block) and rerun"


def prepare_images(images, options: KernelOptions, reference):
    """Pool images (mnk.kernels.transform.source_images) as the kernel sees them (resized with
    the kernel's filter, padded, standardised by `reference`)."""
    from mnk.kernels.transform import transform_images

    return transform_images(images, image_size=options.image_size, resample=options.resample, pad=options.pad,
                            standardize=options.standardize, reference=reference)


def base_kernel(X, Z, options: KernelOptions, backend: str = "auto"):
    """The configured base kernel (cntk or ntk) between prepared image sets X and Z (Z=None: X)."""
    from mnk.kernels.gram import cntk_gram, ntk_gram

    if options.type == "cntk":
        return cntk_gram(X, Z, depth=options.depth, gap=options.gap, fix=options.fix,
                          backend=backend, dtype=options.dtype)
    return ntk_gram(X, Z, depth=options.depth)


def compute_block(X, Z, block: Block, options: KernelOptions, task_size: int, backend: str = "auto"):
    """Kernel values of a block, X its row images, Z its column images (prepared for the
    kernel). Within-task blocks give (tasks, task_size, task_size)."""
    if block.kind == "task":
        tasks = np.asarray(X).reshape(-1, task_size, *np.shape(X)[1:])
        return np.stack([base_kernel(task, None, options, backend) for task in tasks])
    return base_kernel(X, None if block.rows == block.cols else Z, options, backend)


def block_identity(pool: PoolPlan, block: Block, pool_ids, identity: dict) -> dict:
    """What a block file must say it is (identity: `mnk.study.plan.kernel_identity(study)`)."""
    (r0, r1), (c0, c1) = block.rows, block.cols
    return {"pool": pool.name, "block": block.name, "rows": list(block.rows), "cols": list(block.cols),
            "row_images": image_ids_hash(pool_ids[r0:r1]), "col_images": image_ids_hash(pool_ids[c0:c1]),
            "reference_images": image_ids_hash(pool_ids[: pool.val_start]), "kernel": short_hash(identity)}


def write_block(path, values, identity: dict, seconds: float = 0.0, cpu_seconds: float = 0.0) -> None:
    from mnk.infra.io import save_npz

    bad = ~np.isfinite(values)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise FloatingPointError(
            f"kernel block {identity['block']} has {int(bad.sum())} non-finite values (first at "
            f"{tuple(int(i) for i in where)}); not writing it"
        )
    save_npz(path, values=values, identity=np.array(json.dumps(identity, sort_keys=True)), seconds=np.float64(seconds),
             cpu_seconds=np.float64(cpu_seconds))


def read_block(path, expected: dict) -> dict:
    """A block file, checked against the identity the plan expects; refused by name."""
    from mnk.infra.io import load_npz

    try:
        block = load_npz(path)
        found = json.loads(str(block["identity"]))
    except Exception as exc:
        raise ValueError(f"kernel block {path} is unreadable or has no identity ({type(exc).__name__}: {exc}); "
                         f"{RECOVER}") from exc
    wrong = [key for key in expected if found.get(key) != expected[key]]
    if wrong:
        detail = "; ".join(f"{key} {found.get(key)!r}, expected {expected[key]!r}" for key in wrong)
        raise ValueError(f"kernel block {path} is not block {expected['block']} of {expected['pool']} with these "
                         f"images and kernel options ({detail}): foreign or stale; {RECOVER}")
    if not np.isfinite(block["values"]).all():
        raise FloatingPointError(f"kernel block {path} contains NaN or inf values; {RECOVER}")
    return block


def check_tasks_match_pool(pool: PoolPlan, n_characters: int, exp_ids, pool_ids, where: str) -> None:
    for local, start, length in pool.local_to_pool(n_characters):
        if not np.array_equal(exp_ids[local:local + length], pool_ids[start:start + length]):
            raise ValueError(f"{where}: the experiment's images are not those of {pool.name} at positions "
                             f"[{start}, {start + length}); rerun make_tasks and make_pool (--forcerun)")


def _local_runs(pool: PoolPlan, n_train: int, lo: int, hi: int):
    """Part [p0, p1) of pool positions [lo, hi) that the experiment has, and its local start."""
    if lo < pool.val_start:
        return lo, min(hi, n_train), lo
    return lo, hi, lo - pool.val_start + n_train


def _place(K, computed, pool, n_train, block: Block, values) -> float:
    """Copy the experiment's part of a block into K; returns the fraction of it used."""
    r0, r1, lr = _local_runs(pool, n_train, *block.rows)
    c0, c1, lc = _local_runs(pool, n_train, *block.cols)
    if r1 <= r0 or c1 <= c0:
        return 0.0
    if block.kind == "task":
        size = pool.task_size
        for t, start in enumerate(range(lr, lr + r1 - r0, size)):
            K[start:start + size, start:start + size] = values[t]
            computed[start:start + size, start:start + size] = True
        return 1.0
    part = values[r0 - block.rows[0]:r1 - block.rows[0], c0 - block.cols[0]:c1 - block.cols[0]]
    rows, cols = slice(lr, lr + r1 - r0), slice(lc, lc + c1 - c0)
    K[rows, cols], K[cols, rows] = part, part.T
    computed[rows, cols] = computed[cols, rows] = True
    return part.size / values.size


def gather(pool: PoolPlan, n_characters: int, block_paths, pool_ids, identity: dict):
    """An experiment's kernel over its local images from the pool's blocks:
    (K, computed, block_seconds, block_cpu_seconds) in the format solve_mnk reads: each block's
    compute time (wall, CPU) times the fraction of its entries this experiment uses."""
    paths = {Path(p).stem: p for p in block_paths}
    n_train = pool.n_train_images(n_characters)
    n_local = n_train + pool.n_images - pool.val_start
    K = np.zeros((n_local, n_local))
    computed = np.zeros((n_local, n_local), dtype=bool)
    seconds, cpu = [], []
    for block in pool.experiment_blocks(n_characters):
        if block.name not in paths:
            raise ValueError(f"kernel block {block.name} of {pool.name} is missing from the inputs")
        values = read_block(paths[block.name], block_identity(pool, block, pool_ids, identity))
        used = _place(K, computed, pool, n_train, block, values["values"])
        seconds.append(float(values["seconds"]) * used)
        cpu.append(float(values["cpu_seconds"]) * used if "cpu_seconds" in values else np.nan)
    return K, computed, np.asarray(seconds), np.asarray(cpu)


def check_computed(computed, tasks: dict, where: str) -> None:
    """Every entry the solve reads is computed: training x training, (val, test) x training,
    within each validation and test task. Raises naming the first missing kind."""
    n = int(tasks["n_train_images"])
    checks = [("training x training", np.s_[:n, :n]), ("validation/test x training", np.s_[n:, :n])]
    for name in ("val", "test"):
        for t, ids in enumerate(np.concatenate([tasks[f"{name}_support"], tasks[f"{name}_query"]], axis=1)):
            checks.append((f"within {name} task {t}", np.ix_(ids, ids)))
    for what, index in checks:
        missing = int((~computed[index]).sum())
        if missing:
            raise ValueError(f"{where}: {missing} kernel entries {what} are not computed; the kernel blocks do not "
                             "cover this experiment (rerun its assemble_kernel with --forcerun)")
