"""The `data` section: one frozen, validated object (errors name the key), and how every image
(dataset or task list) becomes an array.

Plain Python (no numpy): `mnk.study.config` builds `DataOptions` in Snakemake's own
environment; the data jobs rebuild it from their params (`DataOptions.params`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from mnk.infra.checks import require

DATASETS = ("omniglot", "folder", "sinusoid")  # sinusoid: regression tasks (mnk.tasks.sinusoid)
SOURCES = ("official", "mirror")
RESAMPLE_FILTERS = ("lanczos", "bicubic", "bilinear", "box", "nearest")
INVERT_CHOICES = ("auto", True, False)
CHANNEL_CHOICES = (None, 1, 3)
DEFAULT_SPLIT = 0.25  # one root: the test share of the sorted classes


@dataclass(frozen=True)
class ImageOptions:
    """How every image (dataset or task list) is turned into an array."""

    image_size: int = 28
    resample: str = "lanczos"
    invert: str | bool = "auto"
    channels: int | None = None  # None: from the files (grey -> 1, colour -> 3)

    def __post_init__(self):
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 3:
            raise ValueError(f"data.image_size must be an integer >= 3, got {self.image_size!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"data.resample must be one of {RESAMPLE_FILTERS}, got {self.resample!r}")
        if not any(self.invert is choice for choice in INVERT_CHOICES) and self.invert != "auto":
            raise ValueError(f"data.folder.invert must be auto, true or false, got {self.invert!r}")
        if self.channels not in CHANNEL_CHOICES or isinstance(self.channels, bool):
            raise ValueError(f"data.folder.channels must be null, 1 or 3, got {self.channels!r}")

    @classmethod
    def omniglot(cls, image_size: int = 28, resample: str = "lanczos") -> "ImageOptions":
        """What `mnk.data.archive.image_to_array` does to an Omniglot PNG (grey, always inverted)."""
        return cls(image_size=image_size, resample=resample, invert=True, channels=1)


@dataclass(frozen=True)
class FolderOptions:
    """The `data.folder` section (plus `data.image_size` / `data.resample`), checked."""

    train_root: str
    test_root: str | None
    split: float | None
    image: ImageOptions

    @classmethod
    def from_section(cls, data: Mapping) -> "FolderOptions":
        folder = data.get("folder") or {}
        if not folder.get("train_root"):
            raise ValueError("data.dataset is 'folder' but data.folder.train_root is not set")
        test_root, split = folder.get("test_root"), folder.get("split")
        if test_root and split is not None:
            raise ValueError("data.folder: give either test_root or split, not both")
        if not test_root:
            split = DEFAULT_SPLIT if split is None else split
            if not 0 < float(split) < 1:
                raise ValueError(f"data.folder.split must be a fraction in (0, 1), got {split!r}")
        image = ImageOptions(int(data.get("image_size", 28)), data.get("resample", "lanczos"),
                             folder.get("invert", "auto"), folder.get("channels"))
        return cls(str(folder["train_root"]), str(test_root) if test_root else None,
                   None if test_root else float(split), image)


@dataclass(frozen=True)
class DataOptions:
    """The `data` section: which dataset, where Omniglot comes from, how images are prepared."""

    dataset: str = "omniglot"
    source: str = "official"
    mirror: str = ""
    image_size: int = 28
    resample: str = "lanczos"
    folder: FolderOptions | None = None  # with dataset: folder

    def __post_init__(self):
        require(self.dataset in DATASETS, "data.dataset", f"one of {DATASETS}", self.dataset)
        require(self.source in SOURCES, "data.source", f"one of {SOURCES}", self.source)
        self.image  # its checks name data.image_size / data.resample
        require((self.folder is not None) == (self.dataset == "folder"), "data.folder",
                "given exactly when data.dataset is 'folder'", self.folder)

    @classmethod
    def from_section(cls, data: Mapping) -> "DataOptions":
        folder = FolderOptions.from_section(data) if data.get("dataset", "omniglot") == "folder" else None
        return cls(data.get("dataset", "omniglot"), data.get("source", "official"), data.get("mirror") or "",
                   data.get("image_size", 28), data.get("resample", "lanczos"), folder)

    @property
    def image(self) -> ImageOptions:
        """How the dataset's images (and a task list's) become arrays."""
        if self.folder is not None:
            return self.folder.image
        return ImageOptions.omniglot(self.image_size, self.resample)

    @property
    def folder_roots(self) -> tuple[str, ...]:
        return tuple(r for r in (self.folder.train_root, self.folder.test_root) if r) if self.folder else ()

    def params(self) -> dict:
        """The settings that decide how an image becomes an array, as plain data for a job
        (and its rerun trigger); `from_section(params())` gives the same preprocessing."""
        params = {"dataset": self.dataset, "image_size": self.image_size, "resample": self.resample}
        if self.folder is not None:
            image = self.folder.image
            params["folder"] = {"train_root": self.folder.train_root, "test_root": self.folder.test_root,
                                "split": self.folder.split, "invert": image.invert, "channels": image.channels}
        return params
