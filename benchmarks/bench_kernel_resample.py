"""How should the kernel stage prepare its images? Per-task kernel regression on VALIDATION tasks.

For each route (source images and filter, `kernel.source` / `kernel.resample`), the config's
kernel (the default: GAP CNTK 14x14 depth 5, float32) on the within-task pairs of many
validation tasks, and the accuracy of per-task kernel regression (one-hot, ridge r1: the
`kernel_regression` baseline) on their queries. The tasks are the config's task format drawn
from each seed's validation characters (training-side characters no experiment of that seed
trains on; never the test split), `--tasks` per seed. Only within-task kernel entries are
computed, so each route costs `tasks x (way (shot + query))^2 / 2` pairs.

Prints one row per route: accuracy, and its paired difference from the first route (the
pipeline's old route: area averaging of the data stage's 28x28 Lanczos images) with a 95%
interval over tasks. Needs the data stage's files (`snakemake results/data/omniglot.npz`):

    PYTHONPATH=src python benchmarks/bench_kernel_resample.py --tasks 100
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import yaml

from mnk.infra.io import load_npz
from mnk.kernels.options import KernelOptions
from mnk.kernels.transform import source_images
from mnk.methods.metrics import accuracy_ci, per_task_accuracy
from mnk.methods.mnk import MNKOptions
from mnk.methods.options import MNKSection
from mnk.study.blocks import base_kernel, prepare_images
from mnk.study.config import parse_config
from mnk.study.plan import kernel_identity
from mnk.study.selection import kernel_regression_labels
from mnk.tasks.sampling import make_tasks

ROUTES = [  # (source, filter): the first is the reference of the paired differences
    ("preprocessed", "area"),  # the pipeline before: Lanczos to 28x28 in the data stage, then area
    ("original", "area"),
    ("original", "box"),
    ("original", "bilinear"),
    ("original", "hamming"),
    ("original", "bicubic"),
    ("original", "lanczos"),
    ("original", "nearest"),
]


def validation_tasks(data: dict, study, seed: int, n_tasks: int) -> dict:
    """The config's task format over seed `seed`'s validation characters: `n_tasks` tasks."""
    tasks = study.tasks
    spec = tasks.spec(tasks.way[0], tasks.shot[0], max(tasks.n_characters), seed)
    spec = dataclasses.replace(spec, n_val_tasks=n_tasks, n_test_tasks=1)
    return make_tasks(data["character"], data["drawer"], data["split"], spec)


def route_accuracy(pool: dict, tasks: dict, options: KernelOptions, mnk: MNKOptions) -> tuple[np.ndarray, float]:
    """Per-task kernel regression accuracy of the validation tasks, and the kernel's CPU seconds."""
    images = source_images(pool, options.source)
    reference = images[: int(tasks["n_train_images"])]  # standardisation (if on): training images only
    support, query = tasks["val_support"], tasks["val_query"]
    accuracies, seconds = [], 0.0
    for s, q, ys, yq in zip(support, query, tasks["val_support_labels"], tasks["val_query_labels"]):
        ids = np.r_[s, q]
        start = time.process_time()
        K = base_kernel(prepare_images(images[ids], options, reference), None, options, "cpu")
        seconds += time.process_time() - start
        local = {"way": tasks["way"], "val_support": np.arange(len(s))[None], "val_query": len(s) + np.arange(len(q))[None],
                 "val_support_labels": ys[None], "val_query_labels": yq[None]}
        _, labels = kernel_regression_labels(K, local, "val", mnk)
        accuracies.append(per_task_accuracy(labels, yq[None])[0])
    return np.asarray(accuracies), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--data", default="results/data/omniglot.npz")
    ap.add_argument("--originals", default="results/data/omniglot_originals.npz")
    ap.add_argument("--tasks", type=int, default=100, help="validation tasks per seed")
    ap.add_argument("--routes", nargs="+", default=[f"{s}:{f}" for s, f in ROUTES])
    args = ap.parse_args()
    study = parse_config(yaml.safe_load(open(args.config)))
    kernel = KernelOptions.from_section(kernel_identity(study)["kernel"])
    mnk = MNKOptions.from_section(MNKSection.from_section({"r1": study.mnk.r1}), r2=0.0)
    data = load_npz(args.data)
    originals = load_npz(args.originals)["originals"]
    per_seed = [validation_tasks(data, study, seed, args.tasks) for seed in study.tasks.seeds]
    pools = [{"images": data["images"][t["image_ids"]], "originals": originals[t["image_ids"]]} for t in per_seed]
    n_tasks = sum(len(t["val_support"]) for t in per_seed)
    print(f"# {n_tasks} validation tasks ({len(per_seed)} seeds), {study.tasks.way[0]}-way {study.tasks.shot[0]}-shot, "
          f"{study.tasks.query} queries per class; kernel {kernel}; per-task kernel regression, r1 {study.mnk.r1:g}")
    print("| source | filter | accuracy % | difference from the first route (95% CI, paired over tasks) | kernel CPU s |")
    print("|---|---|---|---|---|")
    base_kernel(np.zeros((2, 1, kernel.image_size, kernel.image_size), np.float32) + 0.5, None, kernel, "cpu")  # compile
    first = None
    for route in args.routes:
        source, name = route.split(":")
        options = kernel.replace(source=source, resample=name)
        results = [route_accuracy(pool, tasks, options, mnk) for pool, tasks in zip(pools, per_seed)]
        accuracy = np.concatenate([a for a, _ in results])
        seconds = sum(s for _, s in results)
        first = accuracy if first is None else first
        d = accuracy_ci(accuracy - first)
        print(f"| {source} | {name} | {100 * accuracy.mean():.1f} | {100 * d['accuracy']:+.1f} "
              f"[{100 * d['ci95_low']:+.1f}, {100 * d['ci95_high']:+.1f}] | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
