"""Checks that the config alone decides, run by `mnk.study.config.parse_config` right after
schema validation (the Snakefile's, and `make cost`'s).

The schema checks each key on its own; these check combinations of keys and facts about
Omniglot, so that a config that cannot work fails before any download or job, naming the
keys, instead of hours later inside a job. Every problem found is reported at once.

Plain Python (no numpy, no torch): Snakemake's own environment runs this. Keys these checks
do not know are ignored, and a missing key is the schema's business, not theirs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from mnk.data.omniglot import ARCHIVES, DRAWERS, pool_sizes
from mnk.data.sources import stale_archive_problem
from mnk.infra.checks import as_list
from mnk.kernels.options import KernelOptions
from mnk.methods.options import GRID_KEYS, OPTION_CLASSES, EncoderOptions, feature_side
from mnk.tasks.spec import grid_problems

GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")  # NVIDIA driver, ROCm


class ConfigError(ValueError):
    """A config that cannot work; the message names the keys."""


def config_problems(config: dict, workdir: Path = Path(".")) -> list[str]:
    """Every problem the config alone decides (no data, no machine): the parse's checks."""
    tasks = config.get("tasks", {})
    dataset = config.get("data", {}).get("dataset", "omniglot")
    if dataset == "sinusoid":  # regression tasks: the tasks, kernel and encoder sections do not apply
        return [*nan_problems(config), *mnk_problems(config.get("mnk", {}), tasks), *sinusoid_problems(config)]
    return [
        *nan_problems(config),
        *sinusoid_problems(config),
        *task_problems(tasks, dataset),
        *task_list_problems(tasks, Path(workdir)),
        *kernel_problems(config.get("kernel", {})),
        *kernel_source_problems(config),
        *mnk_problems(config.get("mnk", {}), tasks),
        *network_problems(config),
    ]


def nan_problems(value, key: str = "") -> list[str]:
    """Every NaN in the config, by key: NaN passes every bound of the schema (no comparison
    with NaN is true), so a NaN time or rate would otherwise fail only inside a job."""
    if isinstance(value, dict):
        return [p for name, item in value.items() for p in nan_problems(item, f"{key}.{name}" if key else str(name))]
    if isinstance(value, (list, tuple)):
        return [p for k, item in enumerate(value) for p in nan_problems(item, f"{key}[{k}]")]
    if isinstance(value, float) and math.isnan(value):
        return [f"{key} is NaN; give a number"]
    return []


def task_problems(tasks: dict, dataset: str = "omniglot") -> list[str]:
    """Every (way, shot, n_characters) of the grid must make tasks of the chosen split.

    The rules of one experiment's settings are TaskSpec's (mnk.tasks.spec); Omniglot's counts
    (20 images per character, the split's characters) bound the grid for `data.dataset:
    omniglot` only; a folder dataset's counts are checked against the data
    (preprocess_folder: shot + query per class; make_pool: characters per side)."""
    ways, shots, sizes = (as_list(tasks.get(key, [])) for key in ("way", "shot", "n_characters"))
    problems = grid_problems(tasks)
    query = tasks.get("query")
    if dataset != "omniglot":
        if tasks.get("split") == "original":
            problems.append("tasks.split 'original' is Omniglot's first-1200-characters split; a folder dataset "
                            "has its own (data.folder.test_root or data.folder.split): use tasks.split background")
        return problems
    if query is not None:
        for shot in shots:
            if shot + query > DRAWERS:
                problems.append(
                    f"tasks.shot + tasks.query = {shot} + {query} = {shot + query} exceeds the {DRAWERS} "
                    "images (drawers) of an Omniglot character"
                )
    if tasks.get("split") is not None:
        problems += _pool_problems(tasks, ways, sizes)
    return problems


def _pool_problems(tasks: dict, ways: list, sizes: list) -> list[str]:
    split = tasks["split"]
    n_train, n_test = pool_sizes(split)
    problems = []
    # Validation characters (where configured) come from the training side, disjoint from the
    # training characters of every experiment (those are nested, so the largest counts).
    n_val = tasks.get("n_val_characters") or 0
    needed = max(sizes, default=0) + n_val
    if needed > n_train:
        what = (f"max(tasks.n_characters) {max(sizes)} + tasks.n_val_characters {n_val} = {needed}"
                if n_val else f"tasks.n_characters {max(sizes)}")
        problems.append(f"{what} exceeds the {n_train} training characters of tasks.split {split!r}")
    if ways and max(ways) > n_test:
        problems.append(f"tasks.way {max(ways)} exceeds the {n_test} test characters of tasks.split {split!r}")
    return problems


