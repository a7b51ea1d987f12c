"""Rule make_pool: the image pool of one (way, shot, seed), whose kernel the experiments share:
the largest experiment's image list (mnk.tasks.sampling.pool_of).

With tasks.test_tasks, the pool's test tasks are the list's (mnk.tasks.tasklist), their images
preprocessed like the dataset's. When the kernel resamples the original images
(kernel.source), the pool's images file holds them too ("originals")."""

from mnk.data.options import DataOptions
from mnk.infra.io import load_npz, save_npz
from mnk.infra.runtime import logged_run
from mnk.tasks.sampling import TaskSpec, pool_of
from mnk.tasks.tasklist import local_images, sample_tasks

with logged_run(snakemake.log[0], "make_pool") as log:
    spec = TaskSpec(**snakemake.params.spec)
    tasks, images = sample_tasks(load_npz(snakemake.input.data), spec, snakemake.params.test_tasks,
                                 DataOptions.from_section(snakemake.params.data), log)
    pool = pool_of(tasks)
    log.info("%d images: %d training (%d characters), %d validation, the rest test (test tasks id %s)",
             len(pool["image_ids"]), pool["n_train_images"], spec.n_characters, pool["n_val_images"],
             pool["test_tasks_id"])
    kept = {}
    if snakemake.input.originals:  # an empty input when the kernel resamples the data stage's images
        kept["originals"] = local_images(load_npz(snakemake.input.originals)["originals"], tasks)
        log.info("with their original images %s", kept["originals"].shape[1:])
    save_npz(snakemake.output.pool, **pool)
    save_npz(snakemake.output.images, images=images, **kept)
