"""Regression targets for few-shot classification, and decoding predictions into labels.

Targets (``mnk.grid.targets`` in the config):

* ``onehot``: class ``k`` of a task is the unit vector ``e_k``.
* ``encoder``: the original MNK code's label encodings: each point's target is the
  centroid, within its task, of the label-encoder features of its class
  (:func:`class_centroid_targets`). Training tasks use the centroids of support + query
  (all their labels are known); evaluation tasks only the support.

Decoders (``mnk.decoder``) turn a predicted target ``p`` of a query into a class, given the
task's class encodings ``C`` (``way x d``; the identity for one-hot):

* ``nearest_centroid`` (the original): the class whose encoding is nearest to ``p``.
* ``least_squares``: the coefficients ``c`` minimising ``||p - C^T c||`` (minimum-norm
  solution), class = argmax ``c``. A per-task kernel regression on encodings predicts
  ``F C`` with ``F`` the one-hot regression's output, so with linearly independent
  encodings this decoder recovers the one-hot regression's labels exactly.
"""

from __future__ import annotations

import numpy as np

from mnk.methods.options import DECODERS, TARGETS  # noqa: F401 (one list, with the config's)

__all__ = [
    "TARGETS",
    "DECODERS",
    "one_hot",
    "class_centroids",
    "class_centroid_targets",
    "predict_labels",
    "least_squares_labels",
    "decode",
    "task_targets",
]



def one_hot(labels, way: int) -> np.ndarray:
    """One-hot float64 targets: labels (...,) ints in [0, way) -> (..., way)."""
    labels = np.asarray(labels)
    if labels.size and (not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= way):
        raise ValueError(f"labels must lie in [0, {way}), got range [{labels.min()}, {labels.max()}]")
    return np.eye(way, dtype=np.float64)[labels]


def class_centroids(features, labels, way: int) -> np.ndarray:
    """Per-task class centroids: features (n_tasks, n, d), labels (n_tasks, n) -> (n_tasks, way, d).

    Raises ValueError if a class has no point in some task.
    """
    feats = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if feats.ndim != 3 or labels.shape != feats.shape[:2]:
        raise ValueError(
            f"features must be (n_tasks, n, d) and labels (n_tasks, n); got {feats.shape}, {labels.shape}"
        )
    oh = one_hot(labels, way)  # (t, n, way)
    counts = oh.sum(axis=1)  # (t, way)
    if (counts == 0).any():
        t, k = np.argwhere(counts == 0)[0]
        raise ValueError(f"class {k} has no point in task {t}: cannot form its centroid")
    return np.einsum("tnk,tnd->tkd", oh, feats) / counts[:, :, None]


def class_centroid_targets(features, labels, way: int) -> np.ndarray:
    """Targets where each point's target is its class centroid within its task.

    features (n_tasks, n, d) (e.g. label-encoder features of the task's images), labels
    (n_tasks, n) -> (n_tasks, n, d). The centroid is over the points given.
    """
    return _targets_of(class_centroids(features, labels, way), labels)


def _targets_of(centroids: np.ndarray, labels) -> np.ndarray:
    """Each point's class centroid: centroids (n_tasks, way, d), labels (n_tasks, n)."""
    return np.take_along_axis(centroids, np.asarray(labels)[:, :, None], axis=1)


def _check_finite(values: np.ndarray, what: str) -> np.ndarray:
    """NaN is never a class: argmax would call it class 0."""
    bad = ~np.isfinite(values)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise FloatingPointError(f"{what} are not finite ({int(bad.sum())} values, first at {where}): "
                                 "no class can be decoded from them")
    return values


def _check_pred(pred_query) -> np.ndarray:
    p = np.asarray(pred_query, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"pred_query must be (n_tasks, q, d), got shape {p.shape}")
    return _check_finite(p, "predicted query targets (or features)")


def _task_encodings(encodings, p: np.ndarray) -> np.ndarray:
    cent = np.asarray(encodings, dtype=np.float64)
    if cent.ndim == 2:
        cent = np.broadcast_to(cent, (p.shape[0],) + cent.shape)
    if cent.ndim != 3 or cent.shape[0] != p.shape[0] or cent.shape[2] != p.shape[2]:
        raise ValueError(f"class encodings shape {cent.shape} does not match pred_query shape {p.shape}")
    return _check_finite(cent, "class encodings (centroids)")


def predict_labels(pred_query, centroids=None) -> np.ndarray:
    """Nearest-centroid decoding: each predicted target to the nearest class encoding.

    pred_query (n_tasks, q, d); centroids (n_tasks, way, d), or (way, d) shared by all
    tasks. ``centroids=None`` means argmax over d, which is the nearest centroid for
    one-hot targets (centroids = identity): |p - e_k|^2 = |p|^2 - 2 p_k + 1.
    Returns int64 labels (n_tasks, q).
    """
    p = _check_pred(pred_query)
    if centroids is None:
        return p.argmax(axis=-1)
    cent = _task_encodings(centroids, p)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 does not change the argmin
    score = 2.0 * np.einsum("tqd,tkd->tqk", p, cent) - (cent**2).sum(-1)[:, None, :]
    return score.argmax(axis=-1)


def least_squares_labels(pred_query, encodings) -> np.ndarray:
    """Least-squares decoding: argmax of c = argmin ||p - C^T c|| per query (minimum norm).

    pred_query (n_tasks, q, d); encodings C (n_tasks, way, d) or (way, d). Returns int64
    labels (n_tasks, q).
    """
    p = _check_pred(pred_query)
    cent = _task_encodings(encodings, p)
    coeffs = np.einsum("tkd,tqd->tqk", np.linalg.pinv(np.swapaxes(cent, 1, 2)), p)
    return coeffs.argmax(axis=-1)


def decode(pred_query, encodings, decoder: str) -> np.ndarray:
    """Labels of predicted query targets with the named decoder (see the module docstring)."""
    if decoder == "nearest_centroid":
        return predict_labels(pred_query, encodings)
    if decoder == "least_squares":
        return least_squares_labels(pred_query, encodings)
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


def task_targets(tasks: dict, name: str, features=None, *, with_query: bool):
    """Targets of one task set of a tasks file: (support_y, query_y or None, encodings).

    ``features=None``: one-hot targets, encodings the identity. Otherwise ``features``
    (n_images, d) indexes the tasks file's local images, and each class's target is its
    centroid over the task's support (+ query when ``with_query``: training tasks, whose
    query labels are known; never for evaluation tasks). encodings: (n_tasks, way, d).
    """
    way = int(tasks["way"])
    support, support_labels = tasks[f"{name}_support"], tasks[f"{name}_support_labels"]
    query_labels = tasks[f"{name}_query_labels"]
    if features is None:
        query_y = one_hot(query_labels, way) if with_query else None
        return one_hot(support_labels, way), query_y, np.eye(way)
    points, labels = support, support_labels
    if with_query:
        points = np.concatenate([support, tasks[f"{name}_query"]], axis=1)
        labels = np.concatenate([support_labels, query_labels], axis=1)
    centroids = class_centroids(np.asarray(features)[points], labels, way)
    query_y = _targets_of(centroids, query_labels) if with_query else None
    return _targets_of(centroids, support_labels), query_y, centroids