def task_list_problems(tasks: dict, workdir: Path = Path(".")) -> list[str]:
    """tasks.test_tasks: the list exists, is valid, and its way, shot and query are the grid's.

    One way and one shot (the list fixes them) and the list's queries per class as
    tasks.query (an image pool's validation and test tasks have one size, mnk.study.plan)."""
    from mnk.tasks.tasklist import TaskListError, task_list_shape

    path = tasks.get("test_tasks")
    if not path:
        return []
    ways, shots = as_list(tasks.get("way", [])), as_list(tasks.get("shot", []))
    if len(ways) != 1 or len(shots) != 1:
        return [f"tasks.test_tasks: the list fixes way and shot, so tasks.way ({ways}) and tasks.shot "
                f"({shots}) must hold one value each"]
    try:
        shape = task_list_shape(list_path(path, workdir), way=ways[0], shot=shots[0])
    except TaskListError as error:
        return [f"tasks.test_tasks: {error}"]
    if tasks.get("query") is not None and shape["query"] != tasks["query"]:
        return [f"tasks.test_tasks: the task list has {shape['query']} query images per class but tasks.query "
                f"is {tasks['query']}; set tasks.query to {shape['query']} (an image pool's validation and "
                "test tasks have one size)"]
    return []


def list_path(path, workdir: Path = Path(".")) -> Path:
    """tasks.test_tasks, relative to the working directory."""
    return Path(path) if Path(path).is_absolute() else Path(workdir) / path


def kernel_problems(kernel: dict) -> list[str]:
    """The kernel's own rules (mnk.kernels.options), e.g. a CNTK needs depth >= 2."""
    try:
        KernelOptions.from_section(kernel)
    except (TypeError, ValueError) as error:
        return [str(error)]
    return []


def kernel_source_problems(config: dict) -> list[str]:
    """kernel.source original needs the originals: Omniglot's, without a task list's images."""
    if config.get("kernel", {}).get("source") != "original":
        return []
    dataset = config.get("data", {}).get("dataset", "omniglot")
    if dataset != "omniglot":
        return [f"kernel.source 'original' needs Omniglot's original images, but data.dataset is {dataset!r} "
                "(its images are kept at data.image_size only): use kernel.source auto or preprocessed"]
    if config.get("tasks", {}).get("test_tasks"):
        return ["kernel.source 'original' needs Omniglot's original images, but tasks.test_tasks brings its own "
                "test images (kept at data.image_size only): use kernel.source auto or preprocessed"]
    return []


def mnk_problems(mnk: dict, tasks: dict) -> list[str]:
    problems = []
    r2 = as_list(mnk.get("grid", {}).get("r2", []))
    for key, values in (("mnk.r1", as_list(mnk.get("r1", []))), ("mnk.grid.r2", r2)):
        if any(isinstance(r, (int, float)) and not math.isfinite(r) for r in values):
            problems.append(f"{key} {values} must be finite")
    grid = mnk.get("grid", {})
    settings = math.prod(len(as_list(grid.get(key, [None]))) for key in GRID_KEYS)
    if settings > 1 and not tasks.get("n_val_tasks"):
        problems.append(f"mnk.grid has {settings} settings to choose from but tasks.n_val_tasks is 0: "
                        "selection needs validation tasks (or give the grid one value per key)")
    if mnk.get("solver") == "lowrank":
        finite = [t for t in as_list(grid.get("meta_time", math.inf))
                  if isinstance(t, (int, float)) and math.isfinite(t)]
        if finite:
            problems.append(
                f"mnk.solver 'lowrank' needs mnk.grid.meta_time [.inf], got {finite[0]}: use solver 'dense' "
                "(or 'auto', which solves finite times densely) for a finite meta_time"
            )
        if 0 in r2:
            problems.append("mnk.solver 'lowrank' needs every mnk.grid.r2 > 0: Phi[train, train] has "
                            "rank <= the number of images")
    return problems


def sinusoid_problems(config: dict) -> list[str]:
    """Regression tasks need the points network (mlp) and the sinusoid options; images need a conv net."""
    from mnk.tasks.sinusoid import SinusoidOptions

    regression = config.get("data", {}).get("dataset", "omniglot") == "sinusoid"
    problems = []
    if regression:
        try:
            SinusoidOptions.from_section(config.get("sinusoid") or {})
        except (TypeError, ValueError) as error:
            problems.append(str(error))
    for method, cls in OPTION_CLASSES.items():
        section = config.get(method) or {}
        network = (section.get("options") or {}).get("network", cls.network)
        if section.get("enabled", True) and (network == "mlp") != regression:
            problems.append(f"{method}.options.network {network!r} " + (
                "cannot read the points of regression tasks (data.dataset sinusoid): use mlp" if regression else
                f"takes points, not the images of data.dataset {config.get('data', {}).get('dataset', 'omniglot')!r}: "
                "use conv3, conv4 or imaml4"))
    return problems


