"""Image-folder datasets: your own images, in the same arrays as the preprocessed Omniglot.

Layout: an image's class is its parent folder's path relative to the root, so both
`root/class/img.png` and Omniglot's `root/alphabet/character/img.png` work. The alphabet
of a class is the first component of that path (with one level, each class is its own
alphabet). Files are taken in sorted order; hidden files and folders (names starting with
'.') and files without an image extension are ignored. Symbolic links are followed, each
folder taken once by its real path (`mnk.data.scan`: loops and a class twice are refused).

Split: a training root and a test root (class names must differ between them: few-shot
test classes are disjoint from training ones), or one root whose classes, sorted by their
relative path, are split in that order: the last `ceil(split * n_classes)` are the test
side (like the 'original' Omniglot split, which takes the first 1200 sorted characters to
train; with nested folders whole alphabets stay on one side except at the boundary). Either
way no image's bytes may be on both sides.

Every image goes through `load_image` (the one image loader, shared with task lists):
converted to grey ('L') or RGB, resized to `image_size` x `image_size` with the named PIL
filter (no aspect-ratio preservation), scaled to [0, 1], and inverted when asked (or, with
`invert="auto"`, when its median border pixel is light, > 0.5) so that the background is
0 like Omniglot's (the CNTK pads with zeros). Alpha channels are dropped.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from pathlib import Path, PurePosixPath

import numpy as np

from mnk.data.options import DEFAULT_SPLIT, FolderOptions, ImageOptions
from mnk.data.scan import SHOW, DataError, check_sides_disjoint, scan_classes

log = logging.getLogger("mnk.data.folder")

GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")  # PIL modes with one colour band


# ------------------------------------------------------------------ one image


def open_image(source, name: str, decode: bool = True):
    """A PIL image from a path or bytes; unreadable files raise DataError naming them.

    decode=False reads the header only (mode and size), which is cheap.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL only warns below twice its pixel limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if decode:
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"{name}: refused, a decompression bomb? ({error})") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{name}: unreadable image file ({error})") from error
    return image


def file_channels(image) -> int:
    """1 for a grey file, 3 for a colour one (palette images count as colour)."""
    return 1 if image.mode in GREY_MODES else 3


