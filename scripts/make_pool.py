"""Rule make_pool: the image pool of one (way, shot, seed), whose kernel the experiments share.

With tasks.test_tasks, the pool's test tasks are the list's (mnk.tasklist), their images
preprocessed like the dataset's."""

from mnk.io import load_npz, save_npz
from mnk.runtime import logged_run
from mnk.tasklist import load_for_dataset, local_images, replace_test_tasks
from mnk.tasks import TaskSpec, make_pool

with logged_run(snakemake.log[0], "make_pool") as log:
    spec = TaskSpec(**snakemake.params.spec)
    data = load_npz(snakemake.input.data)
    pool = make_pool(data["character"], data["drawer"], data["split"], spec)
    task_list = None
    if snakemake.params.test_tasks:
        task_list = load_for_dataset(snakemake.params.test_tasks["path"], snakemake.params.data, data["images"],
                                     way=spec.way, shot=spec.shot, query=spec.query)
        replaced, _ = replace_test_tasks(pool, task_list)
        pool = {key: replaced[key] for key in (*pool, "test_tasks_list")}
        log.info("test tasks: the %d of the list %s; tasks.n_test_tasks is ignored", task_list.n_tasks,
                 task_list.list_id)
    log.info("%d images: %d training (%d characters), %d validation, the rest test (test tasks id %s)",
             len(pool["image_ids"]), pool["n_train_images"], spec.n_characters, pool["n_val_images"],
             pool["test_tasks_id"])
    save_npz(snakemake.output.pool, **pool)
    save_npz(snakemake.output.images, images=local_images(data["images"], pool, task_list))
