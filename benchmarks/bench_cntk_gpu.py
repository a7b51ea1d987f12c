"""GPU CNTK benchmark: the fused kernel against the per-layer baseline, same run, same GPU.

    PYTHONPATH=src python benchmarks/bench_cntk_gpu.py [--out DIR] [--pairs-side 100]
        [--baseline-pairs 100] [--gram 2000] [--variants]

For (32x32, depth 20, gap), (28x28, depth 20, gap) and (32x32, depth 5, gap) on synthetic
Omniglot-like stroke images (28x28 sparse strokes, zero-padded to 32x32 where said,
standardised with one scalar mean and std), it times

* the per-layer CuPy baseline (benchmarks/cntk_cupy_baseline.py: the original code's
  structure, one pair at a time) over ``--baseline-pairs`` pairs, and
* the fused kernel (``cntk_gram_cuda``) end to end on a cross Gram of
  ``pairs-side x pairs-side`` pairs (>= 10,000),

checks that they agree, and prints a table with the card, microseconds per pair, the
speedup, the operation-count floor and the ratio to it.  It then times a symmetric Gram of
``--gram`` images (32x32, depth 20) end to end and projects GPU-hours for 20,000 and
32,460 images.  ``--variants`` also times compile-time variants of the fused kernel.

Operation-count floor (per pair, gap, P = H*W pixels, E = P^2 entries of the 4-D tensor):
each of the depth-1 ReLU steps costs per entry 15 FP32 operations (products lx lz and
S/(lx lz) with precomputed 1/l, clip, pi - theta, 1 - c^2, the two products and sum of
the new Sigma, the 1/(9 pi) scalings, Theta * Sigma' + Sigma) plus 2 transcendentals
(arccos, sqrt), each the cost of ``--transcendental-cost`` (12) FP32 instructions; each
3x3 box filter costs 4 adds per entry (separable), applied depth-1 times to Sigma and
depth-2 times to Theta; the first layer costs 2C per entry.  The floor is that many
FP32 lane-instructions at the card's peak issue rate (SMs x 128 FP32 lanes x max clock),
with no memory traffic, no masking and no reduction counted.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CONFIGS = [  # (label, H, W, depth, padded)
    ("32x32 depth 20 gap", 32, 32, 20, True),
    ("28x28 depth 20 gap", 28, 28, 20, False),
    ("32x32 depth 5 gap", 32, 32, 5, True),
]


def stroke_images(rng, n, size=28, pad=0):
    """Sparse binary-ish pen strokes (Omniglot-like), zero-padded, standardised (scalar mean/std)."""
    imgs = np.zeros((n, 1, size, size))
    for k in range(n):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.uniform(4, size - 4, 2)
            ang = rng.uniform(0, 2 * np.pi)
            for _ in range(rng.integers(8, 30)):
                ang += rng.normal(0, 0.35)
                y = float(np.clip(y + 1.2 * np.sin(ang), 1, size - 2))
                x = float(np.clip(x + 1.2 * np.cos(ang), 1, size - 2))
                iy, ix = int(y), int(x)
                imgs[k, 0, iy - 1 : iy + 1, ix - 1 : ix + 1] = 1.0
    imgs = np.pad(imgs, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return (imgs - imgs.mean()) / imgs.std()


def card_info():
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    clock_khz = props.get("clockRate")
    if not clock_khz:
        try:  # cudaDevAttrClockRate = 13 (kHz); the property was dropped from cudaDeviceProp in CUDA 13
            clock_khz = cp.cuda.runtime.deviceGetAttribute(13, cp.cuda.Device().id)
        except Exception:  # noqa: BLE001
            clock_khz = 0
    if not clock_khz:
        try:
            import subprocess

            q = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, check=True)
            clock_khz = float(q.stdout.split()[0]) * 1000
        except Exception:  # noqa: BLE001
            clock_khz = 1980e3
            print("(max SM clock unknown: assuming 1980 MHz)")
    return {
        "name": name,
        "sms": int(props["multiProcessorCount"]),
        "clock_mhz": float(clock_khz) / 1000.0,
        "mem_gib": int(props["totalGlobalMem"]) / 2**30,
        "cc": f"{props['major']}.{props['minor']}",
    }


def floor_us(H, W, depth, C, card, tcost=12.0):
    """Operation-count floor per pair in microseconds, and the counts behind it."""
    E = float(H * W) ** 2
    flops = E * (2 * C + (depth - 1) * 15 + (depth - 1) * 4 + (depth - 2) * 4)
    trans = E * 2 * (depth - 1)
    rate = card["sms"] * 128 * card["clock_mhz"] * 1e6  # FP32 lane-instructions per second
    return (flops + tcost * trans) / rate * 1e6, flops, trans


def sass_loop_stats(path, kh=32):
    """Instructions per entry and layer in the fused kernel's layer loop (from cuobjdump SASS)."""
    import collections
    import re

    ins = []
    for ln in Path(path).read_text().splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", ln)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    best = None
    for addr, txt in ins:
        m = re.search(r"BRA (0x[0-9a-f]+)", txt)
        if m and int(m.group(1), 16) < addr:
            span = addr - int(m.group(1), 16)
            if best is None or span > best[0]:
                best = (span, int(m.group(1), 16), addr)
    if best is None:
        return None
    _, a0, a1 = best
    body = [t for a, t in ins if a0 <= a <= a1]
    ops = collections.Counter(re.sub(r"^@!?U?P\S+\s+", "", t).split()[0].split(".")[0] for t in body)
    return dict(per_entry=len(body) / kh, mix={k: v / kh for k, v in ops.most_common()})