def network_problems(config: dict) -> list[str]:
    """Every network must keep a feature map on the data's images (valid convolutions shrink them)."""
    side = (config.get("data") or {}).get("image_size")
    if not isinstance(side, int):
        return []
    padding = (config.get("encoder") or {}).get("padding", EncoderOptions.padding)
    nets = [("the label encoder", "encoder.padding", "conv3", padding)]  # conv3's blocks
    for method, cls in OPTION_CLASSES.items():
        section = config.get(method) or {}
        if section.get("enabled", True):
            options = section.get("options") or {}
            network = options.get("network", cls.network)
            nets.append((f"{method}.options.network {network!r}", f"{method}.options.padding", network,
                         options.get("padding", cls.padding)))
    return [f"{what} with {key} {padding} has no feature map left on data.image_size {side}x{side} "
            f"images: use {'padding 1 or ' if padding == 0 else ''}larger images"
            + (f" (or {key.split('.')[0]}.enabled: false)" if key.endswith("options.padding") else "")
            for what, key, network, padding in nets
            if isinstance(padding, int) and network in ("conv3", "conv4", "imaml4")
            and feature_side(network, side, padding) < 1]


def data_problems(data: dict, workdir: Path, environ) -> list[str]:
    """A mirror download must have a mirror folder (checked only while an archive is missing),
    and an archive already here must be that mirror's; a folder dataset's roots must exist."""
    if data.get("dataset", "omniglot") == "folder":
        return folder_problems(data.get("folder") or {}, workdir)
    env_mirror = environ.get("OMNIGLOT_MIRROR")
    if env_mirror:
        source, mirror, key = "mirror", env_mirror, "$OMNIGLOT_MIRROR"
    else:
        source, mirror, key = data.get("source"), data.get("mirror"), "data.mirror"
    archives = {name: workdir / "results" / "data" / "raw" / f"{name}.zip" for name in ARCHIVES}
    if source != "mirror":
        return []
    if not all(path.is_file() for path in archives.values()):
        if not mirror:
            return ["data.source is 'mirror' but data.mirror is empty and $OMNIGLOT_MIRROR is not set"]
        if not _mirror_folder(mirror, workdir).is_dir():
            return [f"{key}: the Omniglot mirror folder {mirror} does not exist (seen from {workdir.resolve()})"]
    if not mirror:
        return []
    # An archive fetched from another mirror would be kept and preprocessed again and again.
    folder = str(_mirror_folder(mirror, workdir))
    stale = (stale_archive_problem(path, name, folder, key) for name, path in archives.items())
    return [problem for problem in stale if problem]


def _mirror_folder(mirror: str, workdir: Path) -> Path:
    return Path(mirror) if Path(mirror).is_absolute() else workdir / mirror


def folder_problems(folder: dict, workdir: Path) -> list[str]:
    problems = []
    if folder.get("test_root") and folder.get("split") is not None:
        problems.append("data.folder: give either test_root or split, not both")
    for key in ("train_root", "test_root"):
        root = folder.get(key)
        if root and not (Path(root) if Path(root).is_absolute() else workdir / root).is_dir():
            problems.append(f"data.folder.{key}: folder {root} does not exist (seen from {workdir.resolve()})")
    return problems


def gpu_visible(environ=None) -> tuple[bool, str]:
    """(is a GPU visible here, why not): from device files and CUDA_VISIBLE_DEVICES only.

    Cheap on purpose: importing torch or CuPy takes seconds and Snakemake's own environment
    need not have them. A GPU hidden by CUDA_VISIBLE_DEVICES="" or "-1" does not count.
    """
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    if any(Path(path).exists() for path in GPU_DEVICE_FILES):
        return True, ""
    return False, f"no GPU device file ({', '.join(GPU_DEVICE_FILES)}) on this machine"


def check_devices(study, environ=None) -> None:
    """`device: cuda` / `kernel.backend: cuda` need a GPU where the jobs run.

    Called when jobs run on this machine (not for a cluster, whose GPU nodes are elsewhere),
    with the parsed config (mnk.study.config.StudyConfig).
    """
    wanted = [key for key, value in (("device", study.device), ("kernel.backend", study.kernel.backend))
              if value == "cuda"]
    if not wanted:
        return
    ok, why = gpu_visible(environ)
    if not ok:
        raise ConfigError(
            f"{' and '.join(wanted)} 'cuda' but this machine has no usable GPU ({why}); use 'auto' "
            "(GPU when there is one) or 'cpu', or run on a GPU node (--profile profiles/slurm)"
        )
