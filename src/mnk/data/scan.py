"""The files of an image-folder dataset, walked once and safely (no numpy: the Snakefile
fingerprints them to rerun preprocessing when an image changes).

Symbolic links are followed, so a class may live elsewhere, but every folder is taken at
most once by its real path: a link that leads back into the dataset (a loop) or to a
folder already taken (a class twice, on one side or both) is refused by name. Content is
compared by hash: an image whose bytes are on both the training and the test side leaks
the test set into training and is refused (`check_sides_disjoint`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SHOW = 5  # how many offending classes an error message lists


class DataError(RuntimeError):
    """Bad or corrupt input data: the message names the file and the problem."""


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _take_folder(path: Path, seen: dict[str, Path]) -> None:
    """Record `path` by its real path; a real path seen before is a loop or a class twice."""
    real = os.path.realpath(path)
    if real in seen:
        raise DataError(f"{path} is {real}, already in the dataset as {seen[real]} (a symbolic link back into "
                        "the dataset, a loop, or one folder as two classes); remove the link")
    seen[real] = path


def scan_classes(root: str | os.PathLike, seen: dict[str, Path] | None = None) -> dict[str, list[Path]]:
    """{class (relative POSIX path of the folder): sorted image files} under `root`.

    Every leaf folder is a class; one without images is an error, and so is a folder
    that holds images as well as sub-folders (its class would contain other classes).
    `seen` ({real path: folder}) is shared between the roots of one dataset, so that a class
    of one side cannot be a link to a class of the other.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    seen = {} if seen is None else seen
    _take_folder(root, seen)
    classes: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        folder = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in dirs:  # before descending: a loop is refused, never walked
            _take_folder(folder / name, seen)
        images = sorted(folder / f for f in files if is_image_name(f))
        if images and folder == root:
            raise DataError(f"{images[0]}: image directly in the root {root}; put each class in its own folder")
        if images and dirs:
            raise DataError(f"{folder}: holds images and sub-folders ({dirs[0]}); a class folder "
                            "must not contain other class folders")
        if not dirs and folder != root:
            if not images:
                raise DataError(f"{folder}: empty class (no image files: {', '.join(IMAGE_EXTENSIONS)})")
            classes[folder.relative_to(root).as_posix()] = images
    if not classes:
        raise DataError(f"image folder {root} has no class folders with images")
    return dict(sorted(classes.items(), key=lambda item: PurePosixPath(item[0]).parts))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_sides_disjoint(train: dict[str, list[Path]], test: dict[str, list[Path]]) -> None:
    """No image content (bytes) is on both sides: a copy or a link of a test image among the
    training images would train on the test set."""
    train_hashes = {file_sha256(path): path for paths in train.values() for path in paths}
    shared = [(train_hashes[digest], path) for paths in test.values() for path in paths
              if (digest := file_sha256(path)) in train_hashes]
    if shared:
        listed = "; ".join(f"{test_path} = {train_path}" for train_path, test_path in shared[:SHOW])
        more = f" and {len(shared) - SHOW} more" if len(shared) > SHOW else ""
        raise DataError(f"{len(shared)} test images are also training images (same bytes): {listed}{more}; "
                        "the test side must not share images with the training side")


def folder_fingerprint(roots) -> str:
    """Hash of every image the dataset reads (class, name, real path, size, mtime of what a
    link points at): an edit, a new image or a re-pointed link changes it."""
    digest = hashlib.sha256()
    seen: dict[str, Path] = {}
    for root in roots:
        for name, paths in scan_classes(root, seen).items():
            for path in paths:
                stat = path.stat()  # follows links
                digest.update(f"{root}:{name}/{path.name}:{os.path.realpath(path)}:{stat.st_size}:"
                              f"{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]
