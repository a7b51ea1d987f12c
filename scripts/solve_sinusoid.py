"""Rule solve_sinusoid: MNK (its setting chosen on the validation MSE) and per-task kernel
regression on one sinusoid experiment, with the FC ReLU NTK of the points."""

import mnk  # noqa: F401, I001 (first: pins the CPU numerics before numpy and torch)

from mnk.infra.io import load_npz, save_json
from mnk.infra.numerics import configure_torch
from mnk.infra.runtime import cpu_seconds, git_revision, logged_run
from mnk.methods.mnk import MNKOptions
from mnk.methods.options import MNKSection
from mnk.study.regression import regression_kernel, regression_metrics, solve_regression
from mnk.tasks.sinusoid import SinusoidOptions

with logged_run(snakemake.log[0], "solve_sinusoid") as log:
    numerics = configure_torch(snakemake.params.threads)
    section = MNKSection.from_section(snakemake.params.mnk)
    sinusoid = SinusoidOptions.from_section(snakemake.params.sinusoid)
    settings = list(dict.fromkeys((s.r2, s.meta_time, s.inner_time) for s in section.settings))
    options = MNKOptions.from_section(section, r2=settings[0][0])
    tasks = load_npz(snakemake.input.tasks)
    kernel = lambda points: regression_kernel(tasks["points"][points], depth=sinusoid.depth,  # noqa: E731
                                              bias=sinusoid.bias)
    result = solve_regression(tasks, settings, options, kernel)
    for row in result["validation"]:
        log.info("validation: %s", row)
    shared = {"experiment": snakemake.wildcards.exp, **snakemake.params.experiment, "git_revision": git_revision(),
              "numerics": numerics, "kernel": {"type": "ntk", "depth": sinusoid.depth, "bias": sinusoid.bias},
              "cpu_seconds": cpu_seconds()}  # both methods: this job's CPU time (the grid included)
    mse, share = result["mnk"]
    mnk_metrics = {**regression_metrics("mnk", mse, result["curves"]["mnk"], tasks), **shared,
                   "selected": result["selected"], "validation": result["validation"], "meta_share": share,
                   "options": section.params()}
    kr_mse, _ = result["kernel_regression"]
    kr_metrics = {**regression_metrics("kernel_regression", kr_mse, result["curves"]["kernel_regression"], tasks),
                  **shared, "options": {"r1": section.r1, "inner_time": float("inf")}}
    for name, metrics in (("mnk", mnk_metrics), ("kernel_regression", kr_metrics)):
        log.info("%s: test MSE %.4f [%.4f, %.4f]", name, metrics["mse"], metrics["mse_ci95_low"],
                 metrics["mse_ci95_high"])
    log.info("selected %s, meta share %.3f", result["selected"], share)
    save_json(snakemake.output.mnk, mnk_metrics)
    save_json(snakemake.output.kernel_regression, kr_metrics)
