"""Throughput of the exact CNTK on the CPU backend (pairs of images per second).

    .venv/bin/python benchmarks/bench_cntk_cpu.py [--seconds 5] [--threads 1 2] [--reference]

Configurations: 28x28 at depth 5, 10, 20 and 28x28 zero-padded to 32x32 at depth 20
(global average pooling, the costly O(depth P^2) case), plus one trace (gap=False) row
for comparison.  The kernel is compiled (or loaded from numba's cache) before timing.
Prints a Markdown table with the machine's CPU model and core count.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np

from mnk.kernels.cntk_cpu import cntk_gram_cpu


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def images(rng, n, pad_to=None):
    X = (rng.random((n, 1, 28, 28)) < 0.2).astype(np.float64)  # sparse strokes, Omniglot-like
    if pad_to:
        p = (pad_to - 28) // 2
        X = np.pad(X, ((0, 0), (0, 0), (p, pad_to - 28 - p), (p, pad_to - 28 - p)))
    return X


def time_pairs(depth, gap, pad_to, seconds, rng):
    """pairs/second for an (nx x nz) non-symmetric block sized to take about `seconds`."""
    X = images(rng, 2, pad_to)
    t0 = time.perf_counter()
    cntk_gram_cpu(X[:1], X[1:], depth=depth, gap=gap)
    per_pair = max(time.perf_counter() - t0, 1e-6)
    threads = numba.get_num_threads()
    npairs = max(threads * 2, int(seconds / per_pair * threads))
    nx = max(1, int(np.sqrt(npairs)))
    nz = max(1, npairs // nx)
    X = images(rng, nx, pad_to)
    Z = images(rng, nz, pad_to)
    c0 = time.process_time()
    t0 = time.perf_counter()
    K = cntk_gram_cpu(X, Z, depth=depth, gap=gap)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    assert np.all(np.isfinite(K))
    return nx * nz / dt, nx * nz / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="target time per measurement")
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="numba thread counts (default: 1 and all)")
    ap.add_argument("--reference", action="store_true",
                    help="also time one pair of the direct NumPy 4-D reference (28x28, depth 20)")
    args = ap.parse_args()
    maxt = numba.config.NUMBA_NUM_THREADS
    threads = args.threads or sorted({1, maxt})
    rng = np.random.default_rng(0)
    cntk_gram_cpu(images(rng, 2), depth=3)  # compile / load cache
    cntk_gram_cpu(images(rng, 2), depth=3, gap=False)

    print(f"CPU: {cpu_model()}; os.cpu_count() = {os.cpu_count()}; numba {numba.__version__}, "
          f"threading layer {numba.threading_layer()}; numpy {np.__version__}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f}")
    print()
    configs = [(28, 5, True), (28, 10, True), (28, 20, True), (32, 20, True), (28, 20, False)]
    head = ("| image | depth | pooling | " + " | ".join(f"pairs/s ({t} thr)" for t in threads)
            + " | pairs per CPU-second | ns per entry-layer (CPU) |")
    print(head)
    print("|" + "---|" * (5 + len(threads)))
    for size, depth, gap in configs:
        cells = []
        cpu_rates = []
        for t in threads:
            numba.set_num_threads(t)
            rate, cpu_rate = time_pairs(depth, gap, 32 if size == 32 else None, args.seconds, rng)
            cells.append(f"{rate:.3g}")
            cpu_rates.append(cpu_rate)
        cpu_rate = max(cpu_rates)
        P = size * size
        entries = (P * P if gap else P) * (depth - 1)
        img = "28x28 padded to 32x32" if size == 32 else "28x28"
        print(f"| {img} | {depth} | {'GAP' if gap else 'trace'} | " + " | ".join(cells)
              + f" | {cpu_rate:.3g} | {1e9 / cpu_rate / entries:.3g} |", flush=True)
    if args.reference:
        from mnk.kernels.reference import cntk_gram_reference

        X = images(rng, 2)
        c0 = time.process_time()
        t0 = time.perf_counter()
        cntk_gram_reference(X[:1], X[1:], depth=20, gap=True, fix=False)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        print(f"\nNumPy 4-D reference (mnk.kernels.reference), 28x28, depth 20, GAP, one pair: "
              f"{dt:.2f} s wall, {cpu:.2f} CPU-s (includes the two per-image diagonal recursions)")


if __name__ == "__main__":
    main()