def sync():
    import cupy as cp

    cp.cuda.Device().synchronize()


def time_fused(X, Z, depth, variant=None, repeat=2):
    from mnk.kernels.cntk_cuda import cntk_gram_cuda

    cntk_gram_cuda(X[:2], Z[:2], depth=depth, gap=True, variant=variant)  # compile + warm up
    sync()
    best = math.inf
    K = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        K = cntk_gram_cuda(X, Z, depth=depth, gap=True, variant=variant, progress=False)
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, K


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for bench_cntk_gpu.{json,md}")
    ap.add_argument("--pairs-side", type=int, default=100, help="fused: cross Gram of side x side pairs")
    ap.add_argument("--baseline-pairs", type=int, default=100)
    ap.add_argument("--gram", type=int, default=2000, help="symmetric Gram size (0 to skip)")
    ap.add_argument("--gram-max-seconds", type=float, default=150.0,
                    help="skip the symmetric Gram if its projected time is longer")
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--transcendental-cost", type=float, default=12.0)
    ap.add_argument("--sass", default=None, help="cuobjdump SASS of the 32x32 kernel: adds its issue bound")
    args = ap.parse_args(argv)

    import cupy as cp

    from cntk_cupy_baseline import PerLayerCNTK

    card = card_info()
    print(f"card: {card['name']} ({card['sms']} SMs, {card['clock_mhz']:.0f} MHz, cc {card['cc']}, "
          f"{card['mem_gib']:.0f} GiB); cupy {cp.__version__}; python {platform.python_version()}", flush=True)
    sass = sass_loop_stats(args.sass) if args.sass and Path(args.sass).exists() else None
    if sass:
        print(f"fused kernel layer loop (SASS, 32x32): {sass['per_entry']:.2f} instructions per entry and layer: "
              + " ".join(f"{k} {v:.2f}" for k, v in list(sass["mix"].items())[:10]), flush=True)
    rng = np.random.default_rng(2020)
    side = args.pairs_side
    rows = []
    for label, H, W, depth, padded in CONFIGS:
        imgs = stroke_images(rng, 2 * side, size=28, pad=2 if padded else 0)
        X, Z = imgs[:side], imgs[side:]
        # baseline: one pair at a time
        base = PerLayerCNTK(H, W)
        nb = min(args.baseline_pairs, side)
        bpairs = [(k, (k * 7 + 3) % side) for k in range(nb)]
        base.pairs(X, Z, bpairs[:2], depth=depth, gap=True, fix=False)  # compile + warm up
        sync()
        t0 = time.perf_counter()
        bvals = base.pairs(X, Z, bpairs, depth=depth, gap=True, fix=False)
        sync()
        tb = (time.perf_counter() - t0) / nb
        # fused
        tf, K = time_fused(X, Z, depth)
        npairs = side * side
        us = tf / npairs * 1e6
        fvals = np.array([K[i, j] for i, j in bpairs])
        agree = float(np.max(np.abs(fvals - bvals) / np.abs(bvals)))
        fl, flops, trans = floor_us(H, W, depth, 1, card, args.transcendental_cost)
        row = dict(config=label, card=card["name"], baseline_us=tb * 1e6, baseline_pairs=nb,
                   fused_us=us, fused_pairs=npairs, speedup=tb * 1e6 / us, floor_us=fl,
                   ratio_to_floor=us / fl, flops_per_pair=flops, transcendentals_per_pair=trans,
                   fused_vs_baseline_max_rel=agree)
        if sass:
            # issue bound: the layer loop's instructions at 4 warp-instructions per clock per SM
            ib = float(H * W) ** 2 * (depth - 1) * sass["per_entry"] / (card["sms"] * 128 * card["clock_mhz"] * 1e6)
            row.update(issue_bound_us=ib * 1e6, ratio_to_issue_bound=us / (ib * 1e6))
        rows.append(row)
        print(f"{label}: baseline {tb * 1e6:9.1f} us/pair ({nb} pairs), fused {us:7.2f} us/pair "
              f"({npairs} pairs), speedup {tb * 1e6 / us:6.1f}x, floor {fl:5.1f} us, "
              f"ratio {us / fl:4.2f}, fused vs baseline max rel diff {agree:.1e}", flush=True)

    variants = []
    if args.variants:
        H, W, depth = 32, 32, 20
        imgs = stroke_images(rng, 2 * side, size=28, pad=2)
        X, Z = imgs[:side], imgs[side:]
        ref = None
        try:
            from mnk.kernels.cntk_cpu import cntk_gram_cpu

            ref = cntk_gram_cpu(X[:4], Z[:3], depth=depth, gap=True)
        except Exception as err:  # noqa: BLE001
            print(f"(no CPU reference for the variants: {err})")
        fl = floor_us(H, W, depth, 1, card, args.transcendental_cost)[0]
        for v in [dict(ACOS_POLY=1, warps=4), dict(ACOS_POLY=1, warps=8),
                  dict(ACOS_POLY=1, warps=2), dict(ACOS_POLY=0, warps=4)]:
            tf, K = time_fused(X, Z, depth, variant=v)
            us = tf / (side * side) * 1e6
            err = float(np.max(np.abs(K[:4, :3] - ref) / np.abs(ref))) if ref is not None else float("nan")
            variants.append(dict(variant=v, fused_us=us, ratio_to_floor=us / fl, max_rel_err_vs_cpu=err))
            print(f"variant {v}: {us:.2f} us/pair, ratio to floor {us / fl:.2f}, max rel err vs CPU {err:.1e}",
                  flush=True)

    gram = None
    if args.gram:
        from mnk.kernels.cntk_cuda import cntk_gram_cuda

        n = args.gram
        npairs = n * (n + 1) // 2
        us32 = rows[0]["fused_us"]
        projected = npairs * us32 * 1e-6
        if projected > args.gram_max_seconds:
            print(f"symmetric Gram of {n} images skipped: projected {projected:.0f} s > {args.gram_max_seconds} s")
        else:
            imgs = stroke_images(rng, n, size=28, pad=2)
            sync()
            t0 = time.perf_counter()
            K = cntk_gram_cuda(imgs, depth=20, gap=True, progress=True)
            sync()
            t = time.perf_counter() - t0
            us = t / npairs * 1e6
            evals = np.linalg.eigvalsh(K[:500, :500])
            gram = dict(images=n, pairs=npairs, seconds=t, us_per_pair=us,
                        finite=bool(np.all(np.isfinite(K))), symmetric=bool(np.array_equal(K, K.T)),
                        min_eig_500_rel=float(evals.min() / evals.max()))
            for N in (20000, 32460):
                gram[f"gpu_hours_{N}"] = N * (N + 1) / 2 * us * 1e-6 / 3600
                gram[f"baseline_gpu_hours_{N}"] = N * (N + 1) / 2 * rows[0]["baseline_us"] * 1e-6 / 3600
            print(f"symmetric Gram {n} images (32x32, depth 20, gap): {t:.1f} s end to end, {us:.2f} us/pair; "
                  f"projected {gram['gpu_hours_20000']:.2f} GPU-hours for 20,000 images "
                  f"(baseline {gram['baseline_gpu_hours_20000']:.0f}), {gram['gpu_hours_32460']:.2f} for 32,460 "
                  f"(baseline {gram['baseline_gpu_hours_32460']:.0f}); finite {gram['finite']}, "
                  f"min eig/max eig of 500x500 block {gram['min_eig_500_rel']:.1e}", flush=True)

    lines = [f"Card: {card['name']} ({card['sms']} SMs, {card['clock_mhz']:.0f} MHz max clock)", "",
             "| config | baseline us/pair | fused us/pair | speedup | floor us/pair | fused / floor "
             "| SASS issue bound us/pair | fused / issue bound |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ib = f"{r['issue_bound_us']:.1f} | {r['ratio_to_issue_bound']:.2f}" if "issue_bound_us" in r else "- | -"
        lines.append(f"| {r['config']} | {r['baseline_us']:.1f} | {r['fused_us']:.2f} | {r['speedup']:.1f}x "
                     f"| {r['floor_us']:.1f} | {r['ratio_to_floor']:.2f} | {ib} |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_cntk_gpu.json").write_text(json.dumps(dict(card=card, rows=rows, variants=variants,
                                                                  gram=gram, sass=sass), indent=2))
        (out / "bench_cntk_gpu.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
