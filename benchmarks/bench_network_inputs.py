"""Which network inputs for the default study? `invert` x `standardize` on VALIDATION tasks.

The default study's MAML, iMAML and label-encoder settings (read from config/config.yaml),
with each of the four combinations of `invert` (the stored images, strokes 1; or 1 - x, the
original's dark strokes) and `standardize` (mean 0, std 1 over the training images), on
5-way 1-shot tasks of the background split: the experiment's training characters and,
disjoint from them, `tasks.n_val_characters` validation characters; tuning seeds, not the
study's. Prints the mean validation accuracy over the settings; the encoder is scored by
its prototypes (nearest class mean of its features) on the same validation tasks
(`encoder-original`: the same with the original's architecture, padding 0 and flatten). The
trainer needs a test task: one is drawn and never reported. One thread; about 4 CPU
minutes for everything:

    PYTHONPATH=src OMNIGLOT_MIRROR=../shared/omniglot python benchmarks/bench_network_inputs.py \\
        [--cache /tmp/omniglot28.npz] [--methods maml imaml encoder encoder-original] \\
        [--settings 20:10 10:11] [--combinations true,false true,true false,false false,true]
"""

from __future__ import annotations

import mnk  # noqa: F401, I001 (first: pins the CPU numerics before numpy and torch)
import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mnk.data.archive import ARCHIVES, preprocess
from mnk.methods.encoder import encode, train_label_encoder
from mnk.methods.maml import options_from_config, train_and_evaluate
from mnk.methods.metrics import per_task_accuracy
from mnk.methods.options import EncoderOptions
from mnk.study.selection import prototype_labels
from mnk.tasks.sampling import TaskSpec, make_tasks

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["20:10", "10:11"]  # n_characters:tuning seed
COMBINATIONS = ["true,false", "true,true", "false,false", "false,true"]  # invert,standardize
METHODS = ["maml", "imaml", "encoder", "encoder-original"]
ORIGINAL_ENCODER = {"padding": 0, "pooling": "flatten"}  # meta_cntk_utils.py build_CNN


def omniglot(cache: Path, mirror: Path) -> dict:
    """The preprocessed archives (28x28, lanczos, as config.yaml), cached."""
    if not cache.exists():
        data = preprocess({name: mirror / f"{name}.zip" for name in ARCHIVES}, size=28, resample="lanczos")
        np.savez(cache, **{k: data[k] for k in ("images", "character", "drawer", "split")})
    with np.load(cache) as f:
        return {k: f[k] for k in f.files}


def experiment(data: dict, tasks_section: dict, n_characters: int, seed: int):
    spec = TaskSpec(way=5, shot=1, query=tasks_section["query"], n_characters=n_characters, seed=seed,
                    enlarge_ratio=tasks_section["enlarge_ratio"], n_test_tasks=1, n_val_tasks=20,
                    n_val_characters=tasks_section["n_val_characters"], split="background")
    tasks = make_tasks(data["character"], data["drawer"], data["split"], spec)
    return tasks, data["images"][tasks["image_ids"]]


def meta_learner_accuracy(method: str, section: dict, images, tasks, seed: int) -> float:
    options = options_from_config(method, section)
    metrics, _ = train_and_evaluate(images, tasks, method=method, options=options, seed=seed, progress=False)
    return metrics["val_accuracy"]


def encoder_accuracy(section: dict, images, tasks, seed: int) -> float:
    n_train = int(tasks["n_train_images"])
    per_character = n_train // len(tasks["train_characters"])
    labels = np.repeat(np.arange(len(tasks["train_characters"])), per_character)
    model, _ = train_label_encoder(images[:n_train], labels, EncoderOptions(**section), seed=seed, progress=False)
    _, predicted = prototype_labels(encode(model, images), tasks, "val")
    return float(per_task_accuracy(predicted, tasks["val_query_labels"]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="/tmp/omniglot28.npz")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--settings", nargs="+", default=SETTINGS, help="n_characters:seed")
    ap.add_argument("--combinations", nargs="+", default=COMBINATIONS, help="invert,standardize")
    args = ap.parse_args()
    settings = [tuple(int(v) for v in item.split(":")) for item in args.settings]
    combinations = [tuple(v.strip().lower() == "true" for v in item.split(",")) for item in args.combinations]
    torch.set_num_threads(1)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    data = omniglot(Path(args.cache), Path(os.environ.get("OMNIGLOT_MIRROR", REPO.parent / "shared" / "omniglot")))
    problems = [experiment(data, config["tasks"], n, seed) + (seed,) for n, seed in settings]
    print(f"# validation accuracy (20 5-way 1-shot tasks, {config['tasks']['query']} queries per class), mean over "
          f"(n_characters, seed) = {settings}; CPU seconds of one thread for all settings")
    columns = " | ".join(f"{n} chars seed {seed}" for n, seed in settings)
    print(f"| method | invert | standardize | {columns} | mean | CPU s |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in settings) + " | --- | --- |")
    for method, (invert, standardize) in itertools.product(args.methods, combinations):
        start = time.process_time()
        inputs = {"invert": invert, "standardize": standardize}
        if method.startswith("encoder"):
            section = {**config["encoder"], **(ORIGINAL_ENCODER if method == "encoder-original" else {}), **inputs}
            scores = [encoder_accuracy(section, images, tasks, seed) for tasks, images, seed in problems]
        else:
            scores = [meta_learner_accuracy(method, {**config[method]["options"], **inputs}, images, tasks, seed)
                      for tasks, images, seed in problems]
        cells = " | ".join(f"{s:.3f}" for s in scores)
        print(f"| {method} | {invert} | {standardize} | {cells} | {np.mean(scores):.3f} | "
              f"{time.process_time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
