# Small named helpers shared by the rules.
import os
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

from mnk.study import (
    cost as kernel_cost,
    plan,
)  # noqa: E402 (needs SRC_DIR on sys.path; no numpy)
from mnk.data.omniglot import ARCHIVES  # noqa: E402
from mnk.study.config import SCHEMA, parse_config  # noqa: E402
from mnk.methods import options as mnk_options  # noqa: E402

# The config, validated against the schema (its defaults filled in) and parsed once into
# frozen sections (every problem listed at once, naming its key): nothing below reads the raw
# dict but the whole-config hash of the summary rows.
STUDY = parse_config(config, environ=os.environ, schema=SCHEMA)
CONFIG_HASH = plan.short_hash(config)
EXPERIMENT_PATTERN = plan.experiment_pattern(STUDY)
# The image pools and their kernel blocks, planned once (their number bounded first).
POOLS = plan.pools(STUDY)
plan.check_plan_size(POOLS)
# The test-task list (tasks.test_tasks), checked: its shape and id; None without one.
TEST_TASKS = STUDY.test_tasks
# Baselines without meta-learning: always run (they reuse the kernel and the encoder).
BASELINES = (
    ["kernel_regression"] if STUDY.regression else ["kernel_regression", "prototypes"]
)
METHODS = ["mnk", *BASELINES, *STUDY.enabled]
KERNEL_IDENTITY = plan.kernel_identity(STUDY)
# Torch threads of each rule's job: a fixed number, given as a param too, so that the
# results never depend on how many cores a run has (float sums split by threads).
TORCH_THREADS = {
    "train_encoder": 2,
    "solve_mnk": 2,
    "solve_baseline": 1,
    "train_meta_learner": 1,
}


wildcard_constraints:
    exp=EXPERIMENT_PATTERN,
    archive="|".join(ARCHIVES),
    pool=plan.POOL_PATTERN,
    block=plan.BLOCK_PATTERN,


canonical = plan.canonical


def experiment_ids():
    """One id per point of the experiments grid: way x shot x n_characters x seeds."""
    return plan.experiment_ids(STUDY)


def experiment(wildcards):
    return plan.parse_experiment(wildcards.exp)


def task_spec(wildcards):
    """Everything that decides an experiment's tasks (params of make_tasks: a TaskSpec's
    fields; with a task list, n_test_tasks is the list's)."""
    return canonical({**experiment(wildcards), **STUDY.tasks.shared()})


def dataset_npz():
    """The preprocessed dataset: Omniglot's archives or an image folder (data.dataset)."""
    if STUDY.data.dataset == "folder":
        return "results/data/dataset.npz"
    return "results/data/omniglot.npz"


def originals_input():
    """make_pool keeps the pool's original images when the kernel resamples them (kernel.source)."""
    return (
        "results/data/omniglot_originals.npz"
        if STUDY.kernel_source == "original"
        else []
    )


def image_params():
    """The data settings that decide how an image becomes an array (task-list images too)."""
    return canonical(STUDY.data.params())


def test_tasks_params():
    """make_pool's and make_tasks' view of the task list: {} without one."""
    if not TEST_TASKS:
        return {}
    return {"path": STUDY.tasks.test_tasks, "list_id": TEST_TASKS["list_id"]}


def test_tasks_input():
    return [STUDY.tasks.test_tasks] if TEST_TASKS else []


def folder_fingerprint():
    """Hash of the names, real paths, sizes and mtimes of the images the dataset reads,
    behind symbolic links too (mnk.data.scan, the loader's own walk): edits rerun."""
    from mnk.data.scan import folder_fingerprint as fingerprint

    return fingerprint(STUDY.data.folder_roots) if STUDY.data.folder_roots else ""


def pool_plan(wildcards):
    """The image pool of a `pool` or an `exp` wildcard."""
    if "pool" in wildcards.keys():
        return POOLS[wildcards.pool]
    return POOLS[plan.pool_name(wildcards.exp)]


def pool_spec(wildcards):
    """make_pool's params: the task spec of the pool's largest experiment."""
    pool = POOLS[wildcards.pool]
    spec = {"way": pool.way, "shot": pool.shot, "seed": pool.seed}
    spec["n_characters"] = max(pool.n_characters)
    return canonical({**spec, **STUDY.tasks.shared()})


def pool_params(wildcards):
    return plan.as_params(pool_plan(wildcards))


def block_params(wildcards):
    return plan.as_params(POOLS[wildcards.pool].block(wildcards.block))


def pool_file(name):
    """A file of the experiment's image pool, as an input function."""
    return lambda wildcards: f"results/tasks/{pool_plan(wildcards).name}/{name}"


def kernel_params(wildcards=None):
    """The kernel settings that decide its values (not backend, block_size)."""
    return KERNEL_IDENTITY["kernel"]


def experiment_block_files(wildcards):
    """The pool's blocks that hold some entry of this experiment's kernel."""
    pool = pool_plan(wildcards)
    chars = experiment(wildcards)["n_characters"]
    return [
        f"results/kernels/{pool.name}/blocks/{block.name}.npz"
        for block in pool.experiment_blocks(chars)
    ]


