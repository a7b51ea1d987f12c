"""Label encoder on tiny synthetic data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from mnk.methods.encoder import EncoderOptions, LabelEncoder, encode, load_encoder, save_encoder, train_label_encoder


@pytest.fixture(scope="module")
def data():
    """4 classes of 12x12 images: a bright square in a class-specific corner, plus noise."""
    rng = np.random.default_rng(0)
    n_per, k = 6, 4
    imgs = 0.3 * rng.standard_normal((n_per * k, 12, 12)).astype(np.float32)
    labels = np.repeat(np.arange(k) * 10 + 3, n_per)  # arbitrary label values
    for i, lab in enumerate(labels):
        c = (lab - 3) // 10
        r0, c0 = 6 * (c // 2), 6 * (c % 2)
        imgs[i, r0 : r0 + 6, c0 : c0 + 6] += 1.0
    return imgs, labels


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# padding 1, spatial mean, the stored images as they are: the default study's encoder
OPTIONS = EncoderOptions(width=8, epochs=8, lr=1e-2, batch_size=4, padding=1, pooling="mean", invert=True,
                         standardize=False)
KW = dict(progress=False)


def options(**changes):
    return dataclasses.replace(OPTIONS, **changes)


def test_training_reduces_loss_and_encodes(data):
    imgs, labels = data
    model, hist = train_label_encoder(imgs, labels, OPTIONS, seed=0, **KW)
    assert len(hist["train_loss"]) == 8 and len(hist["val_acc"]) == 8
    assert hist["n_val"] == 4 and hist["n_train"] == 20  # one held-out image per class
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert hist["classes"] == [3, 13, 23, 33]
    feats = encode(model, imgs, "cpu")
    assert feats.shape == (24, 8) and feats.dtype == np.float32
    assert np.all(np.isfinite(feats))


def test_deterministic_with_seed(data):
    imgs, labels = data
    m1, h1 = train_label_encoder(imgs, labels, options(epochs=2), seed=3, **KW)
    m2, h2 = train_label_encoder(imgs, labels, options(epochs=2), seed=3, **KW)
    m3, _ = train_label_encoder(imgs, labels, options(epochs=2), seed=4, **KW)
    assert h1["train_loss"] == h2["train_loss"]
    np.testing.assert_array_equal(encode(m1, imgs, "cpu"), encode(m2, imgs, "cpu"))
    assert not np.array_equal(encode(m1, imgs, "cpu"), encode(m3, imgs, "cpu"))


def test_save_load_round_trip(data, tmp_path):
    imgs, labels = data
    model, _ = train_label_encoder(imgs, labels, options(epochs=1), seed=0, **KW)
    path = tmp_path / "sub" / "encoder.pt"
    save_encoder(model, path)
    assert path.exists() and not list(path.parent.glob(".encoder.pt.*"))  # no temp left
    loaded = load_encoder(path)
    np.testing.assert_array_equal(encode(model, imgs, "cpu"), encode(loaded, imgs, "cpu"))


def test_bad_input_messages(data):
    imgs, labels = data
    with pytest.raises(ValueError, match=r"labels must have shape \(24,\)"):
        train_label_encoder(imgs, labels[:-1], OPTIONS, **KW)
    with pytest.raises(ValueError, match=r"images must be \(N, H, W\)"):
        train_label_encoder(imgs[0], labels, OPTIONS, **KW)


@pytest.mark.parametrize("changes,message", [({"width": 0}, "encoder.width must be an integer >= 1"),
                                             ({"lr": -1.0}, "encoder.lr must be a finite number > 0"),
                                             ({"lr": float("inf")}, "encoder.lr must be a finite number > 0"),
                                             ({"lr": float("nan")}, "encoder.lr must be a finite number > 0"),
                                             ({"depth": 3}, "depth")])
def test_bad_options_name_the_key(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        EncoderOptions(**changes)


def test_the_original_encoder_has_valid_convolutions_and_a_flattened_encoding():
    """meta_cntk_utils.py build_CNN: 3 x [conv 3x3 without padding, BatchNorm, ReLU, max-pool],
    Flatten, Linear(width, n_classes): on 28x28 images 28 -> 13 -> 5 -> 1."""
    defaults = EncoderOptions()
    assert (defaults.padding, defaults.pooling, defaults.width, defaults.epochs, defaults.batch_size,
            defaults.lr) == (0, "flatten", 250, 50, 16, 1e-3)
    width, n_classes = 6, 7
    model = LabelEncoder(n_classes, width=width, padding=0, pooling="flatten", image_size=(28, 28))
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.padding == (0, 0) and c.kernel_size == (3, 3) for c in convs)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.features)
    assert model.head.in_features == width  # a 1x1 feature map, flattened
    conv_params = (9 * 1 + 1) * width + 2 * (9 * width + 1) * width
    assert sum(p.numel() for p in model.parameters()) == conv_params + 3 * 2 * width + (width + 1) * n_classes
    x = torch.randn(4, 1, 28, 28)
    assert model.embed(x).shape == (4, width) and model(x).shape == (4, n_classes)
    padded = LabelEncoder(n_classes, width=width, padding=1, pooling="flatten", image_size=(28, 28))
    assert padded.embed(x).shape == (4, 9 * width)  # 28 -> 14 -> 7 -> 3
    with pytest.raises(ValueError, match="no feature map left on 12x12"):
        LabelEncoder(n_classes, width=width, padding=0, image_size=(12, 12))


def test_input_standardisation_uses_the_training_images_and_travels_with_the_encoder(data, tmp_path):
    imgs, labels = data
    opts = options(epochs=1, invert=False, standardize=True)
    model, _ = train_label_encoder(imgs, labels, opts, seed=0, **KW)
    flipped = 1.0 - imgs.astype(np.float64)  # invert false: the files' polarity
    assert model.inputs.mean == pytest.approx(flipped.mean(), rel=1e-12)
    assert model.inputs.std == pytest.approx(flipped.std(), rel=1e-12)
    save_encoder(model, tmp_path / "encoder.pt")
    loaded = load_encoder(tmp_path / "encoder.pt")
    assert loaded.inputs == model.inputs
    # other (e.g. test) images are prepared with the training statistics: the same encodings
    # as the bare network on (1 - x - mean) / std written out here
    bare = LabelEncoder(**model.shape)
    bare.load_state_dict(model.state_dict())
    others = imgs[::-1] * 0.5 + 0.2
    prepared = ((1.0 - others - flipped.mean()) / flipped.std()).astype(np.float32)
    np.testing.assert_allclose(encode(loaded, others), encode(bare, prepared), rtol=1e-5, atol=1e-5)


def test_a_diverged_encoder_stops_naming_encoder_lr(data):
    """A learning rate so large that the loss is NaN (measured with `encoder.lr: .inf`: the
    prototypes baseline then scored exactly chance, exit 0) stops the training, naming the key."""
    imgs, labels = data
    with pytest.raises(FloatingPointError, match=r"loss nan in epoch 1; lower encoder.lr \(now 1e\+20\)"):
        train_label_encoder(imgs, labels, options(lr=1e20, epochs=2), seed=0, **KW)


def test_non_finite_features_are_an_error_never_class_0(data):
    """NaN features (broken weights) are refused by the encoder and by every decoder: argmax
    would call them class 0."""
    from mnk.methods.targets import decode
    from mnk.study.selection import prototype_labels

    imgs, labels = data
    model, _ = train_label_encoder(imgs, labels, options(epochs=1), seed=0, **KW)
    with torch.no_grad():
        model.head.weight.zero_()  # the head does not touch the features: still finite
        next(model.features.parameters())[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"features are not finite for 24 of 24 images"):
        encode(model, imgs, "cpu")
    features = np.ones((6, 3))
    features[4] = np.nan  # a query of the task below
    tasks = {"way": 2, "test_support": np.array([[0, 1]]), "test_query": np.array([[2, 4]]),
             "test_support_labels": np.array([[0, 1]]), "test_query_labels": np.array([[0, 1]])}
    with pytest.raises(FloatingPointError, match=r"not finite \(3 values, first at \(0, 1, 0\)\)"):
        prototype_labels(features, tasks, "test")
    centroids = np.array([[[0.0, 1.0], [np.nan, 0.0]]])
    for decoder in ("nearest_centroid", "least_squares"):
        with pytest.raises(FloatingPointError, match="class encodings"):
            decode(np.zeros((1, 2, 2)), centroids, decoder)
