"""KernelOptions: built once from the kernel section, errors naming the key, passed whole."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mnk.kernels.gram import cntk_gram, ntk_gram
from mnk.kernels.options import KernelOptions
from mnk.study.blocks import base_kernel
from mnk.study.config import parse_config
from mnk.study.plan import kernel_identity


def test_from_the_config_section_less_run_settings(repo):
    config = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    options = KernelOptions.from_section(config["kernel"])
    assert (options.type, options.depth, options.gap, options.dtype, options.image_size) == ("cntk", 3, False,
                                                                                             "float64", 28)
    # A block's identity (what the job receives) builds the same options, its source resolved.
    assert options.source == "auto"
    assert KernelOptions.from_section(kernel_identity(parse_config(config))["kernel"]) == options.replace(
        source="original")


@pytest.mark.parametrize("edit,source", [
    (lambda c: None, "original"),  # Omniglot keeps its originals
    (lambda c: c["kernel"].update(source="preprocessed"), "preprocessed"),
    (lambda c: c["data"].update(dataset="folder", folder={"train_root": ".", "split": 0.5}), "preprocessed"),
])
def test_auto_source_is_the_originals_where_the_dataset_keeps_them(repo, edit, source):
    config = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    edit(config)
    assert parse_config(config).kernel_source == source
    assert kernel_identity(parse_config(config))["kernel"]["source"] == source


@pytest.mark.parametrize("section,message", [
    ({"type": "cntk", "depth": 1}, "kernel.depth must be an integer >= 2 for kernel.type 'cntk', got 1"),
    ({"type": "rbf"}, "kernel.type must be one of"),
    ({"dtype": "float16"}, "kernel.dtype must be one of ('float32', 'float64'), got 'float16'"),
    ({"gap": "yes"}, "kernel.gap must be true or false"),
    ({"pad": -1}, "kernel.pad must be an integer >= 0"),
    ({"depht": 3}, "unknown option kernel.depht"),
    ({"resample": "cubic"}, "kernel.resample must be one of ('area', 'lanczos'"),
    ({"source": "raw"}, "kernel.source must be one of ('auto', 'original', 'preprocessed'), got 'raw'"),
])
def test_bad_options_name_the_key(section, message):
    with pytest.raises(ValueError) as error:
        KernelOptions.from_section(section)
    assert message in str(error.value)


def test_ntk_takes_depth_one():
    assert KernelOptions.from_section({"type": "ntk", "depth": 1}).depth == 1


def test_base_kernel_follows_every_option():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 1, 5, 5))
    for options in (KernelOptions(depth=3, gap=False, fix=True, dtype="float32"),
                    KernelOptions(depth=4, gap=True, fix=False, dtype="float64")):
        expected = cntk_gram(X, depth=options.depth, gap=options.gap, fix=options.fix, dtype=options.dtype,
                             backend="cpu")
        np.testing.assert_array_equal(base_kernel(X, None, options, "cpu"), expected)
    np.testing.assert_array_equal(base_kernel(X, X[:2], KernelOptions(type="ntk", depth=2)),
                                  ntk_gram(X, X[:2], depth=2))
