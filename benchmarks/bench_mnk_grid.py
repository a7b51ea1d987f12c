"""What does the MNK grid cost, and which of its settings act? VALIDATION tasks only.

For finished experiments of a run (their assembled kernel, tasks and label encoder), solves
a candidate grid (`--r2`, `--meta-time`, `--inner-time`, the config's targets and decoders)
on the validation tasks with mnk.study.selection.select_setting, timing it, and prints per
experiment: seconds for the whole grid and per solve, per-task kernel regression's
validation accuracy, the best setting and its validation accuracy, and the best validation
accuracy along each time value (how much each axis matters). Never reads test tasks.

    PYTHONPATH=src python benchmarks/bench_mnk_grid.py --experiments 5way1shot-20char-seed0 \\
        --meta-time inf 10 1 --inner-time inf 1
"""

from __future__ import annotations

import argparse
import math
import time

from mnk.infra.io import load_npz
from mnk.infra.numerics import configure_torch
from mnk.methods.mnk import MNKOptions
from mnk.methods.options import MNKSection
from mnk.study.selection import kernel_regression_accuracy, select_setting, without_test_tasks


def features_of(exp: str, tasks_dir: str, encoder_dir: str):
    from mnk.methods.encoder import encode, load_encoder

    images = load_npz(f"{tasks_dir}/{exp}/images.npz")["images"]
    return encode(load_encoder(f"{encoder_dir}/{exp}/encoder.pt", "cpu"), images, "cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", nargs="+", required=True)
    ap.add_argument("--results", default="results")
    ap.add_argument("--r2", nargs="+", type=float, default=[1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0])
    ap.add_argument("--meta-time", nargs="+", type=float, default=[math.inf, 10.0, 1.0])
    ap.add_argument("--inner-time", nargs="+", type=float, default=[math.inf, 1.0])
    ap.add_argument("--targets", nargs="+", default=["encoder", "onehot"])
    ap.add_argument("--decoder", nargs="+", default=["nearest_centroid", "least_squares"])
    ap.add_argument("--r1", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    configure_torch(args.threads)
    section = MNKSection.from_section({"r1": args.r1, "grid": {
        "r2": args.r2, "meta_time": args.meta_time, "inner_time": args.inner_time, "targets": args.targets,
        "decoder": args.decoder}})
    settings = section.settings
    n_solves = len({(s.r2, s.meta_time, s.inner_time, s.targets) for s in settings})
    options = MNKOptions.from_section(section, r2=args.r2[0])
    print(f"# {len(settings)} settings, {n_solves} solves per experiment (decoders share a solve)")
    print("| experiment | grid s | s per solve | kernel regression % | best setting | best % | best per meta_time | "
          "best per inner_time |")
    print("|---|---|---|---|---|---|---|---|")
    for exp in args.experiments:
        tasks = without_test_tasks(load_npz(f"{args.results}/tasks/{exp}/tasks.npz"))
        K = load_npz(f"{args.results}/kernels/{exp}/kernel.npz")["K"]
        features = features_of(exp, f"{args.results}/tasks", f"{args.results}/encoder") if "encoder" in args.targets else None
        start = time.perf_counter()
        chosen, table = select_setting(K, tasks, features, settings, options)
        seconds = time.perf_counter() - start
        reference = kernel_regression_accuracy(K, tasks, "val", options)
        best = max(row["val_accuracy"] for row in table)
        by_axis = {axis: " / ".join(f"{t:g}: {100 * max(r['val_accuracy'] for r in table if r[axis] == t):.1f}"
                                    for t in getattr(section, axis)) for axis in ("meta_time", "inner_time")}
        label = (f"r2={chosen.r2:g} meta={chosen.meta_time:g} inner={chosen.inner_time:g} {chosen.targets}"
                 f"{'' if chosen.targets == 'onehot' else ' ' + chosen.decoder}")
        print(f"| {exp} | {seconds:.1f} | {seconds / n_solves:.2f} | {100 * reference:.1f} | {label} | {100 * best:.1f} | "
              f"{by_axis['meta_time']} | {by_axis['inner_time']} |", flush=True)


if __name__ == "__main__":
    main()
