"""The config, parsed once (mnk.study.config): frozen typed sections, every problem at once,
and sections that travel to the jobs as plain data and come back equal."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from mnk.data.options import DataOptions
from mnk.kernels.options import KernelOptions, KernelSection
from mnk.methods.options import (EncoderOptions, IMAMLOptions, MAMLOptions, MNKSection, learner_params,
                                 options_from_config)
from mnk.study.config import StudyConfig, parse_config
from mnk.study.config_checks import ConfigError
from mnk.tasks.spec import TaskGrid, TaskSpec

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def shipped(name: str) -> dict:
    config = yaml.safe_load((REPO / "config" / name).read_text())
    validate(config, SCHEMA)  # the schema's defaults, as the Snakefile sees it
    return config


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "original.yaml", "paper.yaml", "gpu.yaml"])
def test_every_shipped_config_parses_into_frozen_typed_sections(name):
    config = shipped(name)
    study = parse_config(config)
    types = {"data": DataOptions, "tasks": TaskGrid, "kernel": KernelSection, "mnk": MNKSection,
             "encoder": EncoderOptions, "maml": MAMLOptions, "imaml": IMAMLOptions}
    for section, cls in types.items():
        assert type(getattr(study, section)) is cls, section
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(study, section), dataclasses.fields(cls)[0].name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.device = "cpu"
    # the sections hold what the file says
    assert study.tasks.n_characters == tuple(config["tasks"]["n_characters"])
    assert study.kernel.options.depth == config["kernel"]["depth"]
    assert study.kernel.block_size == config["kernel"]["block_size"]
    assert study.mnk.r2 == tuple(float(r) for r in config["mnk"]["grid"]["r2"])
    assert study.encoder.width == config["encoder"]["width"]
    assert study.enabled == tuple(m for m in ("maml", "imaml") if config[m]["enabled"])
    assert study.kernel_image_size == (config["kernel"].get("image_size") or config["data"]["image_size"])


def test_sections_travel_to_the_jobs_as_plain_data_and_come_back_equal():
    study = parse_config(shipped("config.yaml"))
    assert DataOptions.from_section(study.data.params()).image == study.data.image  # what decides an array
    assert MNKSection.from_section(study.mnk.params()) == study.mnk
    assert EncoderOptions(**study.encoder.params()) == study.encoder
    for method in ("maml", "imaml"):
        assert options_from_config(method, learner_params(study.learner(method))) == study.learner(method)
    grid = study.tasks
    spec = grid.spec(grid.way[0], grid.shot[0], grid.n_characters[-1], grid.seeds[0])
    assert spec == TaskSpec(**{**dataclasses.asdict(spec)}) and spec.query == grid.query
    folder = DataOptions.from_section({"dataset": "folder", "image_size": 32, "folder": {"train_root": "x"}})
    assert DataOptions.from_section(folder.params()).folder == folder.folder and folder.folder.split == 0.25


def test_every_problem_is_listed_at_once_each_naming_its_key():
    config = copy.deepcopy(shipped("config.yaml"))
    config["tasks"]["n_characters"] = [5, 12]
    config["kernel"]["depth"] = 1
    config["mnk"]["r1"] = math.nan
    with pytest.raises(ConfigError) as error:
        parse_config(config)
    message = str(error.value)
    for key in ("tasks.n_characters 12", "kernel.depth", "mnk.r1"):
        assert key in message, (key, message)


@pytest.mark.parametrize("edit,key", [
    (lambda c: c.update(device="tpu"), "device must be one of"),
    (lambda c: c["mnk"]["grid"].update(decoder=["argmax"]), "mnk.grid.decoder"),
    (lambda c: c["maml"]["options"].update(hidden=0), "maml.options.hidden"),
    (lambda c: c["encoder"].update(lr=-1.0), "encoder.lr"),
    (lambda c: c["encoder"].update(pooling="max"), "encoder.pooling"),
    (lambda c: c["maml"]["options"].update(padding=2), "maml.options.padding"),
    (lambda c: c["imaml"]["options"].update(standardize="yes"), "imaml.options.standardize"),
    (lambda c: c["data"].update(resample="sinc"), "data.resample"),
])
def test_a_rule_of_one_section_names_its_key(edit, key):
    config = copy.deepcopy(shipped("config.yaml"))
    edit(config)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(config)


def test_kernel_options_are_the_values_and_the_section_adds_how():
    study = parse_config(shipped("test.yaml"))
    assert isinstance(study.kernel.options, KernelOptions) and study.kernel.backend in ("auto", "cpu", "cuda")
    assert isinstance(study, StudyConfig)


@pytest.mark.parametrize("build,key", [
    (lambda: DataOptions(dataset="zip"), "data.dataset must be one of"),
    (lambda: DataOptions(source="ftp"), "data.source must be one of"),
    (lambda: DataOptions(dataset="folder"), "data.folder must be given exactly when data.dataset is 'folder'"),
    (lambda: KernelSection(KernelOptions(), backend="tpu"), "kernel.backend must be one of"),
    (lambda: KernelSection(KernelOptions(), block_size=0), "kernel.block_size must be an integer >= 1"),
    (lambda: MNKSection(solver="fast"), "mnk.solver must be one of"),
    (lambda: MNKSection(normalize_ntk="yes"), "mnk.normalize_ntk must be true or false"),
    (lambda: MNKSection(r2=()), "mnk.grid.r2 must be a non-empty list"),
    (lambda: MNKSection(r2=(math.inf,)), "mnk.grid.r2 must be a non-empty list of finite numbers"),
    (lambda: MNKSection.from_section({"grid": {"alpha": [1.0]}}), r"mnk.grid must be a map of r2, meta_time, inner_time, targets, decoder only, got \['alpha'\]"),
    (lambda: MNKSection.from_section({"meta_time": 1.0}), r"mnk.meta_time must be a list under mnk.grid.meta_time"),
    (lambda: MNKSection(inner_time=(0.0,)), r"mnk.grid.inner_time must be a non-empty list of numbers > 0"),
    (lambda: TaskGrid(way=(5,), shot=(1,), n_characters=(5,), seeds=(), query=5), "tasks.seeds must be a non-empty list"),
])
def test_a_section_built_by_hand_names_its_key(build, key):
    with pytest.raises(ValueError, match=key):
        build()


def test_original_yaml_is_the_original_code_and_paper_yaml_keeps_the_proximal_term():
    """config/original.yaml: the original's networks (maml_utils.py build_MAML_model: 75,205
    parameters for 5-way 28x28; imaml_utils.py: 112,261), inputs (omniglot_loaders.py: not
    inverted, standardised) and iMAML inner loop (proximal term at the first step only)."""
    from mnk.methods.nets import build_network

    original, paper = parse_config(shipped("original.yaml")), parse_config(shipped("paper.yaml"))
    counts = {}
    for method in ("maml", "imaml"):
        options = getattr(original, method)
        net = build_network(options.network, n_classes=5, image_size=(28, 28), hidden=options.hidden,
                            padding=options.padding)
        counts[method] = sum(p.numel() for p in net.parameters())
        assert (options.invert, options.standardize) == (False, True)
    assert counts == {"maml": 75_205, "imaml": 112_261}
    encoder = original.encoder
    assert (encoder.padding, encoder.pooling, encoder.width, encoder.epochs, encoder.batch_size, encoder.lr,
            encoder.invert, encoder.standardize) == (0, "flatten", 250, 50, 16, 1e-3, False, True)
    assert original.imaml.proximal_first_step_only is True
    assert paper.imaml.proximal_first_step_only is False
