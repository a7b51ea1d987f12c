"""Base-kernel blocks: which image pairs an experiment needs, split into resumable jobs.

An experiment's local images are its training images [0, n_train) followed by its test
tasks' images, `task_size` consecutive images per test task. MNK regression needs the
kernel only between training x training images (lower triangle), test x training images,
and images within the same test task; nothing else is computed. Each block is one
Snakemake job, written atomically with its index ranges and kernel parameters, so an
interrupted run recomputes only the missing blocks.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

# numpy is imported inside the functions that compute: the Snakefile plans blocks with
# this module from Snakemake's own environment, which need not have numpy.

log = logging.getLogger("mnk.blocks")
KINDS = ("train", "cross", "test")


@dataclass(frozen=True)
class Block:
    kind: str  # "train": train x train, "cross": test x train, "test": within test tasks
    i: int
    j: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.i}-{self.j}"


def plan_blocks(n_train: int, n_test_tasks: int, task_size: int, block_size: int) -> list[Block]:
    """All blocks of one experiment, in a deterministic order."""
    if block_size < 1:
        raise ValueError(f"kernel.block_size must be >= 1, got {block_size}")
    blocks = []
    train_chunks = _chunks(0, n_train, block_size)
    for i, rows in enumerate(train_chunks):
        for j, cols in enumerate(train_chunks[: i + 1]):
            blocks.append(Block("train", i, j, rows, cols))
    n_test = n_test_tasks * task_size
    test_chunks = _chunks(n_train, n_train + n_test, max(task_size, block_size // task_size * task_size))
    for i, rows in enumerate(test_chunks):
        for j, cols in enumerate(train_chunks):
            blocks.append(Block("cross", i, j, rows, cols))
        blocks.append(Block("test", i, 0, rows, rows))
    return blocks


def block_by_name(blocks: list[Block], name: str) -> Block:
    for block in blocks:
        if block.name == name:
            return block
    raise KeyError(f"no kernel block named {name!r} in this experiment")


def _chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    count = math.ceil((stop - start) / size)
    return [(start + k * size, min(stop, start + (k + 1) * size)) for k in range(count)]


def base_kernel(X, Z, params: dict):
    """The configured base kernel (cntk or ntk) between image sets X and Z."""
    from mnk import kernels

    if params["type"] == "cntk":
        return kernels.cntk_gram(X, Z, depth=params["depth"], gap=params["gap"], fix=params["fix"],
                                 backend=params.get("backend", "auto"))
    if params["type"] == "ntk":
        return kernels.ntk_gram(X, Z, depth=params["depth"])
    raise ValueError(f"kernel.type must be 'cntk' or 'ntk', got {params['type']!r}")


def compute_block(images, block: Block, params: dict, task_size: int):
    """The kernel values of one block; within-test-task blocks are (tasks, size, size)."""
    import numpy as np

    r0, r1 = block.rows
    c0, c1 = block.cols
    if block.kind == "test":
        tasks = images[r0:r1].reshape(-1, task_size, *images.shape[1:])
        return np.stack([base_kernel(task, None, params) for task in tasks])
    if block.kind == "train" and block.i == block.j:
        return base_kernel(images[r0:r1], None, params)
    return base_kernel(images[r0:r1], images[c0:c1], params)


def write_block(path, values, block: Block, params: dict, seconds: float = 0.0) -> None:
    import numpy as np

    from mnk.io import save_npz

    bad = ~np.isfinite(values)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise FloatingPointError(
            f"kernel block {block.name} has {int(bad.sum())} non-finite values (first at {tuple(int(i) for i in where)}); "
            "not writing it"
        )
    save_npz(path, values=values, kind=np.array(block.kind), rows=np.array(block.rows), cols=np.array(block.cols),
             params=np.array(json.dumps(params, sort_keys=True)), seconds=np.float64(seconds))


def assemble(paths: list, n_images: int, params: dict):
    """Blocks -> (K, computed, seconds): K and its mask are (n_images, n_images), entries
    not needed stay 0; seconds holds each block's compute time."""
    import numpy as np

    from mnk.io import load_npz

    K = np.zeros((n_images, n_images))
    computed = np.zeros((n_images, n_images), dtype=bool)
    expected = json.dumps(params, sort_keys=True)
    seconds = np.zeros(len(paths))
    for index, path in enumerate(paths):
        block = load_npz(path)
        if str(block["params"]) != expected:
            raise ValueError(f"kernel block {path} was computed with {block['params']}, expected {expected}")
        values = block["values"]
        seconds[index] = block["seconds"]
        if not np.isfinite(values).all():
            raise FloatingPointError(f"kernel block {path} contains NaN or inf values")
        (r0, r1), (c0, c1) = block["rows"], block["cols"]
        if str(block["kind"]) == "test":
            size = values.shape[1]
            for t, start in enumerate(range(r0, r1, size)):
                K[start:start + size, start:start + size] = values[t]
                computed[start:start + size, start:start + size] = True
            continue
        K[r0:r1, c0:c1] = values
        K[c0:c1, r0:r1] = values.T
        computed[r0:r1, c0:c1] = computed[c0:c1, r0:r1] = True
    return K, computed, seconds
