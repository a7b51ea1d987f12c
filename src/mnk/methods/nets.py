"""Convolutional few-shot networks for the MAML / iMAML baselines.

Both networks use batch normalisation with batch statistics only (the equivalent of
``nn.BatchNorm2d(track_running_stats=False)``): normalisation always uses the statistics of
the batch at hand (transductive, as in Finn et al. 2017), the module has no buffers, and
``torch.func.functional_call`` on it is a pure function of the parameters.

The normalisation is written with elementary ops (:class:`BatchStatNorm2d`) rather than
``F.batch_norm`` because torch's fused batch-norm kernels give WRONG second-order
derivatives under ``vmap`` (grad of grad of vmapped ``native_batch_norm``; cf.
pytorch/functorch#534, "batch_norm backward batching rule is incorrect for grad_input")
and wrong nested forward-mode derivatives (pytorch/pytorch#196699), i.e. exactly the
MAML meta-gradient and the iMAML Hessian-vector products. Measured here with torch 2.13:
vmapped second-order MAML meta-gradient off by ~1e-2 (float64) against a per-task loop
and finite differences with ``nn.BatchNorm2d``; exact with this module.

Every 3x3 convolution has zero padding ``padding`` (the options' key): 0 ("valid"
convolutions, the original MAML network's) or 1 (same-size convolutions).

* ``conv3`` -- 3 x [conv 3x3, BatchNorm, ReLU, 2x2 max-pool] with ``hidden`` channels,
  flattened, linear head. With ``padding: 0`` it is the original comparison's MAML network
  (``maml_utils.py`` ``build_MAML_model``): on 28x28 inputs 28 -> 13 -> 5 -> 1, so
  ``Linear(hidden, way)``, 75,205 parameters for 5-way and 64 channels (padding 1: 3x3
  feature maps, ``Linear(9 hidden, way)``, 77,765).
* ``conv4`` -- the standard 4-layer Omniglot network of the MAML paper: 4 x [conv 3x3,
  stride 2, BatchNorm, ReLU] with ``hidden`` channels, spatial mean, linear head
  (Finn et al.'s Omniglot variant uses strided convolutions instead of max-pooling).
* ``imaml4`` -- the iMAML network of the original MNK comparison (``imaml_utils.py``, with
  ``padding: 1``): 4 x [conv 3x3, ReLU, 2x2 max-pool, BatchNorm] with ``hidden`` channels,
  flattened (28 -> 14 -> 7 -> 3 -> 1), linear head, 112,261 parameters for 5-way and 64
  channels; conv weights ~ N(0, 2 / (9 * out_channels)) with zero bias, BatchNorm weight 1 /
  bias 0, and a zero-initialised linear head (weight and bias).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NETWORKS", "BatchStatNorm2d", "build_network"]

from mnk.methods.options import NETWORKS, feature_side  # noqa: F401 (the names, with the options)


class BatchStatNorm2d(nn.Module):
    """BatchNorm2d with batch statistics only, from elementary (vmap/AD-safe) ops.

    Same parameters (``weight``, ``bias``) and forward values as
    ``nn.BatchNorm2d(c, track_running_stats=False)`` (biased variance, eps 1e-5).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
        x_hat = (x - mean) * torch.rsqrt(var + self.eps)
        return x_hat * self.weight[:, None, None] + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, batch statistics only"


def _block(c_in: int, c_out: int, *, stride: int, pool: bool, padding: int = 1) -> nn.Sequential:
    layers = [
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=padding),
        BatchStatNorm2d(c_out),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _pool_then_norm_block(c_in: int, c_out: int, padding: int = 1) -> nn.Sequential:
    """The original iMAML block: normalisation after the pooling."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        BatchStatNorm2d(c_out),
    )


def _init_imaml4(net: nn.Sequential) -> None:
    """The original iMAML initialisation: He-normal (fan-out) convs, zero linear head."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0.0, (2.0 / fan_out) ** 0.5)
                module.bias.zero_()
            elif isinstance(module, nn.Linear):
                module.weight.zero_()
                module.bias.zero_()


class _SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def build_network(
    name: str,
    *,
    n_classes: int,
    image_size: tuple[int, int],
    hidden: int = 64,
    in_channels: int = 1,
    padding: int = 1,
) -> nn.Module:
    """Build ``conv3``, ``conv4`` or ``imaml4`` for inputs of shape (B, in_channels, H, W), or
    ``mlp`` for points (B, in_channels) (`image_size` ()): the MAML paper's regression network,
    two hidden ReLU layers of `hidden` units (40 there)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of {NETWORKS}")
    if name == "mlp":
        return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, n_classes))
    if not image_size:
        raise ValueError(f"network {name!r} needs images; points (N, d) need network 'mlp'")
    if min(feature_side(name, side, padding) for side in image_size) < 1:
        raise ValueError(f"network {name!r} with padding {padding} has no feature map left on "
                         f"{image_size[0]}x{image_size[1]} images (padding 1 or larger images keep one)")
    channels = [in_channels] + [hidden] * 4
    if name == "conv3":
        features = nn.Sequential(
            *(_block(a, b, stride=1, pool=True, padding=padding) for a, b in zip(channels[:3], channels[1:4])),
            nn.Flatten(),
        )
    elif name == "conv4":
        features = nn.Sequential(
            *(_block(a, b, stride=2, pool=False, padding=padding) for a, b in zip(channels, channels[1:])),
            _SpatialMean(),
        )
    else:
        features = nn.Sequential(
            *(_pool_then_norm_block(a, b, padding) for a, b in zip(channels, channels[1:])), nn.Flatten()
        )
    with torch.no_grad():
        n_features = features(torch.zeros(2, in_channels, *image_size)).shape[-1]
    net = nn.Sequential(features, nn.Linear(n_features, n_classes))
    if name == "imaml4":
        _init_imaml4(net)
    return net
