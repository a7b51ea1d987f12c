"""Rule make_tasks: sample one experiment's train/val/test tasks as index arrays.

With tasks.test_tasks, the test tasks are the list's (mnk.tasks.tasklist) and their images,
preprocessed like the dataset's, follow the training and validation images."""

from mnk.data.options import DataOptions
from mnk.infra.io import load_npz, save_npz
from mnk.infra.runtime import logged_run
from mnk.tasks.sampling import TaskSpec
from mnk.tasks.tasklist import sample_tasks

with logged_run(snakemake.log[0], "make_tasks") as log:
    spec = TaskSpec(**snakemake.params.spec)
    tasks, images = sample_tasks(load_npz(snakemake.input.data), spec, snakemake.params.test_tasks,
                                 DataOptions.from_section(snakemake.params.data), log)
    log.info(
        "%d train tasks over %d images of %d characters, %d val tasks (%d characters), %d test tasks (id %s)",
        len(tasks["train_support"]), spec.n_train_images, spec.n_characters,
        len(tasks["val_support"]), spec.n_val_characters, len(tasks["test_support"]), tasks["test_tasks_id"],
    )
    save_npz(snakemake.output.tasks, **tasks)
    save_npz(snakemake.output.images, images=images)
