"""Seconds and peak memory of mnk.methods.mnk.mnk_predict for 60, 600 and 3,000 training tasks.

5-way 1-shot, 19 queries per class (5 support + 95 query images per task), 100 test
tasks, a random positive definite kernel over ``--n-images`` images (20 per class, like
Omniglot), default options (meta_time = inf, ridge 1e-5, both normalisations). Both
solvers: "dense" forms the MNK training block Phi[train, train] (M x M, M = 95 x
n_train_tasks, 8 M^2 bytes); "lowrank" works in the U x U image space (U = distinct
images used; 4 U^2 bytes x 8). A configuration whose estimated memory exceeds what the
device has is reported as "does not fit" instead of run.

    .venv/bin/python benchmarks/bench_mnk_solver.py [--tasks 60 600 3000] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import torch

from mnk.methods.mnk import _CHUNK_BYTES, MNKOptions, TaskSet, mnk_memory_bytes, mnk_predict

WAY, SHOT, QUERY_PER_CLASS, PER_CLASS = 5, 1, 19, 20
GiB = 2**30


def make_kernel(n_images: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n_images, 64))
    K = F @ F.T / 64.0
    K[np.diag_indices(n_images)] += 0.5  # PD, well away from singular
    return K


def make_tasks(n_tasks: int, n_images: int, rng: np.random.Generator):
    n_classes = n_images // PER_CLASS
    cls = np.stack([rng.choice(n_classes, WAY, replace=False) for _ in range(n_tasks)])  # (t, way)
    pick = np.argsort(rng.random((n_tasks, WAY, PER_CLASS)), axis=-1)[..., : SHOT + QUERY_PER_CLASS]
    img = cls[..., None] * PER_CLASS + pick  # (t, way, 20)
    S = img[..., :SHOT].reshape(n_tasks, -1)
    Q = img[..., SHOT:].reshape(n_tasks, -1)
    ys = np.broadcast_to(np.eye(WAY)[:, None, :], (WAY, SHOT, WAY)).reshape(-1, WAY)
    yq = np.broadcast_to(np.eye(WAY)[:, None, :], (WAY, QUERY_PER_CLASS, WAY)).reshape(-1, WAY)
    return S, Q, np.broadcast_to(ys, (n_tasks,) + ys.shape), np.broadcast_to(yq, (n_tasks,) + yq.shape)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    def __init__(self):
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def available_bytes(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free * 0.9)
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return int(info["MemAvailable"] * 0.85)


def estimate(solver: str, device: str, n_tr: int, n_te: int, n_q: int, U: int) -> int:
    if solver == "dense":
        extra = 8 * (n_tr * n_q) ** 2 if device == "cuda" else 0  # torch Cholesky copies
        return mnk_memory_bytes(n_tr, n_te, n_q, U) + extra
    return 8 * 4 * U * U + _CHUNK_BYTES


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, nargs="+", default=[60, 600, 3000])
    ap.add_argument("--test-tasks", type=int, default=100)
    ap.add_argument("--n-images", type=int, default=8000, help="images in the kernel (20 per class)")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if available")
    ap.add_argument("--solvers", nargs="+", default=["dense", "lowrank"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    K = make_kernel(args.n_images)
    rng = np.random.default_rng(1)
    teS, teQ, teYs, _ = make_tasks(args.test_tasks, args.n_images, rng)
    tasks = {n: make_tasks(n, args.n_images, rng) for n in args.tasks}
    n_q = WAY * QUERY_PER_CLASS

    print(f"# mnk_predict benchmark: {WAY}-way {SHOT}-shot, {n_q} queries/task, {args.test_tasks} test "
          f"tasks, {args.n_images} images, float64, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    hdr = f"| {'device':6} | {'solver':7} | {'train tasks':>11} | {'M = 95 x tasks':>14} | {'U images':>8} | {'seconds':>8} | {'peak mem GiB':>12} | note"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|---|")
    results = {}
    for device in devices:
        for solver in args.solvers:
            for n_tr in args.tasks:
                trS, trQ, trYs, trYq = tasks[n_tr]
                U = len(np.unique(np.concatenate([a.ravel() for a in (trS, trQ, teS, teQ)])))
                need = estimate(solver, device, n_tr, args.test_tasks, n_q, U)
                have = available_bytes(device)
                row = f"| {device:6} | {solver:7} | {n_tr:>11} | {n_tr * n_q:>14,} | {U:>8} |"
                if need > have:
                    print(f"{row} {'-':>8} | {need / GiB:>12.1f} | does not fit: needs ~{need / GiB:.0f} GiB, "
                          f"{have / GiB:.0f} GiB available", flush=True)
                    continue
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                with PeakRSS() as mon:
                    pred = mnk_predict(K, TaskSet(trS, trQ, trYs, trYq), TaskSet(teS, teQ, teYs),
                                       MNKOptions(device=device, solver=solver))
                    if device == "cuda":
                        torch.cuda.synchronize()
                sec = time.perf_counter() - t0
                peak = torch.cuda.max_memory_allocated() if device == "cuda" else mon.peak
                results[(device, solver, n_tr)] = pred
                note = "peak GPU allocation" if device == "cuda" else "peak process RSS"
                other = results.get((device, "dense" if solver == "lowrank" else "lowrank", n_tr))
                if other is not None:
                    note += f"; max |dense - lowrank| = {np.abs(other - pred).max():.1e}"
                print(f"{row} {sec:>8.2f} | {peak / GiB:>12.2f} | {note}", flush=True)


if __name__ == "__main__":
    main()
