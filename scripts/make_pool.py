"""Rule make_pool: the image pool of one (way, shot, seed), whose kernel the experiments share.

With tasks.test_tasks, the pool's test tasks are the list's (mnk.tasklist), their images
preprocessed like the dataset's."""

from mnk.io import load_npz, save_npz
from mnk.runtime import logged_run
from mnk.tasklist import local_images, with_listed_test_tasks
from mnk.tasks import TaskSpec, make_pool

with logged_run(snakemake.log[0], "make_pool") as log:
    spec = TaskSpec(**snakemake.params.spec)
    data = load_npz(snakemake.input.data)
    pool = make_pool(data["character"], data["drawer"], data["split"], spec)
    listed, task_list = with_listed_test_tasks(pool, snakemake.params.test_tasks, snakemake.params.data,
                                               data["images"], spec, log)
    pool = {key: listed[key] for key in (*pool, "test_tasks_list")} if task_list else pool
    log.info("%d images: %d training (%d characters), %d validation, the rest test (test tasks id %s)",
             len(pool["image_ids"]), pool["n_train_images"], spec.n_characters, pool["n_val_images"],
             pool["test_tasks_id"])
    save_npz(snakemake.output.pool, **pool)
    save_npz(snakemake.output.images, images=local_images(data["images"], pool, task_list))
