"""Rule aggregate: every metrics file -> results/summary.csv."""

from mnk.io import atomic_path
from mnk.results import summarise
from mnk.runtime import logged_run

with logged_run(snakemake.log[0], "aggregate") as log:
    summary = summarise(snakemake.input.metrics, snakemake.params.config_hash)
    log.info("\n%s", summary[["method", "n_characters", "seed", "accuracy"]].to_string())
    with atomic_path(snakemake.output[0], suffix=".csv") as tmp:
        summary.to_csv(tmp, index=False)
