"""Configs that cannot work fail at config validation, naming the keys, before any download."""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnk.study import config_checks
from mnk.study.config import SCHEMA, parse_config
from mnk.study.config_checks import ConfigError, check_devices

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
NO_ENV: dict = {}


def _edited(edit) -> dict:
    config = copy.deepcopy(DEFAULT)
    edit(config)
    return config


def _problems(config, tmp_path, environ=NO_ENV) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config(config, workdir=tmp_path, environ=environ)
    return str(error.value)


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "paper.yaml"])
def test_shipped_configs_pass(name, tmp_path):
    path = REPO / "config" / name
    if not path.exists():
        pytest.skip(f"{name} not present")
    config = yaml.safe_load(path.read_text())
    (tmp_path / "mirror").mkdir()
    config["data"]["mirror"] = str(tmp_path / "mirror")
    parse_config(config, workdir=tmp_path, environ=NO_ENV)


def test_unknown_keys_are_ignored(tmp_path):
    """Keys added later (by other stages) are the schema's business, not these checks'."""
    config = _edited(lambda c: (c["kernel"].update(dtype="float32"), c["tasks"].update(future_key=[1, 2]),
                                c.update(new_section={"x": 1})))
    parse_config(config, workdir=tmp_path, environ=NO_ENV)


@pytest.mark.parametrize("edit,expected", [
    (lambda c: c["tasks"].update(n_characters=[5, 12]), ["tasks.n_characters 12 is not", "tasks.way 5"]),
    (lambda c: c["tasks"].update(n_characters=[3]), ["tasks.n_characters 3", "multiple of tasks.way 5"]),
    (lambda c: c["tasks"].update(shot=[1, 5], query=16), ["tasks.shot + tasks.query = 5 + 16 = 21", "20 images"]),
    (lambda c: c["tasks"].update(n_characters=[5, 965]), ["tasks.n_characters) 965", "964 training characters",
                                                         "'background'"]),
    (lambda c: c["tasks"].update(split="original", n_characters=[1205]), ["1205", "1200 training characters"]),
    (lambda c: c["tasks"].update(split="original", way=[424], n_characters=[848]),
     ["tasks.way 424", "423 test characters"]),
    (lambda c: c["tasks"].update(n_val_characters=950), ["tasks.n_val_characters 950 = 970",
                                                       "964 training characters"]),
    (lambda c: c["tasks"].update(n_val_characters=3), ["tasks.n_val_characters 3", "tasks.way 5"]),
    (lambda c: c["kernel"].update(depth=1), ["kernel.depth", "'cntk'", ">= 2", "got 1"]),
    (lambda c: c["kernel"].update(source="original") or c["data"].update(dataset="folder", folder={"train_root": "."}),
     ["kernel.source 'original'", "data.dataset is 'folder'"]),
    (lambda c: c["mnk"].update(solver="lowrank") or c["mnk"]["grid"].update(meta_time=[math.inf, 10.0]),
     ["mnk.solver 'lowrank'", "mnk.grid.meta_time", "10.0"]),
    (lambda c: c["mnk"]["grid"].update(r2=[1e-5, 0.0]) or c["mnk"].update(solver="lowrank"), ["every mnk.grid.r2 > 0"]),
    (lambda c: c["mnk"].update(r1=math.inf), ["mnk.r1", "finite"]),
    (lambda c: c["tasks"].update(n_val_tasks=0), ["mnk.grid has", "tasks.n_val_tasks is 0"]),
    # valid convolutions shrink the images: 14 -> 6 -> 2 -> 0 (conv3 / the encoder), -> 0 (imaml4 at 28)
    (lambda c: c["data"].update(image_size=14) or c["encoder"].update(padding=0),
     ["the label encoder with encoder.padding 0", "data.image_size 14x14"]),
    (lambda c: c["imaml"]["options"].update(padding=0),
     ["imaml.options.network 'imaml4' with imaml.options.padding 0", "data.image_size 28x28"]),
])
def test_each_impossible_combination_names_its_keys(tmp_path, edit, expected):
    message = _problems(_edited(edit), tmp_path)
    for text in expected:
        assert text in message


def test_every_problem_is_reported_at_once(tmp_path):
    config = _edited(lambda c: (c["tasks"].update(n_characters=[12], query=20), c["kernel"].update(depth=1)))
    message = _problems(config, tmp_path)
    assert message.count("\n  - ") == 3


def test_ntk_depth_one_is_fine(tmp_path):
    parse_config(_edited(lambda c: c["kernel"].update(type="ntk", depth=1)), workdir=tmp_path, environ=NO_ENV)


