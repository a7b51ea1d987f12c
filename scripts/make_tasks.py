"""Rule make_tasks: sample one experiment's train/val/test tasks as index arrays.

With tasks.test_tasks, the test tasks are the list's (mnk.tasklist) and their images,
preprocessed like the dataset's, follow the training and validation images."""

from mnk.io import load_npz, save_npz
from mnk.runtime import logged_run
from mnk.tasklist import load_for_dataset, local_images, replace_test_tasks
from mnk.tasks import TaskSpec, make_tasks

with logged_run(snakemake.log[0], "make_tasks") as log:
    spec = TaskSpec(**snakemake.params.spec)
    data = load_npz(snakemake.input.data)
    tasks = make_tasks(data["character"], data["drawer"], data["split"], spec)
    task_list = None
    if snakemake.params.test_tasks:
        task_list = load_for_dataset(snakemake.params.test_tasks["path"], snakemake.params.data, data["images"],
                                     way=spec.way, shot=spec.shot, query=spec.query)
        tasks, _ = replace_test_tasks(tasks, task_list)
        log.info("test tasks: the %d of the list %s; tasks.n_test_tasks is ignored", task_list.n_tasks,
                 task_list.list_id)
    log.info(
        "%d train tasks over %d images of %d characters, %d val tasks (%d characters), %d test tasks (id %s)",
        len(tasks["train_support"]), spec.n_train_images, spec.n_characters,
        len(tasks["val_support"]), spec.n_val_characters, len(tasks["test_support"]), tasks["test_tasks_id"],
    )
    save_npz(snakemake.output.tasks, **tasks)
    save_npz(snakemake.output.images, images=local_images(data["images"], tasks, task_list))
