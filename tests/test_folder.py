"""Image-folder datasets (mnk.data.folder): layout, channels, inversion, resizing, errors."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from mnk.data import archive as data
from mnk.data.archive import DataError
from mnk.data.folder import load_image, read_folder_dataset
from mnk.data.options import FolderOptions, ImageOptions
from mnk.data.scan import folder_fingerprint
from mnk.kernels._validate import as_images

SIZE = 8


def pattern(seed: int, channels: int = 1, light: bool = True, size: int = SIZE) -> np.ndarray:
    """uint8 image: a light (255) or dark (0) background with a random interior."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, 3)
    pixels = np.full(shape, 255 if light else 0, np.uint8)
    pixels[2:-2, 2:-2] = rng.integers(0, 256, pixels[2:-2, 2:-2].shape)
    return pixels


def write_png(path, pixels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_folder(root, classes: dict[str, int], channels: int = 1, light: bool = True, seed: int = 0):
    """root/<class>/<k>.png for every class; returns {(class, k): pixels}."""
    written = {}
    for c, (name, count) in enumerate(classes.items()):
        for k in range(count):
            pixels = pattern(1_000_000 * seed + 1000 * c + k, channels, light)  # distinct for < 1000 classes, images
            write_png(root / name / f"{k:02d}.png", pixels)
            written[name, k] = pixels
    return written


def test_grey_flat_folder_with_split(tmp_path):
    classes = {"b": 3, "a": 3, "d": 4, "c": 3}
    written = make_folder(tmp_path, classes)
    out = read_folder_dataset(tmp_path, image_size=SIZE, split=0.5, images_per_class=3)
    assert list(out["character_names"]) == ["a", "b", "c", "d"]  # sorted
    assert list(out["alphabet_names"]) == ["a", "b", "c", "d"]  # one level: own alphabet
    assert out["images"].shape == (13, SIZE, SIZE) and out["images"].dtype == np.float32
    # sorted-order split: the last ceil(0.5 * 4) = 2 classes are the test side
    assert list(out["split"]) == [0] * 6 + [1] * 7
    assert list(out["drawer"]) == [0, 1, 2] * 3 + [0, 1, 2, 3]
    for i, (c, k) in enumerate(zip(out["character"], out["drawer"])):
        reference = 1.0 - written[out["character_names"][c], k] / 255.0  # light background: inverted
        np.testing.assert_allclose(out["images"][i], reference, atol=1e-7)
    assert out["images"][:, 0, 0].max() == 0.0  # background is zero


def test_nested_alphabet_character_layout(tmp_path):
    make_folder(tmp_path, {"Greek/alpha": 2, "Greek/beta": 2, "Latin/a": 2})
    out = read_folder_dataset(tmp_path, image_size=SIZE, split=0.3)
    assert list(out["character_names"]) == ["Greek/alpha", "Greek/beta", "Latin/a"]
    assert list(out["alphabet_names"]) == ["Greek", "Latin"]
    assert list(out["alphabet"]) == [0, 0, 0, 0, 1, 1]
    assert list(out["split"]) == [0, 0, 0, 0, 1, 1]


def test_rgb_train_and_test_roots_dark_background_kept(tmp_path):
    train = make_folder(tmp_path / "train", {"cat": 2, "dog": 2}, channels=3, light=False)
    test = make_folder(tmp_path / "test", {"fox": 2}, channels=3, light=False, seed=1)
    out = read_folder_dataset(tmp_path / "train", tmp_path / "test", image_size=SIZE)
    assert out["images"].shape == (6, 3, SIZE, SIZE)
    assert list(out["split"]) == [0, 0, 0, 0, 1, 1]
    assert list(out["character_names"]) == ["cat", "dog", "fox"]
    np.testing.assert_allclose(out["images"][1], np.moveaxis(train["cat", 1], -1, 0) / 255.0, atol=1e-7)
    np.testing.assert_allclose(out["images"][5], np.moveaxis(test["fox", 1], -1, 0) / 255.0, atol=1e-7)
    assert as_images(out["images"], "X").shape == (6, 3, SIZE, SIZE)  # what the kernels take


def test_channels_option_converts(tmp_path):
    written = make_folder(tmp_path, {"a": 1, "b": 1}, channels=3, light=False)
    out = read_folder_dataset(tmp_path, image_size=SIZE, channels=1, split=0.5)
    assert out["images"].shape == (2, SIZE, SIZE)
    grey = np.asarray(Image.fromarray(written["a", 0]).convert("L"), np.float32) / 255.0
    np.testing.assert_allclose(out["images"][0], grey, atol=1e-7)


@pytest.mark.parametrize("invert,light,flipped", [("auto", True, True), ("auto", False, False),
                                                  (True, False, True), (False, True, False)])
def test_inversion(tmp_path, invert, light, flipped):
    pixels = pattern(3, light=light)
    write_png(tmp_path / "x.png", pixels)
    out = load_image(tmp_path / "x.png", ImageOptions(SIZE, "lanczos", invert))
    expected = pixels / 255.0
    np.testing.assert_allclose(out, 1.0 - expected if flipped else expected, atol=1e-7)


@pytest.mark.parametrize("resample", ["box", "nearest"])
def test_resize_of_a_blocky_image(tmp_path, resample):
    """A 16x16 image of constant 2x2 blocks, halved: box and nearest give the blocks exactly."""
    blocks = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE)).astype(np.uint8)
    blocks[0, :] = blocks[-1, :] = blocks[:, 0] = blocks[:, -1] = 0
    write_png(tmp_path / "x.png", np.kron(blocks, np.ones((2, 2), np.uint8)))
    out = load_image(tmp_path / "x.png", ImageOptions(SIZE, resample, False))
    np.testing.assert_allclose(out, blocks / 255.0, atol=1e-6)


