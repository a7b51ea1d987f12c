"""CPU CNTK throughput, float64 against float32, next to the machine's arithmetic floor.

    .venv/bin/python benchmarks/bench_cntk_cpu.py [--seconds 2] [--rounds 3] [--threads 1]

Prints one Markdown table: pairs per CPU-second and ns per entry-layer for the float64
backend (:func:`mnk.kernels.cntk_cpu.gram_prepared`: the numba kernels of commit 71d8354,
unchanged) and the float32 one (:func:`mnk.kernels.cntk_cpu32.cntk_gram_cpu32`) at 28x28
depth 20, 28x28 padded to 32x32 depth 20 and 14x14 depth 5, all with GAP (the trace is
computed in float64 whatever ``dtype`` says: :func:`mnk.kernels.options.cpu_dtype`), their
ratio, and the float32 floor.  Old and new are timed in the same process,
interleaved round by round (the 2-core VM is shared: CPU time, not wall time, and the
ratio is the trustworthy number), on random sparse binary strokes (20% ink, like the
original benchmark).  The kernels are compiled (or loaded from numba's cache) first.

The floor: one entry-layer of the float32 recursion is OPS_PER_ENTRY_LAYER = 41 vector
lane-operations (two separable 3x3 box sums of Sigma and Theta: 8 adds; the ReLU step:
33 mul/FMA/add/compare/select/abs/sqrt, each counted as one), and a core retires at most
2 vector FP instructions per cycle (two FMA pipes) of SIMD_BITS / 32 float32 lanes, at the
clock of /proc/cpuinfo.  SIMD_BITS is 256 with AVX2 and on AMD with AVX-512 (Zen 4 runs
512-bit instructions on 256-bit units), 512 on Intel with AVX-512, 128 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np

from mnk.kernels._validate import as_images
from mnk.kernels.cntk_cpu import gram_prepared
from mnk.kernels.cntk_cpu32 import cntk_gram_cpu32

OPS_PER_ENTRY_LAYER = 41
FP_INSTRUCTIONS_PER_CYCLE = 2
CONFIGS = [  # (label, side before padding, padded side, depth), global average pooling
    ("28x28", 28, 28, 20),
    ("28x28 padded to 32x32", 28, 32, 20),
    ("14x14", 14, 14, 5),
]


def cpu_facts() -> dict:
    """Model, vendor, flags and clock (MHz) from /proc/cpuinfo (best effort)."""
    facts = {"model": platform.processor() or "unknown", "vendor": "", "flags": set(), "mhz": float("nan")}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "model name":
                    facts["model"] = val
                elif key == "vendor_id":
                    facts["vendor"] = val
                elif key == "flags":
                    facts["flags"] = set(val.split())
                elif key == "cpu MHz" and facts["mhz"] != facts["mhz"]:
                    facts["mhz"] = float(val)
    except OSError:
        pass
    return facts


def simd_bits(facts: dict) -> int:
    flags = facts["flags"]
    if "avx512f" in flags and facts["vendor"] == "GenuineIntel":
        return 512
    if "avx2" in flags or "avx512f" in flags:
        return 256
    return 128


def floor_entry_layers_per_second(facts: dict) -> float:
    """float32 entry-layers per second per core at the arithmetic limit."""
    lanes = simd_bits(facts) // 32
    return FP_INSTRUCTIONS_PER_CYCLE * lanes * facts["mhz"] * 1e6 / OPS_PER_ENTRY_LAYER


def images(rng, n, side, padded):
    X = (rng.random((n, 1, side, side)) < 0.2).astype(np.float64)
    p = (padded - side) // 2
    return as_images(np.pad(X, ((0, 0), (0, 0), (p, padded - side - p), (p, padded - side - p))), "X")


def run(dtype, X, Z, depth):
    if dtype == "float64":
        return gram_prepared(X, Z, False, depth=depth, gap=True, fix=False, progress=False)
    return cntk_gram_cpu32(X, Z, False, depth=depth, fix=False, progress=False)


def block_shape(per_pair: float, seconds: float):
    """(nx, nz) for a block of about `seconds`."""
    npairs = max(2, int(seconds / max(per_pair, 1e-7)))
    nz = max(1, int(np.sqrt(npairs)))
    return max(1, npairs // nz), nz


def measure(side, padded, depth, seconds, rounds, rng):
    """{dtype: pairs per CPU-second}, float64 and float32 blocks interleaved over `rounds`."""
    probe = images(rng, 2, side, padded)
    shapes = {}
    for dtype in ("float64", "float32"):
        run(dtype, probe[:1], probe[1:], depth)  # compile / warm
        c0 = time.process_time()
        run(dtype, probe[:1], probe[1:], depth)
        shapes[dtype] = block_shape(time.process_time() - c0, seconds)
    pairs = {d: 0 for d in shapes}
    cpu = {d: 0.0 for d in shapes}
    for _ in range(rounds):
        for dtype, (nx, nz) in shapes.items():
            X, Z = images(rng, nx, side, padded), images(rng, nz, side, padded)
            c0 = time.process_time()
            K = run(dtype, X, Z, depth)
            cpu[dtype] += time.process_time() - c0
            pairs[dtype] += nx * nz
            assert np.all(np.isfinite(K))
    return {d: pairs[d] / cpu[d] for d in shapes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per block")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration")
    ap.add_argument("--threads", type=int, default=1, help="numba threads (CPU time is what is reported)")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    facts = cpu_facts()
    floor = floor_entry_layers_per_second(facts)
    rng = np.random.default_rng(0)
    print(f"CPU: {facts['model']} ({facts['vendor']}); os.cpu_count() = {os.cpu_count()}; "
          f"numba {numba.__version__} with {args.threads} thread(s); numpy {np.__version__}")
    print(f"floor: {FP_INSTRUCTIONS_PER_CYCLE} vector FP instructions/cycle x {simd_bits(facts) // 32} "
          f"float32 lanes ({simd_bits(facts)}-bit) x {facts['mhz']:.0f} MHz / {OPS_PER_ENTRY_LAYER} "
          f"ops per entry-layer = {1e9 / floor:.3g} ns per entry-layer per core")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    print("| image | depth | pooling | float64 pairs/CPU-s | float64 ns/entry-layer | float32 pairs/CPU-s "
          "| float32 ns/entry-layer | float32 / float64 | floor pairs/CPU-s | float32 / floor |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    t0 = time.time()
    for label, side, padded, depth in CONFIGS:
        rate = measure(side, padded, depth, args.seconds, args.rounds, rng)
        P = padded * padded
        entries = P * P * (depth - 1)
        ns = {d: 1e9 / rate[d] / entries for d in rate}
        fl = floor / entries
        print(f"| {label} | {depth} | GAP | {rate['float64']:.3g} | {ns['float64']:.3g} "
              f"| {rate['float32']:.3g} | {ns['float32']:.3g} | {rate['float32'] / rate['float64']:.2f}x "
              f"| {fl:.3g} | {rate['float32'] / fl:.2f} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; {time.time() - t0:.0f} s wall")


if __name__ == "__main__":
    main()
