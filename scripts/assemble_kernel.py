"""Rule assemble_kernel: kernel blocks -> one base-kernel matrix over the experiment's images."""

from mnk.blocks import assemble
from mnk.io import load_npz, save_npz
from mnk.runtime import logged_run

with logged_run(snakemake.log[0], "assemble_kernel") as log:
    tasks = load_npz(snakemake.input.tasks)
    n_images = len(tasks["image_ids"])
    K, computed, seconds = assemble(snakemake.input.blocks, n_images, snakemake.params.kernel)
    log.info("kernel %s, %.1f%% of entries computed", K.shape, 100 * computed.mean())
    save_npz(snakemake.output[0], K=K, computed=computed, block_seconds=seconds)