def test_omniglot_options_match_the_omniglot_preprocessing(mirror):
    with zipfile.ZipFile(mirror / "images_evaluation.zip") as zf:
        names = [n for n in zf.namelist() if n.endswith(".png")][:: 2000]
        pngs = [zf.read(n) for n in names]
    for png in pngs:
        np.testing.assert_array_equal(load_image(png, ImageOptions.omniglot(28, "lanczos")),
                                      data.image_to_array(png, 28, "lanczos"))
        # the 'auto' rule recognises Omniglot's white background
        np.testing.assert_array_equal(load_image(png, ImageOptions(28, "lanczos", "auto")),
                                      data.image_to_array(png, 28, "lanczos"))


# ------------------------------------------------------------------------ errors


def test_empty_class_is_named(tmp_path):
    make_folder(tmp_path, {"a": 2})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match=r"b: empty class"):
        read_folder_dataset(tmp_path, image_size=SIZE)


def test_too_few_images_names_classes_and_counts(tmp_path):
    make_folder(tmp_path, {"a": 5, "b": 2, "c": 5, "d": 3})
    with pytest.raises(DataError, match=r"2 classes have fewer images than shot \+ query = 4: b \(2\), d \(3\)"):
        read_folder_dataset(tmp_path, image_size=SIZE, images_per_class=4)
    read_folder_dataset(tmp_path, image_size=SIZE, images_per_class=2)  # enough


def test_unreadable_file_is_named(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"b/broken\.png: unreadable image file"):
        read_folder_dataset(tmp_path, image_size=SIZE)


def test_truncated_file_is_named(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    good = (tmp_path / "a" / "00.png").read_bytes()
    (tmp_path / "a" / "00.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"a/00\.png: unreadable image file"):
        read_folder_dataset(tmp_path, image_size=SIZE)


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit PNG of 100 bytes whose header claims width x height pixels (all zero)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 8)  # a few rows; the decoder would want them all
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_named(tmp_path):
    """A tiny PNG claiming 10^10 pixels: PIL refuses it; the error names the file."""
    make_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "bomb.png").write_bytes(bomb_png(100_000, 100_000))
    assert (tmp_path / "b" / "bomb.png").stat().st_size < 20_000
    with pytest.raises(DataError, match=r"b/bomb\.png: refused, a decompression bomb\? \(Image size \(10000000000 pixels"):
        read_folder_dataset(tmp_path, image_size=SIZE, split=0.5)
    with pytest.raises(DataError, match=r"member x/bomb\.png: refused, a decompression bomb"):
        data.image_to_array(bomb_png(100_000, 100_000), name="archive.zip: member x/bomb.png")
    with pytest.raises(DataError, match=r"<bytes>: refused, a decompression bomb"):  # PIL itself only warns
        load_image(bomb_png(10_000, 10_000), ImageOptions(SIZE))


