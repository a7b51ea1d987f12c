"""Label encoder on tiny synthetic data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mnk.methods.encoder import EncoderOptions, encode, load_encoder, save_encoder, train_label_encoder


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


OPTIONS = EncoderOptions(width=8, epochs=8, lr=1e-2, batch_size=4)
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
