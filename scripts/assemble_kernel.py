"""Rule assemble_kernel: an experiment's sub-kernel gathered from its image pool's blocks."""

from mnk.infra.io import load_npz, save_npz
from mnk.infra.runtime import logged_run
from mnk.study.blocks import check_computed, check_tasks_match_pool, gather
from mnk.study.plan import PoolPlan, from_params

with logged_run(snakemake.log[0], "assemble_kernel") as log:
    pool = from_params(PoolPlan, snakemake.params.pool)
    n_characters = snakemake.params.n_characters
    tasks = load_npz(snakemake.input.tasks)
    pool_ids = load_npz(snakemake.input.pool)["image_ids"]
    check_tasks_match_pool(pool, n_characters, tasks["image_ids"], pool_ids, snakemake.input.tasks)
    K, computed, seconds, cpu = gather(pool, n_characters, snakemake.input.blocks, pool_ids, snakemake.params.identity)
    check_computed(computed, tasks, snakemake.wildcards.exp)
    log.info("kernel %s from %d blocks of %s, %.1f%% of entries computed", K.shape, len(seconds), pool.name,
             100 * computed.mean())
    save_npz(snakemake.output[0], K=K, computed=computed, block_seconds=seconds, block_cpu_seconds=cpu)
