"""Rule figures: plots from the aggregated tables and the heatmap matrices solve_mnk wrote."""

import pandas as pd

from mnk.infra.io import load_npz
from mnk.infra.runtime import logged_run
from mnk.study.results import plot_accuracy, plot_cost, plot_kernel_heatmap, plot_learning_curves, plot_paired

with logged_run(snakemake.log[0], "figures") as log:
    out = snakemake.output
    summary = pd.read_csv(snakemake.input.summary, keep_default_na=False, na_values=[""])
    per_task = pd.read_csv(snakemake.input.per_task)
    plot_accuracy(summary, per_task, out.accuracy, out.accuracy_pdf)
    plot_paired(pd.read_csv(snakemake.input.paired), out.paired, out.paired_pdf)
    plot_cost(summary, out.cost, out.cost_pdf)
    plot_learning_curves(pd.read_csv(snakemake.input.learning_curves), summary, out.learning, out.learning_pdf)
    heatmap = load_npz(snakemake.input.heatmap)
    n_tasks = int(heatmap["n_tasks"])
    log.info("heatmaps over %d tasks, %d query images", n_tasks, len(heatmap["base"]))
    plot_kernel_heatmap(heatmap["base"], heatmap["phi"], out.heatmap, out.heatmap_pdf,
                        base_title=f"normalised base kernel ({n_tasks} tasks' queries, by class)",
                        meta_title="meta neural kernel (same queries)")
