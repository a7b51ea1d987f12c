"""MAML / iMAML options: one frozen, validated object per method, built once from its config
section (errors name the key) and passed whole.

Plain Python (no numpy, no torch): the Snakefile and `make cost` read the training budget
(`n_updates`) from here without importing the training code.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

from mnk.infra.checks import is_bool, is_int, is_number, require

NETWORKS = ("conv3", "conv4", "imaml4", "mlp")  # built by mnk.methods.nets.build_network
PADDINGS = (0, 1)  # zero padding of every 3x3 convolution: 0 ("valid", the original MAML net and encoder) or 1
ENCODER_POOLING = ("flatten", "mean")  # the encoder's last feature map: flattened (the original) or averaged

METHODS = ("maml", "imaml")
TASK_SAMPLING = ("resample", "fixed")
IMPLEMENTATIONS = ("vmap", "loop")
EPOCH_UPDATES = ("all", "last")
AUTO_META_BATCH_CAP = 32  # the original: batchsz = min(32, n_characters)


def feature_side(network: str, side: int, padding: int) -> int:
    """Side of `network`'s last feature map on side x side inputs (< 1: the input is too small).

    conv3, imaml4 and the label encoder: blocks of [3x3 conv, 2x2 max-pool]; conv4: stride-2 3x3 convs."""
    for _ in range(4 if network in ("conv4", "imaml4") else 3):
        if network == "conv4":
            side = (side + 2 * padding - 3) // 2 + 1
        else:
            side = (side + 2 * padding - 2) // 2
    return side


@dataclass(frozen=True)
class _NetworkInputs:
    """A network's convolution padding and how its inputs are prepared (mnk.methods.inputs).

    Defaults: the original's. The images are stored inverted (background 0, strokes 1);
    `invert: false` shows the networks the files' polarity (1 - x, dark strokes, as the
    original's loader); `standardize` then makes the TRAINING images mean 0, std 1 (one
    scalar each, the original loader's `normalization()`)."""

    padding: int = 0
    invert: bool = False
    standardize: bool = True

    def _validate_network_inputs(self, key) -> None:
        require(is_int(self.padding) and self.padding in PADDINGS, key("padding"), f"one of {PADDINGS}",
                self.padding)
        for name in ("invert", "standardize"):
            require(is_bool(getattr(self, name)), key(name), "true or false", getattr(self, name))


