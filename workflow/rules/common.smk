# Small named helpers shared by the rules.
import itertools
import os
import re
import sys
from pathlib import Path

SRC_DIR = Path(workflow.basedir).parent / "src"
# Jobs import the `mnk` package from this checkout (also inside conda envs and on SLURM).
sys.path.insert(0, str(SRC_DIR))
# (a write, not a required variable: hence update() rather than an envvars directive)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [str(SRC_DIR), os.getenv("PYTHONPATH")]))
)

ARCHIVES = ["images_background", "images_evaluation"]
EXPERIMENT_PATTERN = r"(\d+)way(\d+)shot-(\d+)char-seed(\d+)"
METHODS = ["mnk"] + [m for m in ("maml", "imaml") if config[m]["enabled"]]


wildcard_constraints:
    exp=EXPERIMENT_PATTERN,
    archive="|".join(ARCHIVES),
    block=r"(train|cross|test)-\d+-\d+",


def canonical(value):
    """Dicts with sorted keys, recursively: reordering keys in the config file is no change."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def experiment_ids():
    """One id per point of the experiments grid: way x shot x n_characters x seeds."""
    grid = config["tasks"]
    return [
        f"{way}way{shot}shot-{chars}char-seed{seed}"
        for way, shot, chars, seed in itertools.product(
            grid["way"], grid["shot"], grid["n_characters"], grid["seeds"]
        )
    ]


def experiment(wildcards):
    way, shot, chars, seed = map(
        int, re.fullmatch(EXPERIMENT_PATTERN, wildcards.exp).groups()
    )
    return {"way": way, "shot": shot, "n_characters": chars, "seed": seed}


def task_spec(wildcards):
    """Everything that decides an experiment's tasks (params of make_tasks)."""
    keys = ("split", "query", "enlarge_ratio", "n_test_tasks", "n_val_tasks")
    return canonical({**experiment(wildcards), **{k: config["tasks"][k] for k in keys}})


def kernel_params(wildcards=None):
    return canonical(config["kernel"])


def kernel_blocks(wildcards):
    """Names of the kernel blocks of one experiment (derived from the config alone)."""
    from mnk.blocks import plan_blocks

    spec = task_spec(wildcards)
    task_size = spec["way"] * (spec["shot"] + spec["query"])
    n_train = spec["n_characters"] * (spec["shot"] + spec["query"])
    blocks = plan_blocks(
        n_train, spec["n_test_tasks"], task_size, config["kernel"]["block_size"]
    )
    return [block.name for block in blocks]


def block_files(wildcards):
    return expand(
        "results/kernels/{exp}/blocks/{block}.npz",
        exp=wildcards.exp,
        block=kernel_blocks(wildcards),
    )


def package_sources(*modules):
    """Source files of `mnk` modules, as inputs: editing the library reruns its users."""
    files = []
    for module in ("__init__", "io", "runtime") + modules:
        path = SRC_DIR / "mnk" / module
        files += (
            sorted(map(str, path.glob("*.py"))) if path.is_dir() else [f"{path}.py"]
        )
    return files


def encoder_input(wildcards):
    if config["mnk"]["targets"] == "encoder":
        return f"results/encoder/{wildcards.exp}/encoder.pt"
    return []


def metrics_files():
    return expand(
        "results/{method}/{exp}/metrics.json", method=METHODS, exp=experiment_ids()
    )


def final_outputs():
    return [
        "results/summary.csv",
        "results/figures/accuracy.png",
        "results/figures/cost.png",
        "results/figures/kernel_heatmap.png",
    ]


def kernel_pair_seconds():
    """Rough seconds per image pair, for SLURM runtime requests (BENCHMARKS.md)."""
    k = config["kernel"]
    pixels = (config["data"]["image_size"] + 2 * k["pad"]) ** 2
    if k["type"] == "ntk":
        return 1e-6
    # gap couples all P^2 offsets; the trace needs only the zero offset.
    work = k["depth"] * pixels * (pixels if k["gap"] else 1)
    on_gpu = k["backend"] == "cuda"
    # Measured: ~33 us per pair at 32x32, depth 20, gap on an H200 (BENCHMARKS.md).
    return work * (1.6e-12 if on_gpu else 2e-9) + 1e-6


def kernel_block_runtime(wildcards, attempt):
    """Minutes for one kernel block: 3x the estimate, doubled on each retry."""
    pairs = config["kernel"]["block_size"] ** 2
    return int(10 + 3 * pairs * kernel_pair_seconds() / 60) * attempt


def kernel_block_mem_mb(wildcards, attempt):
    size = config["kernel"]["block_size"]
    return (2000 + 3 * 8 * size * size // 10**6) * attempt


def config_hash(cfg):
    """Short hash of the whole config, recorded with every summary row."""
    import hashlib
    import json

    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def kernel_matrix_mem_mb(exp, attempt=1):
    """Memory for rules that hold an experiment's whole kernel (float64 K, its mask, copies)."""
    way, shot, chars, _ = map(int, re.fullmatch(EXPERIMENT_PATTERN, exp).groups())
    per_class = shot + config["tasks"]["query"]
    n = (chars + config["tasks"]["n_test_tasks"] * way) * per_class
    return (4000 + 27 * n * n // 10**6) * attempt


def experiment_mem_mb(wildcards, attempt):
    return kernel_matrix_mem_mb(wildcards.exp, attempt)


def figures_mem_mb(wildcards, attempt):
    return kernel_matrix_mem_mb(experiment_ids()[-1], attempt)


def gpu_when(device):
    """`resources: gpu=` for a rule that runs on `device` (SLURM then requests one)."""
    return 1 if device == "cuda" else 0


def meta_learner_runtime(wildcards, attempt):
    """Minutes for MAML/iMAML: 3x the iterations at H200 speed (BENCHMARKS.md), + 15."""
    per_second = 5.0 if wildcards.method == "imaml" else 25.0
    options = config[wildcards.method]["options"]
    # an `epochs` budget: at most n_characters meta-updates per epoch (mnk.maml n_updates)
    iterations = (
        options.get("meta_iterations")
        or options.get("epochs", 200) * experiment(wildcards)["n_characters"]
    )
    return int(15 + 3 * iterations / per_second / 60) * attempt