def test_mirror_source_needs_an_existing_folder_while_archives_are_missing(tmp_path):
    config = _edited(lambda c: c["data"].update(source="mirror", mirror="no/such/folder"))
    message = _problems(config, tmp_path)
    assert "data.mirror" in message and "no/such/folder" in message
    assert "$OMNIGLOT_MIRROR" in _problems(config, tmp_path, {"OMNIGLOT_MIRROR": str(tmp_path / "gone")})
    empty = _edited(lambda c: c["data"].update(source="mirror", mirror=""))
    assert "data.mirror is empty" in _problems(empty, tmp_path)
    parse_config(config, workdir=tmp_path, environ={"OMNIGLOT_MIRROR": str(tmp_path)})  # env folder exists
    raw = tmp_path / "results" / "data" / "raw"
    raw.mkdir(parents=True)
    for name in ("images_background", "images_evaluation"):
        (raw / f"{name}.zip").touch()
    parse_config(config, workdir=tmp_path, environ=NO_ENV)  # downloaded already: the mirror is not needed


def _mirror(folder: Path, contents: dict) -> Path:
    """A mirror folder: the archives' bytes and their SHA256SUMS."""
    import hashlib

    folder.mkdir(parents=True)
    for name, payload in contents.items():
        (folder / f"{name}.zip").write_bytes(payload)
    (folder / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(payload).hexdigest()}  {name}.zip\n"
                                               for name, payload in contents.items()))
    return folder


def test_an_archive_from_another_mirror_is_refused_with_the_way_out(tmp_path):
    """After a bad mirror, pointing $OMNIGLOT_MIRROR at a good one kept the bad archive (the
    download rule does not rerun) and preprocessing failed again and again."""
    bad = _mirror(tmp_path / "bad", {"images_background": b"bad copy", "images_evaluation": b"good evaluation"})
    good = _mirror(tmp_path / "good", {"images_background": b"good background", "images_evaluation": b"good evaluation"})
    raw = tmp_path / "results" / "data" / "raw"
    raw.mkdir(parents=True)
    for name in ("images_background", "images_evaluation"):
        (raw / f"{name}.zip").write_bytes((bad / f"{name}.zip").read_bytes())  # what the bad mirror gave
    config = _edited(lambda c: c["data"].update(source="official"))
    parse_config(config, workdir=tmp_path, environ={"OMNIGLOT_MIRROR": str(bad)})  # its own mirror: fine
    message = _problems(config, tmp_path, {"OMNIGLOT_MIRROR": str(good)})
    archive = raw / "images_background.zip"
    assert message.count("\n  - ") == 1 and "images_evaluation" not in message  # that one is the good mirror's too
    assert f"{archive} is not the archive of the mirror {good} ($OMNIGLOT_MIRROR)" in message
    assert f"`rm {archive} && snakemake --cores all --forcerun {archive}`" in message
    archive.write_bytes(b"good background")
    parse_config(config, workdir=tmp_path, environ={"OMNIGLOT_MIRROR": str(good)})
    # under data.mirror (relative to the working directory) likewise
    from_config = _edited(lambda c: c["data"].update(source="mirror", mirror="bad"))
    assert "(data.mirror)" in _problems(from_config, tmp_path)
    parse_config(config, workdir=tmp_path, environ=NO_ENV)  # source official: what is here is kept


@pytest.mark.parametrize("key,edit", [
    ("device", lambda c: c.update(device="cuda")),
    ("kernel.backend", lambda c: c["kernel"].update(backend="cuda")),
])
def test_cuda_without_a_gpu_is_refused(monkeypatch, key, edit):
    monkeypatch.setattr(config_checks, "GPU_DEVICE_FILES", ("/nonexistent/nvidia0",))
    with pytest.raises(ConfigError, match=f"{key} 'cuda'.*no usable GPU"):
        check_devices(parse_config(_edited(edit)), environ=NO_ENV)
    check_devices(parse_config(DEFAULT), environ=NO_ENV)  # 'auto' needs no GPU


def test_cuda_hidden_by_cuda_visible_devices(tmp_path, monkeypatch):
    device = tmp_path / "nvidia0"
    device.touch()
    monkeypatch.setattr(config_checks, "GPU_DEVICE_FILES", (str(device),))
    config = _edited(lambda c: c.update(device="cuda"))
    check_devices(parse_config(config), environ=NO_ENV)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        check_devices(parse_config(config), environ={"CUDA_VISIBLE_DEVICES": ""})


def test_config_checks_import_without_numpy_or_torch():
    code = ("import sys; sys.modules['numpy'] = None; sys.modules['torch'] = None; "
            "import mnk.study.config, mnk.study.config_checks, mnk.infra.runtime")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ------------------------------------------------------- the schema, every error at once


def _schema_problems(config) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config(config, environ=NO_ENV, schema=SCHEMA)
    return str(error.value)


def test_the_schema_lists_every_error_at_once():
    """docs/troubleshooting.md promises every problem at once; Snakemake's `validate` stopped
    at the first."""
    config = _edited(lambda c: (c["kernel"].update(depth="deep"), c["tasks"].update(query=0),
                                c["encoder"].update(lr=-1.0)))
    message = _schema_problems(config)
    assert message.count("\n  - ") == 3, message
    for expected in ("encoder.lr: -1.0 is less than or equal to the minimum of 0", "kernel.depth: 'deep' is not of type",
                     "tasks.query: 0 is less than the minimum of 1"):
        assert expected in message
    config = copy.deepcopy(DEFAULT)
    del config["tasks"]["n_val_characters"]
    assert "dataset" not in config["data"]
    parse_config(config, environ=NO_ENV, schema=SCHEMA)
    assert config["tasks"]["n_val_characters"] == 20 and config["data"]["dataset"] == "omniglot"  # defaults set