def code_hash(script):
    """`params: code=`: hash of the normalized code behind the rule's script (mnk.infra.codehash).

    Comments, docstrings and mtimes don't change it; a change to code the script runs
    through does, and the params rerun trigger then reruns the rule."""
    from mnk.infra.codehash import code_hash as normalized_code_hash

    return normalized_code_hash(str(REPO_DIR / "scripts" / script), str(SRC_DIR))


def run_setting(value):
    """A params value that is not part of a result's identity (backend, device).

    Snakemake leaves params computed from a job's resources out of the provenance it
    compares for the params rerun trigger (Rule._is_deriving_function), so switching it
    reruns nothing; the job still receives the value."""
    return lambda wildcards, resources: value


def encoder_files(exp):
    """The label encoder of an experiment and its cost.json (measured CPU time)."""
    folder = f"results/encoder/{exp}"
    return {"encoder": f"{folder}/encoder.pt", "encoder_cost": f"{folder}/cost.json"}


def encoder_inputs(wildcards):
    """solve_mnk reads the encoder only when the grid has encoder targets."""
    return encoder_files(wildcards.exp) if "encoder" in STUDY.mnk.targets else {}


def baseline_inputs(wildcards):
    """kernel_regression reads the kernel; prototypes the encoder and the images."""
    if wildcards.method == "kernel_regression":
        return {"kernel": f"results/kernels/{wildcards.exp}/kernel.npz"}
    return {
        **encoder_files(wildcards.exp),
        "images": f"results/tasks/{wildcards.exp}/images.npz",
    }


def metrics_files():
    return expand(
        "results/{method}/{exp}/metrics.json", method=METHODS, exp=experiment_ids()
    )


def final_outputs():
    if STUDY.regression:
        return SINUSOID_OUTPUTS
    return [
        "results/summary.csv",
        "results/per_task.csv",
        "results/paired.csv",
        "results/figures/accuracy.png",
        "results/figures/paired.png",
        "results/figures/cost.png",
        "results/figures/mnk_grid.png",
        "results/figures/mnk_spectrum.png",
    ]


def kernel_block_runtime(wildcards, attempt):
    """Minutes for one kernel block: 3x the estimate (kernel_cost.pair_seconds), doubled on retry."""
    pool = POOLS[wildcards.pool]
    pairs = pool.block(wildcards.block).n_pairs(pool.task_size)
    device = "cuda" if STUDY.kernel.backend == "cuda" else "cpu"
    seconds = pairs * kernel_cost.study_pair_seconds(STUDY, device)
    if device == "cpu":
        seconds /= 8  # CPU-seconds over the rule's threads
    return int(10 + 3 * seconds / 60) * attempt


def kernel_block_mem_mb(wildcards, attempt):
    size = STUDY.kernel.block_size
    return (2000 + 3 * 8 * size * size // 10**6) * attempt


def kernel_matrix_mem_mb(exp, attempt=1):
    """Memory for rules that hold an experiment's whole kernel (float64 K, its mask, copies)."""
    pool = POOLS[plan.pool_name(exp)]
    n_train = pool.n_train_images(plan.parse_experiment(exp)["n_characters"])
    n = n_train + pool.n_images - pool.val_start
    return (4000 + 27 * n * n // 10**6) * attempt


def experiment_mem_mb(wildcards, attempt):
    return kernel_matrix_mem_mb(wildcards.exp, attempt)


def run_gpus():
    """GPUs this run may give to jobs: `resources: gpu=N` (the default profile sets the
    GPUs of this machine; unset, e.g. on a cluster, this is 0)."""
    return workflow.global_resources.get("gpu").value or 0


def on_gpu(setting):
    """Whether jobs set to `setting` (cuda | auto | cpu) run on a GPU: `auto` does when
    the run has GPUs (run_gpus). On a cluster, say `cuda` to get GPUs."""
    return setting == "cuda" or (setting == "auto" and run_gpus() > 0)


def kernel_on_gpu():
    return STUDY.kernel.options.type == "cntk" and on_gpu(STUDY.kernel.backend)


def gpu_when(setting):
    """`resources: gpu=` for a rule that runs on `setting` (SLURM then requests one)."""
    return 1 if on_gpu(setting) else 0


def conda_env(family, gpu):
    """envs/<family>.yaml, or its CUDA build envs/<family>-cuda<N>.yaml (N: STUDY.cuda) on a GPU."""
    suffix = f"-cuda{STUDY.cuda}" if gpu else ""
    return f"../../envs/{family}{suffix}.yaml"


def kernel_threads():
    """The numba CPU backend uses 8 threads; the CUDA backend needs one core to feed it."""
    return 2 if kernel_on_gpu() else 8


def meta_learner_runtime(wildcards, attempt):
    """Minutes for MAML/iMAML: 3x the meta-updates at H200 speed (mnk.study.cost), + 15."""
    updates = kernel_cost.meta_updates(STUDY, wildcards.method, wildcards.exp)
    per_second = kernel_cost.META_ITERATIONS_PER_SECOND[wildcards.method]
    return int(15 + 3 * updates / per_second / 60) * attempt


def on_job_device():
    """Whether the torch jobs (MAML, iMAML, MNK solves, the label encoder) run on a GPU."""
    return on_gpu(STUDY.device)


def learner_params(wildcards):
    """A meta-learner's options, as plain data (mnk.methods.options.options_from_config)."""
    return canonical(mnk_options.learner_params(STUDY.learner(wildcards.method)))
