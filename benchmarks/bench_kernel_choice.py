"""Which base kernel for the default study? Accuracy on VALIDATION tasks and CPU speed.

For one experiment's tasks file (its training tasks and the first --val-tasks validation
tasks; never its test tasks), computes candidate CNTKs over those images with
mnk.kernels.cntk_gram and prints, per kernel, the seconds, pairs per second, per-task
kernel regression accuracy and the MNK's validation accuracy for every setting of a small
grid (label-encoder targets included when --encoder is given). Keep it small on a shared
machine: the images are the training images plus 50 per 5-way validation task.

    PYTHONPATH=src python benchmarks/bench_kernel_choice.py \\
        --tasks results/tasks/5way1shot-20char-seed0/tasks.npz \\
        --images results/tasks/5way1shot-20char-seed0/images.npz \\
        --encoder results/encoder/5way1shot-20char-seed0/encoder.pt
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mnk.infra.io import load_npz
from mnk.kernels.gram import cntk_gram
from mnk.methods.mnk import MNKOptions
from mnk.methods.options import MNKSection
from mnk.study.selection import kernel_regression_labels, mnk_labels, without_test_tasks

CANDIDATES = {  # name: (image side, depth, gap)
    "vanilla 28x28 d10": (28, 10, False),
    "GAP 10x10 d5": (10, 5, True),
    "GAP 14x14 d5": (14, 5, True),
}
GRID = {"r2": [1e-5, 1.0, 100.0], "targets": ["onehot", "encoder"], "decoder": ["nearest_centroid", "least_squares"]}


def resize(images: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if images.shape[-1] == side:
        return images
    return np.stack([np.asarray(Image.fromarray(x.astype(np.float32), mode="F").resize(
        (side, side), Image.Resampling.LANCZOS)) for x in images]).astype(np.float32)


def local_problem(tasks: dict, n_val: int):
    """Training and validation tasks re-indexed onto the images they use (test arrays dropped)."""
    tasks = without_test_tasks(tasks)
    keep = {k: v[:n_val] if k.startswith("val_") else v for k, v in tasks.items()}
    used = np.unique(np.concatenate([keep[f"{s}_{p}"].ravel() for s in ("train", "val") for p in ("support", "query")]))
    for key in [k for k in keep if k.endswith(("_support", "_query"))]:
        keep[key] = np.searchsorted(used, keep[key])
    return keep, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--encoder", default=None, help="encoder.pt of the same experiment (for encoder targets)")
    ap.add_argument("--val-tasks", type=int, default=8)
    ap.add_argument("--kernels", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = ap.parse_args()
    tasks, used = local_problem(load_npz(args.tasks), args.val_tasks)
    images = load_npz(args.images)["images"][used]
    features = None
    grid = dict(GRID)
    if args.encoder:
        from mnk.methods.encoder import encode, load_encoder

        features = encode(load_encoder(args.encoder), images)
    else:
        grid["targets"] = ["onehot"]
    settings = list(MNKSection.from_section({"grid": grid}).settings)
    options = MNKOptions()
    n_val = len(tasks["val_support"])
    print(f"# {len(images)} images, {len(tasks['train_support'])} training tasks, {n_val} validation tasks "
          f"({tasks['val_query'].size} queries); validation accuracy in %")
    print("| kernel | seconds | pairs/s | kernel regression | " + " | ".join(
        f"MNK {s.targets} {s.decoder} r2={s.r2:g}" for s in settings) + " |")
    print("|---" * (4 + len(settings)) + "|")
    for name in args.kernels:
        side, depth, gap = CANDIDATES[name]
        X = resize(images, side)
        start = time.perf_counter()
        K = cntk_gram(X, depth=depth, gap=gap, backend="cpu")
        seconds = time.perf_counter() - start
        truth = tasks["val_query_labels"]
        scores = [100 * (kernel_regression_labels(K, tasks, "val", options)[1] == truth).mean()]
        for setting in settings:
            scores.append(100 * (mnk_labels(K, tasks, "val", features, setting, options)[1] == truth).mean())
        pairs = len(X) * (len(X) + 1) / 2
        print(f"| {name} | {seconds:.0f} | {pairs / seconds:.0f} | " + " | ".join(f"{s:.1f}" for s in scores) + " |",
              flush=True)


if __name__ == "__main__":
    main()
