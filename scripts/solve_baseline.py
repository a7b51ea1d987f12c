"""Rule solve_baseline: the baselines without meta-learning on the experiment's test tasks.

kernel_regression: per-task base-kernel regression on the support set, one-hot targets
(the MNK's meta_time: 0 limit). prototypes: nearest class mean in the label encoder's
feature space.
"""

import mnk  # noqa: F401, I001 (first: pins the CPU numerics before numpy and torch)
import time

from mnk.infra.io import load_json, load_npz, save_json, save_npz
from mnk.infra.numerics import configure_torch
from mnk.infra.runtime import cpu_seconds, device_name, git_revision, logged_run, resolve_device
from mnk.methods.mnk import MNKOptions
from mnk.methods.options import MNKSection
from mnk.study.selection import cpu_cost, kernel_regression_labels, method_metrics, prototype_labels, require_computed

with logged_run(snakemake.log[0], f"solve_{snakemake.wildcards.method}") as log:
    numerics = configure_torch(snakemake.params.threads)
    start = time.perf_counter()
    method = snakemake.wildcards.method
    device = resolve_device(snakemake.params.device)
    tasks = load_npz(snakemake.input.tasks)
    extra, kernel, encoder_cost = {}, None, None
    if method == "kernel_regression":
        section = MNKSection.from_section(snakemake.params.mnk)
        options = MNKOptions.from_section(section, r2=0.0, device=device)
        kernel = load_npz(snakemake.input.kernel)
        require_computed(kernel["computed"], tasks, ["test"], with_train=False, what=snakemake.input.kernel)
        prediction, labels = kernel_regression_labels(kernel["K"], tasks, "test", options)
        extra = {"options": {"r1": section.r1, "inner_time": options.inner_time, "normalize_ntk": section.normalize_ntk},
                 "kernel": snakemake.params.kernel, "kernel_seconds": float(kernel["block_seconds"].sum())}
    else:
        from mnk.methods.encoder import encode, load_encoder

        images = load_npz(snakemake.input.images)["images"]
        features = encode(load_encoder(snakemake.input.encoder, device), images, device)
        prediction, labels = prototype_labels(features, tasks, "test")
        encoder_cost = load_json(snakemake.input.encoder_cost)
        extra = {"options": {"encoder": snakemake.params.encoder}}
    metrics = {
        **method_metrics(method, labels, tasks),
        "experiment": snakemake.wildcards.exp,
        **snakemake.params.experiment,
        **extra,
        "solve_seconds": time.perf_counter() - start,
        "device": device,
        "numerics": numerics,
        "device_name": device_name(device),
        "git_revision": git_revision(),
    }
    metrics["wall_seconds"] = metrics.get("kernel_seconds", 0.0) + metrics["solve_seconds"]
    metrics.update(cpu_cost(cpu_seconds(), kernel, encoder_cost))
    log.info("test accuracy %.4f [%.4f, %.4f]", metrics["accuracy"], metrics["ci95_low"], metrics["ci95_high"])
    save_npz(snakemake.output.predictions, prediction=prediction, labels=labels,
             query_labels=tasks["test_query_labels"], per_task_accuracy=metrics["per_task_accuracy"])
    save_json(snakemake.output.metrics, metrics)
