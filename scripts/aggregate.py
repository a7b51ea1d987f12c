"""Rule aggregate: every metrics file -> summary.csv, per_task.csv, paired.csv, learning_curves.csv
and mnk_grid.csv."""

from mnk.infra.io import atomic_path
from mnk.infra.runtime import logged_run
from mnk.study.results import learning_curves, mnk_grid_table, paired_differences, per_task_table, summarise

with logged_run(snakemake.log[0], "aggregate") as log:
    out = snakemake.output
    summary = summarise(snakemake.input.metrics, snakemake.params.config_hash, snakemake.params.test_tasks)
    per_task, lacking = per_task_table(snakemake.input.metrics)
    for path in lacking:
        log.warning("%s has no per_task_accuracy: left out of per_task.csv and paired.csv", path)
    paired = paired_differences(per_task)
    log.info("\n%s", summary[["method", "n_characters", "seed", "accuracy", "test_tasks_id"]].to_string())
    log.info("paired differences:\n%s", paired.to_string())
    curves = learning_curves(snakemake.input.metrics)
    grid = mnk_grid_table(snakemake.input.metrics)
    for frame, path in ((summary, out.summary), (per_task, out.per_task), (paired, out.paired),
                        (curves, out.learning_curves), (grid, out.mnk_grid)):
        with atomic_path(path, suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False)