def image_array(image, options: ImageOptions, channels: int) -> np.ndarray:
    """PIL image -> float32 (size, size) for 1 channel or (3, size, size), background 0."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    size = options.image_size
    image = image.resize((size, size), getattr(Image.Resampling, options.resample.upper()))
    array = np.asarray(image, dtype=np.float32) / 255.0
    if channels == 3:
        array = np.moveaxis(array, -1, 0)
    if options.invert is True or (options.invert == "auto" and has_light_background(array)):
        array = 1.0 - array
    return np.ascontiguousarray(array)


def has_light_background(array: np.ndarray) -> bool:
    """Median border pixel (grey level, averaged over channels) above 0.5."""
    grey = array if array.ndim == 2 else array.mean(axis=0)
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    return bool(np.median(border) > 0.5)


def load_image(source, options: ImageOptions, name: str | None = None, channels: int | None = None) -> np.ndarray:
    """The one image loader: a path or PNG/JPEG bytes -> preprocessed float32 array.

    `channels` (1 or 3) overrides `options.channels`; with neither, the file decides.
    """
    name = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    image = open_image(source, name)
    return image_array(image, options, channels or options.channels or file_channels(image))


def common_channels(sources, names, options: ImageOptions) -> int:
    """The channel count of a set of files: `options.channels`, or the files' common one.

    A mix of grey and colour files is an error naming one file of each kind.
    """
    if options.channels is not None:
        return options.channels
    first = {}
    for source, name in zip(sources, names):
        with open_image(source, name, decode=False) as image:
            first.setdefault(file_channels(image), name)
    if len(first) > 1:
        raise DataError(
            f"mixed channel counts: {first[1]} is grey, {first[3]} is colour; set "
            "data.folder.channels to 1 (convert all to grey) or 3 (all to RGB)"
        )
    return next(iter(first), 1)


def load_images(sources, options: ImageOptions, names=None, progress: bool = False,
                desc: str = "images") -> np.ndarray:
    """Many images, one channel count: (N, H, W) for grey, (N, 3, H, W) for RGB."""
    from mnk.infra.progress import progress_bar

    sources = list(sources)
    names = [str(s) for s in sources] if names is None else list(names)
    channels = common_channels(sources, names, options)
    size = options.image_size
    out = np.zeros((len(sources), size, size) if channels == 1 else (len(sources), 3, size, size), np.float32)
    bar = progress_bar(len(sources), desc, "img") if progress else None
    for k, (source, name) in enumerate(zip(sources, names)):
        out[k] = load_image(source, options, name, channels)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


# ------------------------------------------------------------------ a folder dataset


def check_class_sizes(classes: dict[str, list[Path]], images_per_class: int | None, root) -> None:
    """Every class has at least `images_per_class` (shot + query) images."""
    if images_per_class is None:
        return
    small = [(name, len(files)) for name, files in classes.items() if len(files) < images_per_class]
    if small:
        listed = ", ".join(f"{name} ({count})" for name, count in small[:SHOW])
        more = f" and {len(small) - SHOW} more" if len(small) > SHOW else ""
        raise DataError(
            f"{root}: {len(small)} classes have fewer images than shot + query = "
            f"{images_per_class}: {listed}{more}"
        )


def split_classes(names: list[str], split: float) -> np.ndarray:
    """Sorted-order split: the last ceil(split * n) classes are the test side (1)."""
    n = len(names)
    n_test = math.ceil(split * n)
    if not 0 < n_test < n:
        raise DataError(f"split {split} of {n} classes leaves one side empty; need >= 2 classes")
    return np.r_[np.zeros(n - n_test, np.int8), np.ones(n_test, np.int8)]


def _sides(train_root, test_root, split, images_per_class):
    """[(classes, side)] for the training side and the test side, all checked."""
    seen = {}  # real paths of the folders taken, shared by both roots (mnk.data.scan)
    train = scan_classes(train_root, seen)
    check_class_sizes(train, images_per_class, train_root)
    if test_root is None:
        sides = split_classes(list(train), DEFAULT_SPLIT if split is None else split)
        train, test = ({c: f for (c, f), s in zip(train.items(), sides) if s == side} for side in (0, 1))
    else:
        if split is not None:
            raise ValueError("give either a test root or a split fraction, not both")
        test = scan_classes(test_root, seen)
        check_class_sizes(test, images_per_class, test_root)
        shared = sorted(set(train) & set(test))
        if shared:
            raise DataError(f"class {shared[0]!r} is in both {train_root} and {test_root} "
                            f"({len(shared)} shared); test classes must be disjoint from training ones")
    check_sides_disjoint(train, test)
    return [(train, 0), (test, 1)]


def read_folder_dataset(train_root, test_root=None, *, image_size: int = 28, resample: str = "lanczos",
                        invert="auto", channels: int | None = None, split: float | None = None,
                        images_per_class: int | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Image folders -> the arrays of `mnk.data.archive.preprocess` (images, alphabet, character,
    drawer, split, alphabet_names, character_names). Images are (N, H, W) for grey data and
    (N, 3, H, W) for RGB. Classes: training side first, each side sorted by relative path;
    drawer = index of the image within its class (files sorted by name).

    split: one root only, the test fraction of the sorted classes (DEFAULT_SPLIT).
    images_per_class: shot + query, checked for every class when given.
    """
    options = ImageOptions(image_size, resample, invert, channels)
    files, alphabet, character, drawer, sides = [], [], [], [], []
    alphabet_ids: dict[str, int] = {}
    character_names: list[str] = []
    for classes, side in _sides(train_root, test_root, split, images_per_class):
        for name, paths in classes.items():
            first = PurePosixPath(name).parts[0]
            character_names.append(name)
            files += paths
            alphabet += [alphabet_ids.setdefault(first, len(alphabet_ids))] * len(paths)
            character += [len(character_names) - 1] * len(paths)
            drawer += range(len(paths))
            sides += [side] * len(paths)
    images = load_images(files, options, progress=progress, desc="folder dataset")
    log.info("%d images of %d classes (%d test), shape %s", len(files), len(character_names),
             len(set(np.asarray(character)[np.asarray(sides) == 1])), images.shape[1:])
    return {
        "images": images,
        "alphabet": np.asarray(alphabet, dtype=np.int32),
        "character": np.asarray(character, dtype=np.int32),
        "drawer": np.asarray(drawer, dtype=np.int32),
        "split": np.asarray(sides, dtype=np.int8),
        "alphabet_names": np.asarray(list(alphabet_ids)),
        "character_names": np.asarray(character_names),
    }


def read_folder_options(options: FolderOptions, images_per_class: int | None = None,
                        progress: bool = False) -> dict[str, np.ndarray]:
    """`read_folder_dataset` from a checked `data` config section."""
    image = options.image
    return read_folder_dataset(options.train_root, options.test_root, image_size=image.image_size,
                               resample=image.resample, invert=image.invert, channels=image.channels,
                               split=options.split, images_per_class=images_per_class, progress=progress)
