"""Label encoder: a small supervised CNN whose penultimate features are MNK targets.

The original MNK code replaces one-hot targets by "label encodings": a small CNN is
pre-trained with supervision on the *training* characters only, and its penultimate
features serve as regression targets (each class's target is its centroid within a
task, see mnk.methods.targets.class_centroid_targets; a test query is assigned to the nearest
support-class centroid, mnk.methods.targets.decode).

Architecture: 3 x [conv 3x3 (zero padding ``padding``, ``width`` channels), BatchNorm, ReLU,
max-pool 2x2], then the encoding: the last feature map flattened (``pooling: flatten``) or
averaged over space (``mean``: ``width`` features); a linear classifier head. The original
(``meta_cntk_utils.py`` ``build_CNN``): padding 0 and flatten, so on 28x28 images
28 -> 13 -> 5 -> 1 and ``Linear(width, n_classes)``. The model prepares its own inputs
(``invert`` / ``standardize``, mnk.methods.inputs, statistics of its training images),
saved with it, so :func:`encode` treats validation and test images alike.
Training (original settings): Adam lr 1e-3, batch 16, 50 epochs, cross-entropy; one
image per class is held out to watch overfitting (history["val_*"]). Seeded: the same
seed and data give the same model on CPU (tested); on CUDA up to cuDNN's own
nondeterminism (set torch.backends.cudnn.deterministic for bitwise repeats).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from dataclasses import asdict

from mnk.infra.io import load_torch, save_torch
from mnk.methods.inputs import InputTransform
from mnk.methods.options import EncoderOptions, feature_side

__all__ = ["EncoderOptions", "LabelEncoder", "train_label_encoder", "encode", "save_encoder", "load_encoder"]


class LabelEncoder(nn.Module):
    def __init__(self, n_classes: int, width: int = 250, in_channels: int = 1, padding: int = 0,
                 pooling: str = "flatten", image_size: tuple[int, int] = (28, 28), inputs: dict | None = None):
        super().__init__()
        self.shape = dict(n_classes=int(n_classes), width=int(width), in_channels=int(in_channels),
                          padding=int(padding), pooling=pooling, image_size=[int(s) for s in image_size])
        self.inputs = InputTransform(**(inputs or {}))
        sides = [feature_side("conv3", s, padding) for s in image_size]
        if min(sides) < 1:
            raise ValueError(f"the label encoder with padding {padding} has no feature map left on "
                             f"{image_size[0]}x{image_size[1]} images (padding 1 or larger images keep one)")
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(3):
            layers += [
                nn.Conv2d(c, width, 3, padding=padding),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c = width
        pool = [nn.AdaptiveAvgPool2d(1)] if pooling == "mean" else []
        self.features = nn.Sequential(*layers, *pool, nn.Flatten())
        self.head = nn.Linear(width * (1 if pooling == "mean" else sides[0] * sides[1]), n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The encoding of stored images (prepared here by the model's own input transform)."""
        return self.features(self.inputs(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _as_input(images: np.ndarray) -> torch.Tensor:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN/inf")
    return torch.from_numpy(np.ascontiguousarray(x))


def _holdout_split(labels: np.ndarray, rng: np.random.Generator):
    """One image per class (classes with >= 2 images) held out for validation."""
    val = []
    for k in np.unique(labels):
        idx = np.nonzero(labels == k)[0]
        if idx.size >= 2:
            val.append(rng.choice(idx))
    val = np.sort(np.array(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(labels.size), val)
    return train, val


@torch.no_grad()
def _evaluate(model, x, y, device, batch_size=256):
    model.eval()
    loss = correct = 0.0
    for lo in range(0, len(x), batch_size):
        xb, yb = x[lo : lo + batch_size].to(device), y[lo : lo + batch_size].to(device)
        out = model(xb)
        loss += nn.functional.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    return loss / max(len(x), 1), correct / max(len(x), 1)


def train_label_encoder(images: np.ndarray, labels: np.ndarray, options: EncoderOptions, *, seed: int = 0,
                        device: str = "cpu", progress: bool = True) -> tuple[LabelEncoder, dict[str, Any]]:
    """Train the label encoder on (training-character) images with supervision.

    images (N, H, W) float32, as stored: all of them are training images, so the input
    standardisation's statistics are theirs; labels (N,) ints (any values; remapped to 0..C-1, the map
    is in history["classes"]). Returns (model in eval mode on ``device``, history) with
    per-epoch train_loss, train_acc, val_loss, val_acc (val: one held-out image per
    class; empty lists if no class has two images).
    """
    from tqdm.auto import tqdm

    x = _as_input(images)
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {labels.shape}")
    classes, y_np = np.unique(labels, return_inverse=True)
    y = torch.from_numpy(y_np.astype(np.int64))
    tr_idx, val_idx = _holdout_split(y_np, np.random.default_rng(seed))
    torch.manual_seed(seed)
    inputs = InputTransform.fit(x.numpy(), invert=options.invert, standardize=options.standardize)
    model = LabelEncoder(len(classes), width=options.width, in_channels=x.shape[1], padding=options.padding,
                         pooling=options.pooling, image_size=tuple(x.shape[2:]), inputs=asdict(inputs)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=options.lr)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, Any] = dict(train_loss=[], train_acc=[], val_loss=[], val_acc=[],
                                classes=classes.tolist(), n_train=int(tr_idx.size), n_val=int(val_idx.size))
    bar = tqdm(range(options.epochs), desc="label encoder", disable=not progress)
    for epoch in bar:
        loss, acc = _train_epoch(model, opt, x[tr_idx], y[tr_idx], options.batch_size, gen, device)
        _check_loss(loss, epoch, options)
        hist["train_loss"].append(loss)
        hist["train_acc"].append(acc)
        shown = {"loss": f"{loss:.3f}"}
        if val_idx.size:
            vl, va = _evaluate(model, x[val_idx], y[val_idx], device)
            hist["val_loss"].append(vl)
            hist["val_acc"].append(va)
            shown["val_acc"] = f"{va:.3f}"
        bar.set_postfix(**shown)
    model.eval()
    return model, hist


def _check_loss(loss: float, epoch: int, options: EncoderOptions) -> None:
    """A diverged encoder stops here: its NaN features would make every class look alike."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"label encoder training diverged: loss {loss} in epoch {epoch + 1}; lower "
                                 f"encoder.lr (now {options.lr:g}) in the config's encoder section")


def _train_epoch(model, opt, x, y, batch_size: int, gen, device) -> tuple[float, float]:
    """One pass over (x, y) in seeded random batches: (mean loss, accuracy)."""
    model.train()
    perm = torch.randperm(len(x), generator=gen)
    tot = correct = 0.0
    for lo in range(0, len(perm), batch_size):
        b = perm[lo : lo + batch_size]
        if len(b) < 2 and len(perm) >= 2:  # BatchNorm needs >1 sample: skip a last singleton
            continue
        xb, yb = x[b].to(device), y[b].to(device)
        out = model(xb)
        loss = nn.functional.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += loss.item() * len(b)
        correct += (out.argmax(1) == yb).sum().item()
    return tot / len(perm), correct / len(perm)


@torch.no_grad()
def encode(model: LabelEncoder, images: np.ndarray, device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """The encodings (penultimate features): (N, H, W) stored images -> (N, features) float32."""
    x = _as_input(images)
    model = model.to(device).eval()
    out = [model.embed(x[lo : lo + batch_size].to(device)).cpu() for lo in range(0, len(x), batch_size)]
    if not out:
        return np.zeros((0, model.head.in_features), dtype=np.float32)
    features = torch.cat(out).numpy().astype(np.float32, copy=False)
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise FloatingPointError(f"label encoder features are not finite for {int(bad.sum())} of {len(bad)} "
                                 f"images (first: image {int(np.argmax(bad))}): the encoder's weights are broken; "
                                 "retrain it (a lower encoder.lr)")
    return features


def save_encoder(model: LabelEncoder, path: str | os.PathLike) -> None:
    """Save the shape, the input transform and the weights atomically (torch.save of plain tensors and values)."""
    state = {"shape": model.shape, "inputs": asdict(model.inputs),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    save_torch(path, state)


def load_encoder(path: str | os.PathLike, device: str = "cpu") -> LabelEncoder:
    state = load_torch(path)
    model = LabelEncoder(**state["shape"], inputs=state["inputs"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval()
