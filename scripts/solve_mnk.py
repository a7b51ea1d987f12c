"""Rule solve_mnk: Meta Neural Kernel regression on the experiment's test tasks."""

import time

import numpy as np
import torch

from mnk.io import load_npz, save_json, save_npz
from mnk.meta import class_centroids, mnk_predict, one_hot, predict_labels
from mnk.metrics import accuracy_ci, per_task_accuracy
from mnk.runtime import device_name, git_revision, logged_run, resolve_device


def task_targets(tasks, features, name, way):
    """Per-point targets of a task set: one-hot labels, or label-encoder class centroids."""
    support_labels, query_labels = tasks[f"{name}_support_labels"], tasks[f"{name}_query_labels"]
    if features is None:
        return one_hot(support_labels, way), one_hot(query_labels, way)
    labels = np.concatenate([support_labels, query_labels], axis=1)
    points = np.concatenate([tasks[f"{name}_support"], tasks[f"{name}_query"]], axis=1)
    centroids = class_centroids(features[points], labels, way)
    return (np.take_along_axis(centroids, support_labels[..., None], axis=1),
            np.take_along_axis(centroids, query_labels[..., None], axis=1))


with logged_run(snakemake.log[0], "solve_mnk") as log:
    torch.set_num_threads(snakemake.threads)
    start = time.perf_counter()
    device = resolve_device(snakemake.params.device)
    cfg = snakemake.params.mnk
    tasks = load_npz(snakemake.input.tasks)
    kernel = load_npz(snakemake.input.kernel)
    way = int(tasks["way"])
    features = None
    if cfg["targets"] == "encoder":
        from mnk.encoder import encode, load_encoder

        images = load_npz(snakemake.input.images)["images"]
        features = encode(load_encoder(snakemake.input.encoder, device), images, device)
    train_support_y, train_query_y = task_targets(tasks, features, "train", way)
    if features is None:
        test_support_y, centroids = one_hot(tasks["test_support_labels"], way), None
    else:
        centroids = class_centroids(features[tasks["test_support"]], tasks["test_support_labels"], way)
        test_support_y = np.take_along_axis(centroids, tasks["test_support_labels"][..., None], axis=1)
    prediction = mnk_predict(
        kernel["K"], tasks["train_support"], tasks["train_query"], train_support_y, train_query_y,
        tasks["test_support"], tasks["test_query"], test_support_y,
        inner_time=cfg["inner_time"], meta_time=cfg["meta_time"], ridge=tuple(cfg["ridge"]),
        normalize_ntk=cfg["normalize_ntk"], normalize_mnk=cfg["normalize_mnk"], solver=cfg["solver"],
        device=device,
    )
    labels = predict_labels(prediction, centroids)
    accuracy = per_task_accuracy(labels, tasks["test_query_labels"])
    metrics = {
        **accuracy_ci(accuracy),
        "method": "mnk",
        "experiment": snakemake.wildcards.exp,
        **snakemake.params.experiment,
        "n_train_tasks": len(tasks["train_support"]),
        "n_test_tasks": len(tasks["test_support"]),
        "options": cfg,
        "kernel": snakemake.params.kernel,
        "kernel_seconds": float(kernel["block_seconds"].sum()),
        "solve_seconds": time.perf_counter() - start,
        "device": device,
        "device_name": device_name(device),
        "git_revision": git_revision(),
    }
    metrics["wall_seconds"] = metrics["kernel_seconds"] + metrics["solve_seconds"]
    log.info("test accuracy %.4f [%.4f, %.4f]", metrics["accuracy"], metrics["ci95_low"], metrics["ci95_high"])
    save_npz(snakemake.output.predictions, prediction=prediction, labels=labels, per_task_accuracy=accuracy)
    save_json(snakemake.output.metrics, metrics)
