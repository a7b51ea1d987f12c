# Small named helpers shared by the rules.
import itertools
import os
import re
import sys
from pathlib import Path

REPO_DIR = Path(workflow.basedir).parent
SRC_DIR = REPO_DIR / "src"
# This process imports `mnk` (block plans, code hashes) from this checkout. Jobs import the
# `mnk` installed in their own environment: each envs/*.yaml installs this checkout
# (`-e ${MNK_REPO}`); PYTHONPATH only serves jobs run without conda, from a venv whose
# `mnk` may come from another checkout (Snakemake drops PYTHONPATH for conda jobs).
sys.path.insert(0, str(SRC_DIR))
os.environ.update(
    MNK_REPO=str(REPO_DIR),
    PYTHONPATH=os.pathsep.join(filter(None, [str(SRC_DIR), os.getenv("PYTHONPATH")])),
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
    """The kernel settings that decide its values (the backend does not: run_setting)."""
    return canonical({k: v for k, v in config["kernel"].items() if k != "backend"})


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


def code_hash(script):
    """`params: code=`: hash of the normalized code behind the rule's script (mnk.codehash).

    Comments, docstrings and mtimes don't change it; a change to code the script runs
    through does, and the params rerun trigger then reruns the rule."""
    from mnk.codehash import code_hash as normalized_code_hash

    return normalized_code_hash(str(REPO_DIR / "scripts" / script), str(SRC_DIR))


def run_setting(value):
    """A params value that is not part of a result's identity (backend, device).

    Snakemake leaves params computed from a job's resources out of the provenance it
    compares for the params rerun trigger (Rule._is_deriving_function), so switching it
    reruns nothing; the job still receives the value."""
    return lambda wildcards, resources: value


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


def run_gpus():
    """GPUs this run may give to jobs: `resources: gpu=N` (the default profile sets the
    GPUs of this machine; unset, e.g. on a cluster, this is 0)."""
    return workflow.global_resources.get("gpu").value or 0


def on_gpu(setting):
    """Whether jobs set to `setting` (cuda | auto | cpu) run on a GPU: `auto` does when
    the run has GPUs (run_gpus). On a cluster, say `cuda` to get GPUs."""
    return setting == "cuda" or (setting == "auto" and run_gpus() > 0)


def kernel_on_gpu():
    return config["kernel"]["type"] == "cntk" and on_gpu(config["kernel"]["backend"])


def gpu_when(setting):
    """`resources: gpu=` for a rule that runs on `setting` (SLURM then requests one)."""
    return 1 if on_gpu(setting) else 0


def conda_env(family, gpu):
    """envs/<family>.yaml, or its CUDA build envs/<family>-cuda<config cuda>.yaml on a GPU."""
    suffix = f"-cuda{config['cuda']}" if gpu else ""
    return f"../../envs/{family}{suffix}.yaml"


def kernel_threads():
    """The numba CPU backend uses 8 threads; the CUDA backend needs one core to feed it."""
    return 2 if kernel_on_gpu() else 8


def meta_learner_runtime(wildcards, attempt):
    """Minutes for MAML/iMAML: 3x the iterations at H200 speed (BENCHMARKS.md), + 15."""
    per_second = 5.0 if wildcards.method == "imaml" else 25.0
    iterations = config[wildcards.method]["options"]["meta_iterations"]
    return int(15 + 3 * iterations / per_second / 60) * attempt
