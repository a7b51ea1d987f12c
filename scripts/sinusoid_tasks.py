"""Rule sinusoid_tasks: one sinusoid experiment's training, validation, test and figure tasks."""

from mnk.infra.io import save_npz
from mnk.infra.runtime import logged_run
from mnk.tasks.sinusoid import SinusoidOptions, experiment_tasks

with logged_run(snakemake.log[0], "sinusoid_tasks") as log:
    options = SinusoidOptions.from_section(snakemake.params.sinusoid)
    experiment = snakemake.params.experiment
    tasks = experiment_tasks(options, shot=experiment["shot"], n_train_tasks=experiment["n_train_tasks"],
                             seed=experiment["seed"])
    log.info("%d train, %d val, %d test tasks of %d support and %d query points (test tasks id %s)",
             len(tasks["train_support"]), len(tasks["val_support"]), len(tasks["test_support"]),
             experiment["shot"], options.query, tasks["test_tasks_id"])
    save_npz(snakemake.output.tasks, **tasks)
    save_npz(snakemake.output.images, points=tasks["points"])
