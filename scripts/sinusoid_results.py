"""Rule sinusoid_results: the sinusoid study's tables (summary, per-task, paired) and figures."""

from mnk.infra.io import atomic_path, load_npz
from mnk.infra.runtime import logged_run
from mnk.study.regression_results import (curves_table, paired_regression, per_task_regression, plot_curves,
                                          plot_mse, summarise_regression)

with logged_run(snakemake.log[0], "sinusoid_results") as log:
    out = snakemake.output
    tasks = {exp: load_npz(path) for exp, path in zip(snakemake.params.experiments, snakemake.input.tasks)}
    summary = summarise_regression(snakemake.input.metrics, snakemake.params.config_hash)
    per_task = per_task_regression(snakemake.input.metrics)
    paired = paired_regression(per_task)
    curves = curves_table(snakemake.input.metrics, tasks)
    log.info("\n%s", summary[["method", "shot", "n_train_tasks", "seed", "mse", "selected"]].to_string())
    log.info("paired differences (MNK - method; negative: MNK better):\n%s", paired.to_string())
    for frame, path in ((summary, out.summary), (per_task, out.per_task), (paired, out.paired),
                        (curves, out.curves)):
        with atomic_path(path, suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False)
    plot_mse(summary, per_task, out.mse, out.mse_pdf)
    plot_curves(curves, tasks, out.sinusoid_curves, out.sinusoid_curves_pdf)
