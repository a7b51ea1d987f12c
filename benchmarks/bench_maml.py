"""Benchmark of the MAML / iMAML baselines (src/mnk/maml.py).

Mode 1 (default): meta-iterations per second (meta-gradient + Adam step) of the vmapped
torch.func implementation against a plain per-task loop (the structure `higher`
imposes), 5-way 1-shot, random 28x28 inputs, on CPU and (if available) CUDA:

    python benchmarks/bench_maml.py [--devices cpu,cuda] [--meta-batch 16,4] [--budget 5]

Mode 2 (--omniglot FILE.npz, the preprocessed file of the pipeline): the standard
full-Omniglot setting of the MAML paper -- 5-way 1-shot, conv4, the 964 background
characters x 4 rotations as training classes, a fixed pool of many training tasks,
validation tasks from training characters, test tasks from the 659 evaluation
characters -- trained for a wall-clock budget, printing test accuracy (selected on val)
and time:

    python benchmarks/bench_maml.py --omniglot omniglot.npz --method maml --minutes 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from mnk.methods import maml as M
from mnk.methods.nets import build_network

CONFIGS = [
    # label, method, impl, extra
    ("MAML 2nd order", "maml", "vmap", {"first_order": False}),
    ("MAML 2nd order", "maml", "loop", {"first_order": False}),
    ("MAML 1st order", "maml", "vmap", {"first_order": True}),
    ("MAML 1st order", "maml", "loop", {"first_order": True}),
    ("iMAML T16 K5", "imaml", "vmap", {}),
    ("iMAML T16 K5", "imaml", "loop", {}),
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(
    method, impl, extra, *, device, meta_batch, network, hidden, way, shot, query, budget, seed=0
):
    torch.manual_seed(seed)
    opts = M.options_from_config(
        method, {"network": network, "hidden": hidden, "implementation": impl, **extra}
    )
    model = build_network(network, n_classes=way, image_size=(28, 28), hidden=hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.meta_lr)
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(meta_batch, way * shot, 1, 28, 28, generator=g).to(device)
    xq = torch.rand(meta_batch, way * query, 1, 28, 28, generator=g).to(device)
    ys = torch.arange(way).repeat_interleave(shot).repeat(meta_batch, 1).to(device)
    yq = torch.arange(way).repeat_interleave(query).repeat(meta_batch, 1).to(device)
    batch = (xs, ys, xq, yq)
    meta_gradient = M.meta_gradient_fn(method, opts)  # the training loop's own dispatch

    def step():
        grads, loss, acc = meta_gradient(model, dict(model.named_parameters()), batch)
        for k, p in model.named_parameters():
            p.grad = grads[k]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if (elapsed >= budget and n >= 2) or elapsed >= 4 * budget:
            break
    return n / elapsed, n


def speed_table(args):
    devices = [d for d in args.devices.split(",") if d]
    rows = []
    for dev_name in devices:
        if dev_name == "cuda" and not torch.cuda.is_available():
            print("(cuda not available: skipped)", file=sys.stderr)
            continue
        device = torch.device(dev_name)
        dev_label = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)"
        )
        for mb in [int(b) for b in args.meta_batch.split(",")]:
            for label, method, impl, extra in CONFIGS:
                if args.only and method not in args.only.split(","):
                    continue
                ips, n = bench_one(
                    method,
                    impl,
                    extra,
                    device=device,
                    meta_batch=mb,
                    network=args.network,
                    hidden=args.hidden,
                    way=args.way,
                    shot=args.shot,
                    query=args.query,
                    budget=args.budget,
                )
                rows.append((dev_label, mb, label, impl, ips, n))
                print(
                    f"  {dev_label:24s} mb={mb:<3d} {label:15s} {impl:5s} {ips:9.3f} it/s ({n} its)",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"\nMeta-iterations/s, {args.way}-way {args.shot}-shot, {args.query} queries/class, "
        f"{args.network} hidden {args.hidden}, torch {torch.__version__}\n"
    )
    print("| device | meta-batch | method | vmap it/s | loop it/s | speed-up |")
    print("|---|---|---|---|---|---|")
    by = {(r[0], r[1], r[2], r[3]): r[4] for r in rows}
    seen = []
    for r in rows:
        key = (r[0], r[1], r[2])
        if key in seen:
            continue
        seen.append(key)
        v, lp = by.get(key + ("vmap",)), by.get(key + ("loop",))
        sp = f"{v / lp:.2f}x" if v and lp else "-"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {v:.3f} | {lp:.3f} | {sp} |")


# --------------------------------------------------------------- full Omniglot run


def standard_omniglot_tasks(
    npz, *, n_train_tasks, n_val_tasks, n_test_tasks, query_train, query_test, way=5, shot=1, seed=0
):
    """Standard MAML-paper Omniglot: background characters x 4 rotations train, the
    evaluation characters (unrotated) test. Returns (images, tasks)."""
    d = np.load(npz)
    images, character, split = d["images"], d["character"], d["split"]
    rng = np.random.default_rng(seed)
    train_idx = np.flatnonzero(split == 0)
    test_idx = np.flatnonzero(split == 1)
    rotated = [np.rot90(images[train_idx], k, axes=(1, 2)) for k in range(4)]
    all_images = np.concatenate(rotated + [images[test_idx]]).astype(np.float32)
    n_tr = len(train_idx)
    classes_train = {}
    for k in range(4):
        for j, gi in enumerate(train_idx):
            classes_train.setdefault((int(character[gi]), k), []).append(k * n_tr + j)
    classes_test = {}
    for j, gi in enumerate(test_idx):
        classes_test.setdefault(int(character[gi]), []).append(4 * n_tr + j)
    tr_keys = list(classes_train)
    te_keys = list(classes_test)

    def sample(pool, keys, n_tasks, query):
        s_all, q_all = [], []
        for _ in range(n_tasks):
            chosen = rng.choice(len(keys), way, replace=False)
            s, q = [], []
            for c in chosen:
                ids = rng.permutation(pool[keys[c]])
                s.append(ids[:shot])
                q.append(ids[shot : shot + query])
            s_all.append(np.concatenate(s))
            q_all.append(np.concatenate(q))
        return np.asarray(s_all, np.int64), np.asarray(q_all, np.int64)

    tasks = {"way": np.int64(way), "shot": np.int64(shot), "query": np.int64(query_test)}
    for name, pool, keys, n, q in (
        ("train", classes_train, tr_keys, n_train_tasks, query_train),
        ("val", classes_train, tr_keys, n_val_tasks, query_test),
        ("test", classes_test, te_keys, n_test_tasks, query_test),
    ):
        s, qq = sample(pool, keys, n, q)
        tasks[f"{name}_support"] = s
        tasks[f"{name}_query"] = qq
        tasks[f"{name}_support_labels"] = np.tile(np.repeat(np.arange(way), shot), (n, 1))
        tasks[f"{name}_query_labels"] = np.tile(np.repeat(np.arange(way), q), (n, 1))
    return all_images, tasks


def omniglot_run(args):
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    images, tasks = standard_omniglot_tasks(
        args.omniglot,
        n_train_tasks=args.train_tasks,
        n_val_tasks=args.val_tasks,
        n_test_tasks=args.test_tasks,
        query_train=args.query,
        query_test=args.test_query,
    )
    print(
        f"tasks built in {time.perf_counter() - t0:.1f} s: {len(images)} images, "
        f"{len(tasks['train_support'])} training tasks",
        flush=True,
    )
    # a fixed pool of many tasks (this mode's tasks carry no per-image characters)
    opts = {"network": "conv4", "hidden": 64, "task_sampling": "fixed"}
    if args.method == "maml":
        # Finn et al. 2017, Omniglot 5-way 1-shot: meta-batch 32, 1 step lr 0.4, 3 at test
        opts.update(meta_batch_size=32, inner_steps=1, inner_lr=0.4, test_inner_steps=3)
    opts.update(json.loads(args.options))
    if args.iterations:
        opts["meta_iterations"] = args.iterations
    # calibrate iterations to the wall-clock budget with a short probe (includes warm-up:
    # an overestimate of the per-iteration time)
    probe = dict(opts, meta_iterations=10, eval_every=10**9)
    t = time.perf_counter()
    small = dict(tasks)
    for s in ("val", "test"):
        for key in ("support", "query", "support_labels", "query_labels"):
            small[f"{s}_{key}"] = tasks[f"{s}_{key}"][:5]
    if not args.iterations:
        M.train_and_evaluate(
            images, small, method=args.method, options=probe, seed=0, device=device, progress=False
        )
    per_it = (time.perf_counter() - t) / 10
    iterations = max(20, int(args.minutes * 60 * 0.8 / per_it) // 100 * 100)
    opts.setdefault("meta_iterations", iterations)
    opts.setdefault("eval_every", max(10, opts["meta_iterations"] // 8))
    print(
        f"~{per_it * 1000:.0f} ms/iteration (probe) -> {opts['meta_iterations']} iterations",
        flush=True,
    )
    metrics, _ = M.train_and_evaluate(
        images,
        tasks,
        method=args.method,
        options=opts,
        seed=0,
        device=device,
        progress=False,
        log=print,
    )
    metrics.pop("options")
    print(json.dumps(metrics, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--meta-batch", default="16,4")
    p.add_argument("--network", default="conv3")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--query", type=int, default=15, help="queries per class (training tasks)")
    p.add_argument("--budget", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--only", default="", help="comma list of methods (maml, imaml)")
    p.add_argument("--threads", type=int, default=0)
    # full-Omniglot mode
    p.add_argument("--omniglot", default="")
    p.add_argument("--method", default="maml", choices=M.METHODS)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--iterations", type=int, default=0, help="meta-iterations (0: from --minutes)")
    p.add_argument("--device", default="")
    p.add_argument("--train-tasks", type=int, default=50000)
    p.add_argument("--val-tasks", type=int, default=200)
    p.add_argument("--test-tasks", type=int, default=600)
    p.add_argument("--test-query", type=int, default=19)
    p.add_argument("--options", default="{}", help="JSON dict of option overrides")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.omniglot:
        omniglot_run(args)
    else:
        speed_table(args)


if __name__ == "__main__":
    main()
