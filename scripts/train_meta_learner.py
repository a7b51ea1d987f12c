"""Rule train_meta_learner: MAML or iMAML on the experiment's tasks."""

import mnk  # noqa: F401, I001 (first: pins the CPU numerics before numpy and torch)
from mnk.infra.io import load_npz, save_json, save_torch
from mnk.infra.numerics import configure_torch
from mnk.infra.runtime import cpu_seconds, device_name, git_revision, logged_run, resolve_device
from mnk.methods.maml import options_from_config, test_result, train_and_evaluate

with logged_run(snakemake.log[0], f"train_{snakemake.wildcards.method}") as log:
    numerics = configure_torch(snakemake.params.threads)
    method = snakemake.wildcards.method
    options = options_from_config(method, snakemake.params.options)  # errors name the key
    device = resolve_device(snakemake.params.device)
    tasks = load_npz(snakemake.input.tasks)
    inputs = load_npz(snakemake.input.images)
    images = inputs["points"] if "points" in inputs else inputs["images"]  # regression tasks: points
    metrics, checkpoint = train_and_evaluate(
        images,
        tasks,
        method=method,
        options=options,
        seed=snakemake.params.experiment["seed"],
        device=device,
        log=log,
    )
    metrics.update(
        method=method,
        experiment=snakemake.wildcards.exp,
        **{"n_train_tasks": len(tasks["train_support"]), **snakemake.params.experiment},
        device_name=device_name(device),
        git_revision=git_revision(),
        numerics=numerics,
        cpu_seconds=cpu_seconds(),  # meta-training and evaluation: this job's whole CPU time
    )
    log.info("test %s", test_result(metrics))
    save_torch(snakemake.output.checkpoint, checkpoint)
    save_json(snakemake.output.metrics, metrics)
