"""Rule figures: accuracy and cost plots from the summary, kernel heatmaps of one experiment."""

import numpy as np
import pandas as pd

from mnk.io import load_npz
from mnk.meta import mnk_gram
from mnk.results import normalized, plot_accuracy, plot_cost, plot_kernel_heatmap
from mnk.runtime import logged_run

with logged_run(snakemake.log[0], "figures") as log:
    out = snakemake.output
    summary = pd.read_csv(snakemake.input.summary)
    plot_accuracy(summary, out.accuracy, out.accuracy_pdf)
    plot_cost(summary, out.cost, out.cost_pdf)
    # Heatmaps: the first few training tasks' query images, which are ordered by class.
    tasks = load_npz(snakemake.input.tasks)
    K = load_npz(snakemake.input.kernel)["K"]
    n_tasks = min(3, len(tasks["train_support"]))
    query = tasks["train_query"][:n_tasks]
    base = normalized(K)[np.ix_(query.ravel(), query.ravel())]
    cfg = snakemake.params.mnk
    phi = mnk_gram(K, tasks["train_support"][:n_tasks], query, inner_time=cfg["inner_time"],
                   ridge=tuple(cfg["ridge"]), normalize_ntk=cfg["normalize_ntk"], normalize_mnk=cfg["normalize_mnk"])
    log.info("heatmaps over %d tasks, %d query images", n_tasks, query.size)
    plot_kernel_heatmap(base, phi, out.heatmap, out.heatmap_pdf,
                        base_title=f"normalised base kernel ({n_tasks} tasks' queries, by class)",
                        meta_title="meta neural kernel (same queries)")
