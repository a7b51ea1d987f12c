"""The base kernel's options: one frozen, validated object, built once from the `kernel`
config section (errors name the key) and passed whole to the kernel jobs.

Plain Python (no numpy): `mnk.study.config_checks` builds it in Snakemake's own environment, so the
kernel's rules are checked in one place before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from mnk.infra.checks import is_bool, is_int, require

KERNEL_TYPES = ("cntk", "ntk")
DTYPES = ("float32", "float64")  # arithmetic of the CPU CNTK (mnk.kernels.cntk_gram)
MIN_DEPTH = {"cntk": 2, "ntk": 1}  # the CNTK recursion needs one hidden layer
# How the kernel stage resizes its source images (mnk.kernels.transform.resize): "area" is exact
# overlap-weighted averaging; the others are PIL's filters of that name (on float images).
RESAMPLE_FILTERS = ("area", "lanczos", "bicubic", "bilinear", "hamming", "box", "nearest")
# Which images the kernel resamples: Omniglot's original 105x105 ones (kept by the data stage),
# the data stage's data.image_size ones, or "auto": the originals where the dataset keeps them.
SOURCES = ("auto", "original", "preprocessed")
# Keys of the section that decide how a kernel is computed, not its values.
RUNTIME_KEYS = ("backend", "block_size", "threads", "cpu_threads")


@dataclass(frozen=True)
class KernelOptions:
    """What decides a base-kernel value of two raw images (`kernel` section, less run settings)."""

    type: str = "cntk"
    depth: int = 5
    gap: bool = True  # global average pooling, else the trace
    fix: bool = False  # first and last layers fixed
    dtype: str = "float64"
    image_size: int | None = None  # images are resized to this side (None: data.image_size)
    # Chosen on validation characters (BENCHMARKS.md, "The kernel's image preparation").
    resample: str = "lanczos"
    source: str = "auto"
    pad: int = 0  # zero border added after the resize
    standardize: bool = True  # by the training images' pixel mean and std

    def __post_init__(self):
        require(self.type in KERNEL_TYPES, "kernel.type", f"one of {KERNEL_TYPES}", self.type)
        least = MIN_DEPTH[self.type]
        require(is_int(self.depth) and self.depth >= least, "kernel.depth",
                f"an integer >= {least} for kernel.type {self.type!r}", self.depth)
        for name in ("gap", "fix", "standardize"):
            require(is_bool(getattr(self, name)), f"kernel.{name}", "true or false", getattr(self, name))
        require(self.dtype in DTYPES, "kernel.dtype", f"one of {DTYPES}", self.dtype)
        require(self.image_size is None or is_int(self.image_size) and self.image_size >= 3,
                "kernel.image_size", "an integer >= 3 (or empty)", self.image_size)
        require(is_int(self.pad) and self.pad >= 0, "kernel.pad", "an integer >= 0", self.pad)
        require(self.resample in RESAMPLE_FILTERS, "kernel.resample", f"one of {RESAMPLE_FILTERS}", self.resample)
        require(self.source in SOURCES, "kernel.source", f"one of {SOURCES}", self.source)

    def replace(self, **changes) -> "KernelOptions":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_section(cls, section: Mapping) -> "KernelOptions":
        """From the `kernel` config section (or a block's identity); run settings are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - fields - set(RUNTIME_KEYS))
        if unknown:
            raise ValueError(f"unknown option kernel.{unknown[0]}; valid options: {sorted(fields)}")
        return cls(**{key: value for key, value in section.items() if key in fields})


def cpu_dtype(dtype: str, gap: bool) -> str:
    """The arithmetic the CPU CNTK computes in for `kernel.dtype`: float32 only with global
    average pooling (the trace is not accurate to 1e-5 in float32: mnk.kernels.cntk_cpu32)."""
    return dtype if gap else "float64"


BACKENDS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class KernelSection:
    """The `kernel` section: the options that decide values, and how they are computed."""

    options: KernelOptions
    backend: str = "auto"
    block_size: int = 600  # images per side of a kernel block (one job each)

    def __post_init__(self):
        require(self.backend in BACKENDS, "kernel.backend", f"one of {BACKENDS}", self.backend)
        require(is_int(self.block_size) and self.block_size >= 1, "kernel.block_size", "an integer >= 1",
                self.block_size)

    @classmethod
    def from_section(cls, section: Mapping) -> "KernelSection":
        run = {key: section[key] for key in ("backend", "block_size") if key in section}
        return cls(KernelOptions.from_section(section), **run)