@dataclass(frozen=True)
class _MetaLearnerOptions(_NetworkInputs):
    """Options shared by MAML and iMAML (defaults: the original comparison's protocol)."""

    section: ClassVar[str] = "options"
    network: str = "conv3"
    hidden: int = 64  # channels of every conv layer
    # The MAXIMUM budget: exactly one of `meta_iterations` (meta-updates) and `epochs` (the
    # original: an epoch is n_characters // meta_batch meta-updates, or one with
    # epoch_updates "last"). Training stops earlier, at the validation plateau (`patience`).
    meta_iterations: int | None = None
    epochs: int | None = 200
    epoch_updates: str = "all"
    meta_batch_size: int | str = "auto"  # "auto": min(32, n_characters)
    meta_lr: float = 1e-3  # Adam
    inner_steps: int = 5
    inner_lr: float = 0.1
    test_inner_steps: int = 5
    eval_every: int = 5  # meta-updates, or epochs when `epochs` is set
    # Early stopping: stop once `patience` evaluations in a row did not beat the best
    # validation accuracy so far (strictly); the best checkpoint is then tested, once.
    patience: int = 5
    # The original's number: test accuracy at EVERY evaluation, reported as the maximum
    # over evaluations next to the honest one (config/original.yaml only; costs test passes).
    test_every_evaluation: bool = False
    eval_chunk: int = 100  # tasks per vmap call at evaluation (memory knob only)
    # "vmap" (torch.func.vmap over the tasks of a meta-batch) or "loop" (plain per-task
    # loop; same gradient up to rounding; see BENCHMARKS.md for which is faster where).
    implementation: str = "vmap"
    task_sampling: str = "resample"

    def __post_init__(self):
        self._validate()

    def _key(self, name: str) -> str:
        return f"{self.section}.{name}"

    def _validate(self) -> None:
        k = self._key
        require(self.network in NETWORKS, k("network"), f"one of {NETWORKS}", self.network)
        self._validate_network_inputs(k)
        for name in ("hidden", "eval_every", "eval_chunk", "patience"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, k(name), "an integer >= 1", value)
        for name in ("inner_steps", "test_inner_steps"):
            value = getattr(self, name)
            require(is_int(value) and value >= 0, k(name), "an integer >= 0", value)
        require(is_number(self.inner_lr) and self.inner_lr > 0, k("inner_lr"), "a number > 0",
                 self.inner_lr)
        # meta_lr 0 is allowed: the same run without meta-training (a baseline and a test)
        require(is_number(self.meta_lr) and self.meta_lr >= 0, k("meta_lr"), "a number >= 0",
                 self.meta_lr)
        require((self.meta_iterations is None) != (self.epochs is None), k("meta_iterations"),
                 f"set, or else {k('epochs')}, but not both", (self.meta_iterations, self.epochs))
        for name in ("meta_iterations", "epochs"):
            value = getattr(self, name)
            require(value is None or (is_int(value) and value >= 1), k(name),
                     "an integer >= 1", value)
        require(is_bool(self.test_every_evaluation), k("test_every_evaluation"), "true or false",
                self.test_every_evaluation)
        mb = self.meta_batch_size
        require(mb == "auto" or (is_int(mb) and mb >= 1), k("meta_batch_size"),
                 "an integer >= 1 or 'auto'", mb)
        for name, choices in (("implementation", IMPLEMENTATIONS), ("task_sampling", TASK_SAMPLING),
                              ("epoch_updates", EPOCH_UPDATES)):
            value = getattr(self, name)
            require(value in choices, k(name), f"one of {choices}", value)

    # ---- the budget of one experiment with `n_characters` training characters
    def meta_batch(self, n_characters: int) -> int:
        if self.meta_batch_size == "auto":
            return min(AUTO_META_BATCH_CAP, n_characters)
        return int(self.meta_batch_size)

    def updates_per_epoch(self, n_characters: int) -> int:
        if self.epochs is None or self.epoch_updates == "last":
            return 1
        return max(1, n_characters // self.meta_batch(n_characters))

    def n_updates(self, n_characters: int) -> int:
        """The maximum number of meta-updates (training stops earlier at the plateau)."""
        if self.epochs is None:
            return int(self.meta_iterations)
        return int(self.epochs) * self.updates_per_epoch(n_characters)

    def eval_interval(self, n_characters: int) -> int:
        """Meta-updates between evaluations."""
        return int(self.eval_every) * self.updates_per_epoch(n_characters)


@dataclass(frozen=True)
class MAMLOptions(_MetaLearnerOptions):
    """MAML; defaults of the original comparison (maml_utils.py): 5 steps of lr 0.1."""

    section: ClassVar[str] = "maml.options"
    first_order: bool = False  # False: second-order MAML (default); True: FOMAML

    def _validate(self) -> None:
        super()._validate()
        require(is_bool(self.first_order), self._key("first_order"),
                 "true or false", self.first_order)


@dataclass(frozen=True)
class IMAMLOptions(_MetaLearnerOptions):
    """iMAML; defaults of the original comparison (imaml_utils.py): lam 2, T 16, K 5."""

    section: ClassVar[str] = "imaml.options"
    network: str = "imaml4"
    padding: int = 1  # the original iMAML net pads its convolutions
    inner_steps: int = 16  # T
    test_inner_steps: int = 16  # test-time adaptation uses the same proximal objective
    epoch_updates: str = "last"  # the original steps its optimiser once per epoch
    lam: float = 2.0  # proximal regularisation strength lambda
    cg_steps: int = 5  # K
    # CG system A g = grad L_query, A = (1 + cg_damping) I + H / (lam + lam_damping).
    # 0 and 0 (default) is plain CG on the exact implicit system I + H/lam, as the
    # original comparison ran it. The damping (1, 10) is that of the iMAML authors' code
    # (imaml_dev, Learner.matrix_evaluator: regu_coef, lam_damping), NOT of the
    # comparison: an ablation, which may help when I + H/lam is indefinite early on.
    cg_damping: float = 0.0
    lam_damping: float = 0.0
    # The original comparison's bug: its proximal term zips over a generator used up at
    # the first inner step, so only step 1 is regularised (where phi = theta and the term
    # is zero): the inner loop is plain SGD. True reproduces it; False is the algorithm.
    proximal_first_step_only: bool = False

    def _validate(self) -> None:
        super()._validate()
        k = self._key
        require(is_int(self.cg_steps) and self.cg_steps >= 1, k("cg_steps"),
                 "an integer >= 1", self.cg_steps)
        require(is_number(self.lam) and self.lam > 0, k("lam"), "a number > 0", self.lam)
        for name in ("cg_damping", "lam_damping"):
            value = getattr(self, name)
            require(is_number(value) and value >= 0, k(name), "a number >= 0", value)
        require(is_bool(self.proximal_first_step_only),
                 k("proximal_first_step_only"), "true or false", self.proximal_first_step_only)


OPTION_CLASSES = {"maml": MAMLOptions, "imaml": IMAMLOptions}


def options_from_config(method: str, section: Mapping | None = None):
    """The frozen options of `method` from its config section (``<method>.options``).

    Keys not given take the class defaults (the original protocol); giving one of
    `meta_iterations` / `epochs` unsets the other. Unknown keys raise ValueError.
    """
    if method not in OPTION_CLASSES:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    cls = OPTION_CLASSES[method]
    section = dict(section or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in section:
        if key not in fields:
            raise ValueError(
                f"unknown option {cls.section}.{key}; valid options: {sorted(fields)}"
            )
    if "meta_iterations" in section and "epochs" not in section:
        section["epochs"] = None
    if "epochs" in section and "meta_iterations" not in section:
        section["meta_iterations"] = None
    for key, value in section.items():  # YAML may write a float as an int (0.1 vs 1)
        if fields[key].type in ("float", float) and is_int(value):
            section[key] = float(value)
    return cls(**section)


def learner_params(options: _MetaLearnerOptions) -> dict:
    """The options as plain data for a job; `options_from_config(method, params)` gives them back."""
    return dataclasses.asdict(options)


@dataclass(frozen=True)
class EncoderOptions(_NetworkInputs):
    """The `encoder` config section (defaults: the original's settings, meta_cntk_utils.py build_CNN)."""

    width: int = 250  # channels of every conv layer
    epochs: int = 50
    lr: float = 1e-3  # Adam
    batch_size: int = 16
    pooling: str = "flatten"  # the encoding: the flattened last feature map, or its spatial mean

    def __post_init__(self):
        for name in ("width", "epochs", "batch_size"):
            require(is_int(getattr(self, name)) and getattr(self, name) >= 1, f"encoder.{name}",
                    "an integer >= 1", getattr(self, name))
        require(is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0, "encoder.lr", "a finite number > 0",
                self.lr)
        require(self.pooling in ENCODER_POOLING, "encoder.pooling", f"one of {ENCODER_POOLING}", self.pooling)
        self._validate_network_inputs(lambda name: f"encoder.{name}")

    def params(self) -> dict:
        return dataclasses.asdict(self)


TARGETS = ("onehot", "encoder")  # target encodings (mnk.methods.targets)
DECODERS = ("nearest_centroid", "least_squares")
SOLVERS = ("auto", "dense", "lowrank")  # mnk.methods.mnk
# The `mnk` section: the solver's keys, and the grid's under `mnk.grid` (declared order).
SOLVER_KEYS = ("r1", "normalize_ntk", "normalize_mnk", "solver")
GRID_KEYS = ("r2", "meta_time", "inner_time", "targets", "decoder")
MOVED_KEYS = ("inner_time", "meta_time")  # once solver keys, now lists under mnk.grid


@dataclass(frozen=True)
class Setting:
    """One point of MNK's selection grid."""

    r2: float
    meta_time: float
    inner_time: float
    targets: str
    decoder: str


def _times_ok(values) -> bool:
    return bool(values) and all(is_number(t) and t > 0 for t in values)  # inf allowed


@dataclass(frozen=True)
class MNKSection:
    """The `mnk` section: the solver's settings and the grid that validation chooses from."""

    r1: float = 1e-5  # ridge on the base kernel (also kernel regression's)
    normalize_ntk: bool = True
    normalize_mnk: bool = True
    solver: str = "auto"
    r2: tuple[float, ...] = (1e-5,)  # the grid, in declared order
    meta_time: tuple[float, ...] = (math.inf,)
    inner_time: tuple[float, ...] = (math.inf,)
    targets: tuple[str, ...] = ("onehot",)
    decoder: tuple[str, ...] = ("nearest_centroid",)

    def __post_init__(self):
        require(self.solver in SOLVERS, "mnk.solver", f"one of {SOLVERS}", self.solver)
        for name in ("normalize_ntk", "normalize_mnk"):
            require(is_bool(getattr(self, name)), f"mnk.{name}", "true or false", getattr(self, name))
        for name, choices in (("targets", TARGETS), ("decoder", DECODERS)):
            values = getattr(self, name)
            require(bool(values) and set(values) <= set(choices), f"mnk.grid.{name}",
                    f"a non-empty list of {choices}", list(values))
        require(bool(self.r2) and all(is_number(r) and math.isfinite(r) and r >= 0 for r in self.r2),
                "mnk.grid.r2", "a non-empty list of finite numbers >= 0", list(self.r2))
        for name in ("meta_time", "inner_time"):
            require(_times_ok(getattr(self, name)), f"mnk.grid.{name}", "a non-empty list of numbers > 0 (or .inf)",
                    list(getattr(self, name)))

    @classmethod
    def from_section(cls, mnk: Mapping) -> "MNKSection":
        for key in MOVED_KEYS:
            require(key not in mnk, f"mnk.{key}", f"a list under mnk.grid.{key} (chosen on validation tasks)",
                    mnk.get(key))
        grid = mnk.get("grid") or {}
        unknown = sorted(set(grid) - set(GRID_KEYS))
        require(not unknown, "mnk.grid", f"a map of {', '.join(GRID_KEYS)} only", unknown)
        solver = {key: mnk[key] for key in SOLVER_KEYS if key in mnk}
        numeric = ("r2", "meta_time", "inner_time")  # YAML may write 1.0 as 1
        listed = {key: tuple(float(v) if key in numeric and is_number(v) else v for v in grid[key])
                  for key in GRID_KEYS if key in grid}
        return cls(**solver, **listed)

    @property
    def settings(self) -> tuple[Setting, ...]:
        """The grid's settings in declared order (r2, meta_time, inner_time, targets, decoder)."""
        return tuple(Setting(*point) for point in itertools.product(*(getattr(self, key) for key in GRID_KEYS)))

    def params(self) -> dict:
        """As plain data in the config's own shape: `from_section(params())` gives it back."""
        solver = {key: getattr(self, key) for key in SOLVER_KEYS}
        return {**solver, "grid": {key: list(getattr(self, key)) for key in GRID_KEYS}}
