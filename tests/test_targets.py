"""mnk.methods.targets: targets and decoders, against direct linear algebra."""

from __future__ import annotations

import numpy as np
import pytest

from mnk.methods.mnk import MNKOptions, TaskSet, mnk_predict
from mnk.methods.targets import decode, least_squares_labels, one_hot, predict_labels, task_targets


def _problem(seed=0, way=5, n_images=80, n_tasks=6, d=12):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_images, 7))
    K = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1) / 7) + 0.2 * X @ X.T / 7
    idx = np.stack([rng.choice(n_images, 3 * way, replace=False) for _ in range(n_tasks)])
    tasks = {"way": np.int64(way), "test_support": idx[:, :way], "test_query": idx[:, way:],
             "test_support_labels": np.tile(np.arange(way), (n_tasks, 1)),
             "test_query_labels": np.tile(np.repeat(np.arange(way), 2), (n_tasks, 1))}
    features = rng.standard_normal((n_images, d))
    return K, tasks, features


def test_least_squares_decoding_of_the_per_task_term_is_one_hot_regression():
    """Per-task kernel regression on encoder targets, decoded by least squares, gives the
    labels of the one-hot regression K_qs (K_ss + r I)^-1 I computed here directly; the
    nearest-centroid decoding of the same predictions does not (the original's loss)."""
    K, tasks, features = _problem()
    r1 = 1e-3
    support_y, _, encodings = task_targets(tasks, "test", features, with_query=False)
    empty = TaskSet(np.zeros((0, 5), int), np.zeros((0, 10), int), np.zeros((0, 5, 12)), np.zeros((0, 10, 12)))
    pred = mnk_predict(K, empty, TaskSet(tasks["test_support"], tasks["test_query"], support_y),
                       MNKOptions(ridge=(r1, 1e-5), normalize_ntk=False))
    want = []
    for s, q in zip(tasks["test_support"], tasks["test_query"]):
        scores = K[np.ix_(q, s)] @ np.linalg.solve(K[np.ix_(s, s)] + r1 * np.eye(5), np.eye(5))
        want.append(scores.argmax(-1))
    np.testing.assert_array_equal(decode(pred, encodings, "least_squares"), np.array(want))
    assert (decode(pred, encodings, "nearest_centroid") != np.array(want)).any()


def test_least_squares_labels_by_hand():
    # encodings e0 = (1, 0), e1 = (1, 1); p = c0 e0 + c1 e1 solved by hand
    C = np.array([[1.0, 0.0], [1.0, 1.0]])
    p = np.array([[[0.5, -1.0], [1.0, 3.0], [3.0, 0.5]]])
    # c = C^-T p: (0.5, -1) -> (1.5, -1) -> 0; (1, 3) -> (-2, 3) -> 1; (3, 0.5) -> (2.5, 0.5) -> 0
    np.testing.assert_array_equal(least_squares_labels(p, C), [[0, 1, 0]])
    # with more encoding dimensions than classes: the minimum-norm least-squares fit
    C3 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(least_squares_labels(np.array([[[0.2, 0.3, 9.0]]]), C3), [[1]])
    with pytest.raises(ValueError, match="decoder must be one of"):
        decode(p, C, "argmax")


def test_one_hot_targets_decode_the_same_with_both_decoders():
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((4, 6, 5))
    eye = np.eye(5)
    np.testing.assert_array_equal(decode(pred, eye, "least_squares"), pred.argmax(-1))
    np.testing.assert_array_equal(decode(pred, eye, "nearest_centroid"), pred.argmax(-1))
    np.testing.assert_array_equal(predict_labels(pred), pred.argmax(-1))


def test_task_targets_use_query_labels_only_for_training_tasks():
    _, tasks, features = _problem(seed=1)
    tasks = {**tasks, **{k.replace("test", "train"): v for k, v in tasks.items() if k.startswith("test")}}
    ys, yq, enc = task_targets(tasks, "test", features, with_query=False)
    assert yq is None
    np.testing.assert_allclose(ys, features[tasks["test_support"]])  # one shot: centroid = the image
    ys, yq, enc = task_targets(tasks, "train", features, with_query=True)
    s, q = tasks["train_support"][0], tasks["train_query"][0]
    np.testing.assert_allclose(enc[0, 2], features[[s[2], q[4], q[5]]].mean(0))
    ys, yq, enc = task_targets(tasks, "train", None, with_query=True)
    np.testing.assert_array_equal(yq, one_hot(tasks["train_query_labels"], 5))
    np.testing.assert_array_equal(enc, np.eye(5))