def test_mixed_channels_name_both_files(tmp_path):
    make_folder(tmp_path, {"a": 2})
    make_folder(tmp_path, {"b": 2}, channels=3)
    with pytest.raises(DataError, match=r"mixed channel counts: \S*a/00\.png is grey, \S*b/00\.png is colour"):
        read_folder_dataset(tmp_path, image_size=SIZE)
    assert read_folder_dataset(tmp_path, image_size=SIZE, channels=3)["images"].shape == (4, 3, SIZE, SIZE)


def test_layout_errors(tmp_path):
    make_folder(tmp_path / "flat", {"a": 2})
    write_png(tmp_path / "flat" / "stray.png", pattern(0))
    with pytest.raises(DataError, match=r"stray\.png: image directly in the root"):
        read_folder_dataset(tmp_path / "flat", image_size=SIZE)
    make_folder(tmp_path / "nested", {"a": 2, "a/sub": 2})
    with pytest.raises(DataError, match=r"nested/a: holds images and sub-folders \(sub\)"):
        read_folder_dataset(tmp_path / "nested", image_size=SIZE)
    with pytest.raises(DataError, match=r"missing does not exist"):
        read_folder_dataset(tmp_path / "missing", image_size=SIZE)


def test_split_errors(tmp_path):
    make_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_folder(tmp_path / "test", {"b": 2})
    with pytest.raises(DataError, match=r"class 'b' is in both .*train and .*test"):
        read_folder_dataset(tmp_path / "train", tmp_path / "test", image_size=SIZE)
    with pytest.raises(ValueError, match="either a test root or a split"):
        read_folder_dataset(tmp_path / "train", tmp_path / "test", image_size=SIZE, split=0.5)
    make_folder(tmp_path / "one", {"a": 2})
    with pytest.raises(DataError, match="leaves one side empty"):
        read_folder_dataset(tmp_path / "one", image_size=SIZE, split=0.5)


# ------------------------------------------------------- symbolic links and shared images


def test_a_link_loop_is_refused_not_walked(tmp_path):
    """`alpha/loop -> .` once gave 140 classes instead of 4 (each class many times over)."""
    make_folder(tmp_path, {"alpha/c1": 2, "alpha/c2": 2, "beta/c1": 2, "beta/c2": 2})
    (tmp_path / "alpha" / "loop").symlink_to(".")
    with pytest.raises(DataError, match=r"alpha/loop is \S*alpha, already in the dataset as \S*alpha"):
        read_folder_dataset(tmp_path, image_size=SIZE, split=0.5)


def test_a_class_linked_twice_is_refused(tmp_path):
    """A training class that is a link to a test class (or two links to one folder) is one class."""
    make_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    make_folder(tmp_path / "test", {"fox": 2, "owl": 2}, seed=1)
    (tmp_path / "train" / "fox_too").symlink_to(tmp_path / "test" / "fox")
    with pytest.raises(DataError, match=r"test/fox is \S*test/fox, already in the dataset as \S*train/fox_too"):
        read_folder_dataset(tmp_path / "train", tmp_path / "test", image_size=SIZE)
    (tmp_path / "train" / "fox_too").unlink()
    (tmp_path / "train" / "cat_too").symlink_to("cat")  # one root, one side
    with pytest.raises(DataError, match=r"train/cat_too is \S*train/cat, already in the dataset"):
        read_folder_dataset(tmp_path / "train", image_size=SIZE, split=0.5)
    (tmp_path / "train" / "cat_too").unlink()
    (tmp_path / "elsewhere").mkdir()
    make_folder(tmp_path / "elsewhere", {"emu": 2}, seed=2)
    (tmp_path / "train" / "emu").symlink_to(tmp_path / "elsewhere" / "emu")  # a class kept elsewhere is fine
    out = read_folder_dataset(tmp_path / "train", tmp_path / "test", image_size=SIZE)
    assert list(out["character_names"]) == ["cat", "dog", "emu", "fox", "owl"]