@pytest.mark.parametrize("key", ["n_val_tasks", "n_test_tasks", "query", "enlarge_ratio", "n_val_characters"])
def test_every_count_that_sizes_the_plan_is_bounded_by_the_schema(key):
    """`tasks.n_val_tasks: 100000000` hung the dry run at 17 GB (n_test_tasks was capped)."""
    assert f"tasks.{key}: 100000000 is greater than the maximum" in _schema_problems(
        _edited(lambda c: c["tasks"].update({key: 100000000})))


@pytest.mark.parametrize("key", ["way", "shot", "n_characters"])
def test_every_grid_count_is_bounded_by_the_schema(key):
    assert f"tasks.{key}.0: 100000000 is greater than the maximum" in _schema_problems(
        _edited(lambda c: c["tasks"].update({key: [100000000]})))


def test_nan_is_refused_for_every_float():
    """NaN passes every bound of the schema (measured: NaN mnk.inner_time failed after 35 jobs)."""
    config = _edited(lambda c: (c["mnk"]["grid"].update(inner_time=[math.nan], meta_time=[math.inf, math.nan],
                                                        r2=[1.0, math.nan]),
                                c["maml"]["options"].update(inner_lr=math.nan)))
    message = _problems(config, REPO)
    for key in ("mnk.grid.inner_time[0]", "mnk.grid.meta_time[1]", "mnk.grid.r2[1]", "maml.options.inner_lr"):
        assert f"{key} is NaN" in message, message
    parse_config(_edited(lambda c: c["mnk"]["grid"].update(meta_time=[math.inf])), environ=NO_ENV,
                 schema=SCHEMA)  # inf is meant


def test_the_number_of_kernel_blocks_is_bounded_before_planning():
    """A tiny block size multiplies the jobs: refused, counted without listing the blocks."""
    from mnk.study.plan import check_plan_size, pools

    config = _edited(lambda c: c["kernel"].update(block_size=5))
    with pytest.raises(ConfigError) as error:
        check_plan_size(pools(parse_config(config)))
    # 3 pools x (24 * 25 / 2 training blocks + 60 evaluation chunks x 25)
    assert "the study would plan 5400 kernel blocks (jobs) in 3 image pools, more than 5000: raise " \
           "kernel.block_size (5)" in str(error.value)
    config["kernel"]["block_size"] = 10  # 3 x (12 * 13 / 2 + 60 x 13), listed
    plans = pools(parse_config(config))
    check_plan_size(plans)
    assert sum(len(pool.blocks) for pool in plans.values()) == 2574


# ------------------------------------------------------------------ through Snakemake


def _snakemake(workdir: Path, *args, env=None):
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMNIGLOT_MIRROR": "", **(env or {})})


@pytest.mark.parametrize("edit,expected", [
    (lambda c: c["tasks"].update(n_characters=[5, 12]), "tasks.n_characters 12 is not a multiple"),  # mnk.study.config_checks
    (lambda c: c["kernel"].update(depth=1), "kernel.depth: 1 is less than the minimum of 2"),  # conditional bound
    (lambda c: c["tasks"].update(n_val_tasks=100000000), "tasks.n_val_tasks: 100000000 is greater than the maximum"),
    (lambda c: c["mnk"]["grid"].update(inner_time=[math.nan]), "mnk.grid.inner_time[0] is NaN"),  # mnk.study.config_checks
    (lambda c: c["kernel"].update(block_size=5), "the study would plan 5400 kernel blocks"),  # mnk.study.plan
    (lambda c: c["tasks"].update(n_test_tasks=20000), "20000 is greater than the maximum"),
    (lambda c: c["tasks"].update(seeds=[0, 0]), "non-unique"),
    (lambda c: c["tasks"].update(way=[1], n_characters=[5]), "less than the minimum of 2"),
])
def test_dry_run_fails_at_validation(tmp_path, edit, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_edited(edit)))
    result = _snakemake(REPO, "--dry-run", "--configfile", str(path))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert expected in output, output[-3000:]
    assert "Building DAG" not in output  # refused before any planning, let alone a job


@pytest.mark.skipif(config_checks.gpu_visible()[0], reason="this machine has a GPU")
def test_run_with_device_cuda_without_gpu_stops_before_any_job(tmp_path):
    for name in ("workflow", "scripts", "src", "config", "envs"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(device="cuda")
    config["data"].update(source="official")
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake(tmp_path, "--cores", "1")
    assert result.returncode != 0
    assert "device 'cuda' but this machine has no usable GPU" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()  # nothing downloaded, no job ran
