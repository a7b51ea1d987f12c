"""Rule figures: plots from the aggregated tables and the MNK spectra solve_mnk wrote."""

import pandas as pd

from mnk.infra.io import load_npz
from mnk.infra.runtime import logged_run
from mnk.methods.options import MNKSection
from mnk.study.results import (plot_accuracy, plot_cost, plot_learning_curves, plot_mnk_grid, plot_mnk_spectrum,
                               plot_paired)

with logged_run(snakemake.log[0], "figures") as log:
    out = snakemake.output
    summary = pd.read_csv(snakemake.input.summary, keep_default_na=False, na_values=[""])
    per_task = pd.read_csv(snakemake.input.per_task)
    plot_accuracy(summary, per_task, out.accuracy, out.accuracy_pdf)
    plot_paired(pd.read_csv(snakemake.input.paired), out.paired, out.paired_pdf)
    plot_cost(summary, out.cost, out.cost_pdf)
    plot_learning_curves(pd.read_csv(snakemake.input.learning_curves), summary, out.learning, out.learning_pdf)
    plot_mnk_grid(pd.read_csv(snakemake.input.mnk_grid), out.mnk_grid, out.mnk_grid_pdf)
    spectra = []
    for experiment, path in zip(snakemake.params.spectrum_experiments, snakemake.input.spectra):
        spectrum = load_npz(path)
        spectra.append((experiment["n_characters"], experiment["seed"], spectrum["eigenvalues"],
                        spectrum["phi_diagonal"]))
    log.info("MNK spectra of %d experiments", len(spectra))
    grid = MNKSection.from_section(snakemake.params.mnk)
    plot_mnk_spectrum(spectra, grid.r2, grid.meta_time, out.spectrum, out.spectrum_pdf)