@pytest.mark.parametrize("how", ["copy", "link"])
def test_an_image_on_both_sides_is_refused(tmp_path, how):
    """A copy (or a file link) of a test image among the training images trains on the test set."""
    make_folder(tmp_path, {"a": 2, "b": 2, "c": 2, "d": 2})
    leaked, target = tmp_path / "d" / "01.png", tmp_path / "a" / "02.png"  # d is on the test side
    if how == "copy":
        target.write_bytes(leaked.read_bytes())
    else:
        target.symlink_to(leaked)
    with pytest.raises(DataError, match=r"1 test images are also training images \(same bytes\): \S*d/01\.png = "
                                         r"\S*a/02\.png"):
        read_folder_dataset(tmp_path, image_size=SIZE, split=0.5)
    target.unlink()
    target.write_bytes((tmp_path / "b" / "01.png").read_bytes())  # shared within the training side: allowed
    assert read_folder_dataset(tmp_path, image_size=SIZE, split=0.5)["images"].shape[0] == 9


def test_the_fingerprint_follows_links_to_what_they_point_at(tmp_path):
    """The Snakefile's data fingerprint (preprocess_folder's params) changes when an image under
    a linked class changes; the former `rglob` did not look behind a folder link."""
    make_folder(tmp_path / "data", {"a": 2, "b": 2})
    make_folder(tmp_path / "elsewhere", {"c": 2}, seed=1)
    (tmp_path / "data" / "c").symlink_to(tmp_path / "elsewhere" / "c")
    roots = [str(tmp_path / "data")]
    before = folder_fingerprint(roots)
    assert folder_fingerprint(roots) == before
    write_png(tmp_path / "elsewhere" / "c" / "01.png", pattern(99))
    edited = folder_fingerprint(roots)
    assert edited != before
    (tmp_path / "data" / "c").unlink()
    (tmp_path / "data" / "c").symlink_to(tmp_path / "data" / "a")  # re-pointed at a class already there
    with pytest.raises(DataError, match="already in the dataset"):
        folder_fingerprint(roots)


def test_options_from_config_name_the_key(tmp_path):
    opts = FolderOptions.from_section({"image_size": 32, "resample": "box", "folder": {"train_root": str(tmp_path)}})
    assert opts.split == 0.25 and opts.test_root is None and opts.image == ImageOptions(32, "box", "auto", None)
    bad = [({}, "data.folder.train_root is not set"),
           ({"train_root": "x", "test_root": "y", "split": 0.5}, "either test_root or split"),
           ({"train_root": "x", "split": 1.5}, "data.folder.split must be a fraction"),
           ({"train_root": "x", "invert": "yes"}, "data.folder.invert must be auto, true or false"),
           ({"train_root": "x", "channels": 2}, "data.folder.channels must be null, 1 or 3")]
    for folder, message in bad:
        with pytest.raises(ValueError, match=message):
            FolderOptions.from_section({"folder": folder})


@pytest.mark.parametrize("method", ["maml", "imaml"])
def test_rgb_images_reach_the_meta_learners(method):
    """(N, 3, H, W) images train a 3-input-channel network (grey data: 1 channel)."""
    from mnk.methods import maml
    from test_maml import synthetic_fewshot

    images, tasks = synthetic_fewshot(query=2)
    small = {k: (v[:4] if k.startswith(("val_", "test_")) and np.ndim(v) else v) for k, v in tasks.items()}
    rgb = np.stack([images, 1 - images, images], axis=1)
    opts = dict(hidden=4, meta_iterations=2, meta_batch_size=2, eval_every=2)
    for data, channels in ((images, 1), (rgb, 3)):
        metrics, checkpoint = maml.train_and_evaluate(data, small, method=method, options=opts, progress=False)
        assert checkpoint["in_channels"] == channels and checkpoint["image_size"] == list(images.shape[1:])
        first_conv = next(v for k, v in checkpoint["state_dict"].items() if v.ndim == 4)
        assert first_conv.shape[1] == channels
        assert 0 <= metrics["accuracy"] <= 1
