"""Rule kernel_block: the base kernel on one block of an image pool's pairs."""

import time

import numba

from mnk.infra.io import load_npz
from mnk.infra.runtime import cpu_seconds, logged_run
from mnk.kernels.gram import select_backend
from mnk.kernels.options import KernelOptions
from mnk.kernels.transform import source_images
from mnk.study.blocks import block_identity, compute_block, prepare_images, write_block
from mnk.study.plan import Block, PoolPlan, from_params

with logged_run(snakemake.log[0], "kernel_block") as log:
    numba.set_num_threads(min(snakemake.threads, numba.config.NUMBA_NUM_THREADS))
    pool = from_params(PoolPlan, snakemake.params.pool)
    block = from_params(Block, snakemake.params.block)
    identity = snakemake.params.identity
    options = KernelOptions.from_section(identity["kernel"])
    pool_ids = load_npz(snakemake.input.pool)["image_ids"]
    raw = source_images(load_npz(snakemake.input.images), options.source)  # originals when the data kept them
    if len(raw) != pool.n_images or len(pool_ids) != pool.n_images:
        raise ValueError(f"{snakemake.input.pool}: {len(pool_ids)} images, the plan of {pool.name} has "
                         f"{pool.n_images}; rerun make_pool (--forcerun make_pool)")

    def prepare(positions):
        return prepare_images(raw[slice(*positions)], options, reference=raw[: pool.val_start])

    X = prepare(block.rows)
    Z = X if block.cols == block.rows else prepare(block.cols)
    backend = snakemake.params.backend  # a run setting: it does not change values
    log.info("%s block %s rows %s cols %s, kernel %s", pool.name, block.name, block.rows, block.cols, options)
    if options.type == "cntk":
        log.info("CNTK backend: %s", select_backend(backend))
    start, cpu_start = time.perf_counter(), cpu_seconds()
    values = compute_block(X, Z, block, options, pool.task_size, backend)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    log.info("%d kernel values in %.2f s (%.2f CPU-s)", values.size, seconds, cpu)
    write_block(snakemake.output[0], values, block_identity(pool, block, pool_ids, identity), seconds, cpu)
