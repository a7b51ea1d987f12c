"""Rule solve_mnk: MNK regression, its setting chosen on validation tasks, then the test tasks."""

import mnk  # noqa: F401, I001 (first: pins the CPU numerics before numpy and torch)
import time
from dataclasses import asdict

from mnk.infra.io import load_json, load_npz, save_json, save_npz
from mnk.infra.numerics import configure_torch
from mnk.infra.runtime import cpu_seconds, device_name, git_revision, logged_run, resolve_device
from mnk.methods.mnk import MNKOptions
from mnk.methods.options import MNKSection
from mnk.study.selection import (cpu_cost, kernel_regression_accuracy, method_metrics, mnk_labels, mnk_spectrum,
                                 require_computed, select_setting, without_test_tasks)

with logged_run(snakemake.log[0], "solve_mnk") as log:
    numerics = configure_torch(snakemake.params.threads)
    start = time.perf_counter()
    device = resolve_device(snakemake.params.device)
    section = MNKSection.from_section(snakemake.params.mnk)
    settings = section.settings
    options = MNKOptions.from_section(section, r2=settings[0].r2, device=device)
    tasks = load_npz(snakemake.input.tasks)
    kernel = load_npz(snakemake.input.kernel)
    evaluated = ["val", "test"] if len(tasks["val_support"]) else ["test"]
    require_computed(kernel["computed"], tasks, evaluated, with_train=True, what=snakemake.input.kernel)
    features, encoder_cost = None, None
    if any(s.targets == "encoder" for s in settings):
        from mnk.methods.encoder import encode, load_encoder

        images = load_npz(snakemake.input.images)["images"]
        features = encode(load_encoder(snakemake.input.encoder, device), images, device)
        encoder_cost = load_json(snakemake.input.encoder_cost)
    selection_start = time.perf_counter()
    chosen, table = select_setting(kernel["K"], tasks, features, settings, options)
    selection_seconds = time.perf_counter() - selection_start
    for row in table:
        log.info("validation: %s", row)
    log.info("chosen on %d validation tasks in %.2f s (%d settings): %s", len(tasks["val_support"]),
             selection_seconds, len(settings), chosen)
    prediction, labels, meta_share = mnk_labels(kernel["K"], tasks, "test", features, chosen, options)
    solve_seconds = time.perf_counter() - start
    cost = cpu_cost(cpu_seconds(), kernel, encoder_cost)  # the method's own cost: diagnostics below are not
    log.info("meta share of the test predictions %.4g", meta_share)
    # Diagnostics that do not depend on the selection: the grid's reference line (kernel
    # regression on the same validation tasks) and the spectrum the grid's ridges are read against.
    val_kernel_regression = (kernel_regression_accuracy(kernel["K"], without_test_tasks(tasks), "val", options)
                             if table else None)
    eigenvalues, phi_diagonal = mnk_spectrum(kernel["K"], tasks, options)
    metrics = {
        **method_metrics("mnk", labels, tasks),
        "experiment": snakemake.wildcards.exp,
        **snakemake.params.experiment,
        "selected": asdict(chosen),
        "validation": table,
        "validation_kernel_regression": val_kernel_regression,
        "meta_share": meta_share,
        "options": section.params(),
        "kernel": snakemake.params.kernel,
        "kernel_seconds": float(kernel["block_seconds"].sum()),
        "solve_seconds": solve_seconds,
        "selection_seconds": selection_seconds,
        "device": device,
        "numerics": numerics,
        "device_name": device_name(device),
        "git_revision": git_revision(),
        **cost,
    }
    metrics["wall_seconds"] = metrics["kernel_seconds"] + metrics["solve_seconds"]
    log.info("test accuracy %.4f [%.4f, %.4f]", metrics["accuracy"], metrics["ci95_low"], metrics["ci95_high"])
    save_npz(snakemake.output.spectrum, eigenvalues=eigenvalues, phi_diagonal=phi_diagonal)
    save_npz(snakemake.output.predictions, prediction=prediction, labels=labels,
             query_labels=tasks["test_query_labels"], per_task_accuracy=metrics["per_task_accuracy"])
    save_json(snakemake.output.metrics, metrics)
