"""Rule kernel_block: the base kernel on one block of image pairs."""

import time

import numba

from mnk import kernels
from mnk.blocks import block_by_name, compute_block, plan_blocks, write_block
from mnk.data import transform_images
from mnk.io import load_npz
from mnk.runtime import logged_run

with logged_run(snakemake.log[0], "kernel_block") as log:
    numba.set_num_threads(min(snakemake.threads, numba.config.NUMBA_NUM_THREADS))
    params = snakemake.params.kernel  # what decides the values; the backend only runs them
    backend = snakemake.params.backend
    tasks = load_npz(snakemake.input.tasks)
    n_train = int(tasks["n_train_images"])
    task_size = tasks["test_support"].shape[1] + tasks["test_query"].shape[1]
    blocks = plan_blocks(n_train, len(tasks["test_support"]), task_size, snakemake.params.block_size)
    block = block_by_name(blocks, snakemake.wildcards.block)
    raw = load_npz(snakemake.input.images)["images"]
    images = transform_images(raw, pad=params["pad"], standardize=params["standardize"], reference=raw[:n_train])
    log.info("block %s rows %s cols %s, kernel %s", block.name, block.rows, block.cols, params)
    if params["type"] == "cntk":
        log.info("CNTK backend: %s", kernels.select_backend(backend))
    start = time.perf_counter()
    values = compute_block(images, block, {**params, "backend": backend}, task_size)
    seconds = time.perf_counter() - start
    log.info("%d kernel values in %.2f s", values.size, seconds)
    write_block(snakemake.output[0], values, block, params, seconds)
