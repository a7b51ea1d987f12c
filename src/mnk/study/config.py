"""The config, parsed once: the validated config dict in, frozen typed sections out.

`parse_config` is the boundary: the Snakefile (and `make cost`) call it once on the config
that the schema validated, and every other module receives its sections, never the raw
dict. Each section is the options object of the stage that uses it; a job receives its
section as plain data (`params()`), and rebuilds it with the same class's `from_section`.
Problems that need only the config are listed all at once (`mnk.study.config_checks`),
each naming its key.

Plain Python (no numpy, no torch): Snakemake's own environment runs this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mnk.data.options import DataOptions
from mnk.infra.checks import require
from mnk.kernels.options import KernelSection
from mnk.methods.options import (OPTION_CLASSES, EncoderOptions, IMAMLOptions, MAMLOptions, MNKSection,
                                 options_from_config)
from mnk.study.config_checks import ConfigError, config_problems, data_problems, list_path
from mnk.tasks.sinusoid import SinusoidOptions
from mnk.tasks.spec import TaskGrid

DEVICES = ("auto", "cpu", "cuda")
LEARNERS = tuple(OPTION_CLASSES)  # MAML and iMAML: each may be switched off (`<method>.enabled`)


@dataclass(frozen=True)
class StudyConfig:
    """Every section of the config, frozen and typed."""

    data: DataOptions
    tasks: TaskGrid
    kernel: KernelSection
    mnk: MNKSection
    encoder: EncoderOptions
    maml: MAMLOptions
    imaml: IMAMLOptions
    enabled: tuple[str, ...] = LEARNERS  # the meta-learners that run
    device: str = "auto"  # MAML, iMAML, MNK solves and the label encoder
    cuda: int = 12  # the CUDA build of the GPU conda envs
    test_tasks: dict | None = None  # the task list's shape (mnk.tasks.tasklist.task_list_shape)
    sinusoid: SinusoidOptions | None = None  # with data.dataset: sinusoid (regression tasks)

    def __post_init__(self):
        require(self.device in DEVICES, "device", f"one of {DEVICES}", self.device)

    @property
    def regression(self) -> bool:
        """The sinusoid study: regression tasks, its own rules (workflow/rules/sinusoid.smk)."""
        return self.sinusoid is not None

    def learner(self, method: str) -> MAMLOptions | IMAMLOptions:
        return getattr(self, method)

    @property
    def kernel_image_size(self) -> int:
        """The side the kernel sees: kernel.image_size, else the preprocessed data's."""
        return self.kernel.options.image_size or self.data.image_size

    @property
    def kernel_source(self) -> str:
        """The images the kernel resamples (kernel.source resolved): "original" (Omniglot's
        105x105 images, which the data stage keeps) or "preprocessed" (data.image_size). "auto"
        takes the originals unless the dataset is a folder or a task list brings its own images."""
        source = self.kernel.options.source
        if source != "auto":
            return source
        return "original" if self.data.dataset == "omniglot" and not self.test_tasks else "preprocessed"


SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


def parse_config(config: Mapping, workdir: str | Path = ".", environ: Mapping | None = None,
                 schema: str | Path | None = None) -> StudyConfig:
    """The sections of a config; ConfigError lists every problem found.

    With `schema` (the Snakefile's: SCHEMA), the config is first validated against it, its
    defaults filled in (`validate_config`); without, it must have been. With `environ` (the
    Snakefile's os.environ), the data source is checked on this machine too (an Omniglot
    mirror folder and the archives already fetched, a folder dataset's roots)."""
    if schema is not None:
        validate_config(config, schema)
    problems = config_problems(config, Path(workdir))
    if environ is not None and (config.get("data") or {}).get("dataset") != "sinusoid":  # nothing to fetch
        problems += data_problems(config.get("data") or {}, Path(workdir), environ)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    try:
        return _sections(config, Path(workdir))
    except ValueError as error:  # a rule the checks above do not know; it names its key
        raise ConfigError(f"invalid configuration:\n  - {error}") from None


def _sections(config: Mapping, workdir: Path) -> StudyConfig:
    tasks = TaskGrid.from_section(config["tasks"])
    shape = None
    if tasks.test_tasks:  # the list fixes the test tasks: its count replaces n_test_tasks
        from mnk.tasks.tasklist import task_list_shape

        shape = task_list_shape(list_path(tasks.test_tasks, workdir))
        tasks = dataclasses.replace(tasks, n_test_tasks=shape["n_tasks"])
    learners = {m: options_from_config(m, (config.get(m) or {}).get("options")) for m in LEARNERS}
    enabled = tuple(m for m in LEARNERS if (config.get(m) or {}).get("enabled", True))
    return StudyConfig(
        data=DataOptions.from_section(config.get("data") or {}),
        tasks=tasks,
        kernel=KernelSection.from_section(config.get("kernel") or {}),
        mnk=MNKSection.from_section(config.get("mnk") or {}),
        encoder=EncoderOptions(**(config.get("encoder") or {})),
        **learners,
        enabled=enabled,
        device=config.get("device", "auto"),
        cuda=config.get("cuda", 12),
        test_tasks=shape,
        sinusoid=(SinusoidOptions.from_section(config.get("sinusoid") or {})
                  if (config.get("data") or {}).get("dataset") == "sinusoid" else None),
    )



def validate_config(config: dict, schema: str | Path = SCHEMA) -> None:
    """Validate `config` against the JSON schema, filling in the schema's defaults (as
    Snakemake's `validate` does); ConfigError lists every violation at once, each by key."""
    import jsonschema
    import yaml

    with open(schema) as handle:
        loaded = yaml.safe_load(handle)
    validator_class = jsonschema.validators.validator_for(loaded)
    validator = jsonschema.validators.extend(validator_class, {"properties": _properties_with_defaults(
        validator_class.VALIDATORS["properties"])})(loaded)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(part) for part in e.absolute_path])
    if errors:
        raise ConfigError(f"invalid configuration ({Path(schema).name}):\n"
                          + "\n".join(f"  - {_key(error)}: {error.message}" for error in errors))


def _properties_with_defaults(validate_properties):
    """The schema's `properties` check, which also sets each property's `default` (jsonschema FAQ)."""
    def properties(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return properties


def _key(error) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(the config)"
