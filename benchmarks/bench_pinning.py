"""Speed cost of the pinned CPU numerics (src/mnk/infra/numerics.py, issue 27).

Runs the same workloads in two fresh processes: *pinned* (mnk imported first, as every job
does: torch, oneDNN, MKL and numba on the AVX2 path) and *native* (the pin variables removed
again right after mnk's import, before torch or numba read them, so each library picks the
host's widest path, e.g. AVX-512). Prints one table: the path each library used, MAML and iMAML meta-updates per
second (default-study options, 1 thread) and the float32 CNTK Gram time (numba, 2 threads):

    python benchmarks/bench_pinning.py [--updates 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from mnk.infra.numerics import AVX2_ENVIRONMENT  # the pinned variables, one list

PIN_VARIABLES = tuple(AVX2_ENVIRONMENT)


def child(mode: str, updates: int) -> dict:
    import time

    import mnk  # noqa: F401  (pins: sets the variables, which torch and numba read at first use)

    if mode == "native":
        for name in PIN_VARIABLES:  # undo the pinning before any library reads it
            os.environ.pop(name, None)
    import numpy as np
    import torch

    from mnk.kernels.gram import cntk_gram
    from mnk.methods import maml as M
    from mnk.methods.nets import build_network

    torch.set_num_threads(1)
    result = {"torch": torch.backends.cpu.get_cpu_capability(),
              "numba": __import__("numba").core.config.CPU_NAME or "host"}
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(4, 5, 1, 28, 28, generator=g), torch.arange(5).repeat(4, 1),
             torch.rand(4, 25, 1, 28, 28, generator=g), torch.arange(5).repeat_interleave(5).repeat(4, 1))
    for method, extra in (("maml", {"implementation": "loop"}), ("imaml", {"implementation": "vmap"})):
        opts = M.options_from_config(method, {"network": "imaml4", "hidden": 32, **extra})
        model = build_network("imaml4", n_classes=5, image_size=(28, 28), hidden=32)
        gradient = M.meta_gradient_fn(method, opts)
        gradient(model, dict(model.named_parameters()), batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(updates):
            gradient(model, dict(model.named_parameters()), batch)
        result[f"{method}_updates_per_s"] = updates / (time.perf_counter() - t0)
    images = np.random.default_rng(0).random((200, 14, 14))
    cntk_gram(images[:8], depth=5, gap=True, dtype="float32")  # compile or load the cache
    t0 = time.perf_counter()
    cntk_gram(images, depth=5, gap=True, dtype="float32")
    result["cntk_gram_seconds"] = time.perf_counter() - t0
    return result


def run_child(mode: str, updates: int) -> dict:
    env = {k: v for k, v in os.environ.items() if mode == "pinned" or k not in PIN_VARIABLES}
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--updates", str(updates)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each mode")
    parser.add_argument("--child", choices=("pinned", "native"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.updates)))
        return
    runs = {"native": [], "pinned": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(run_child(mode, args.updates))
    print(f"| mode | torch | numba | MAML updates/s | iMAML updates/s | CNTK 200x200 (s) |")
    print("|---|---|---|---|---|---|")
    for mode, rows in runs.items():
        best = {k: (max if "per_s" in k else min)(r[k] for r in rows) for k in rows[0] if k not in ("torch", "numba")}
        print(f"| {mode} | {rows[0]['torch']} | {rows[0]['numba']} | {best['maml_updates_per_s']:.2f} | "
              f"{best['imaml_updates_per_s']:.2f} | {best['cntk_gram_seconds']:.2f} |")


if __name__ == "__main__":
    main()
