"""Getting a net ready to train the fast-recipe way: whitening stem, identity-initialised convolutions, frozen tensors.

The training loop calls :func:`prepare_`, :func:`whiten_stem_` and :func:`train_stem_bias_`; it never reaches into the
net's layers itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .builder import ResNet


def patch_whitening(images: torch.Tensor, kernel_size: int, eps: float) -> torch.Tensor:
    """PCA-whitening filters for ``kernel_size`` patches of ``images`` (N, C, H, W), normalised floats.

    Returns (D, C, k, k) filters, D = C*k*k, sorted by decreasing variance of the direction they pick out: filter i
    is eigenvector i of the patch covariance divided by sqrt(eigenvalue + eps), so the D responses on these patches
    are uncorrelated with unit variance (up to eps). This is the "patch-whitening" first layer of the fastest CIFAR
    recipes: the net starts from decorrelated inputs instead of learning to decorrelate them.
    """
    c, k = images.shape[1], kernel_size
    d = c * k * k
    zeros = dict(dtype=torch.float64, device=images.device)
    total, outer, count = torch.zeros(d, **zeros), torch.zeros(d, d, **zeros), 0
    for chunk in images.split(500):  # every k x k window, 500 images at a time (5,000 at once would need ~1 GB)
        patches = F.unfold(chunk.double(), k).transpose(1, 2).reshape(-1, d)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += patches.shape[0]
    mean = total / count
    cov = (outer - count * torch.outer(mean, mean)) / (count - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    order = eigenvalues.argsort(descending=True)
    filters = eigenvectors[:, order].T / (eigenvalues[order].clamp_min(0) + eps).sqrt()[:, None]
    return filters.reshape(-1, c, k, k).float()


@torch.no_grad()
def whiten_conv_(conv: nn.Conv2d, images: torch.Tensor, eps: float) -> nn.Conv2d:
    """Set ``conv``'s filters from ``patch_whitening`` of ``images`` (in place; returns ``conv``).

    With at least 2·D output channels the filters go in as D pairs (w, -w), so a following ReLU keeps both signs of
    every whitened direction (as airbench does); with fewer, the strongest directions are kept, in pairs while they
    fit. Filters beyond 2·D keep their random initialisation."""
    if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ValueError("whitening needs a plain square convolution")
    if images.shape[1] != conv.in_channels:
        raise ValueError(f"images have {images.shape[1]} channels, the convolution takes {conv.in_channels}")
    filters = patch_whitening(images.to(conv.weight.device), conv.kernel_size[0], eps).to(conv.weight.dtype)
    d, out = filters.shape[0], conv.out_channels
    pairs = min(d, out // 2)
    conv.weight[:2 * pairs:2] = filters[:pairs]
    conv.weight[1:2 * pairs:2] = -filters[:pairs]
    if out % 2 and pairs < d:
        conv.weight[out - 1] = filters[pairs]
    if conv.bias is not None:
        conv.bias[:2 * pairs] = 0
    return conv


@torch.no_grad()
def dirac_init_(convs: list[nn.Conv2d]) -> None:
    """Each conv's first ``in_channels`` filters become identities (filter i passes input channel i through), the
    rest keep their random initialisation: airbench's start, where every layer begins close to passing its input on."""
    for conv in convs:
        if conv.groups != 1:
            raise ValueError("dirac initialisation needs ungrouped convolutions")
        nn.init.dirac_(conv.weight[:conv.in_channels])


def prepare_(model: ResNet, *, dirac: bool = False, freeze_bn_weight: bool = False, freeze_stem: bool = False) -> None:
    """``dirac``: every 3x3 conv after the stem starts as identities (:func:`dirac_init_`); ``freeze_bn_weight``:
    BatchNorm scales stay at 1 (airbench trains only their biases); ``freeze_stem``: the stem's filters do not train."""
    if dirac:
        dirac_init_([m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not model.stem_conv
                     and m.kernel_size == (3, 3)])
    if freeze_bn_weight:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
    if freeze_stem:
        model.stem_conv.weight.requires_grad_(False)


def whiten_stem_(model: ResNet, images: torch.Tensor, eps: float) -> None:
    """The stem's filters from the patches of ``images`` (normalised floats): see :func:`whiten_conv_`."""
    whiten_conv_(model.stem_conv, images.to("cpu"), eps)


def train_stem_bias_(model: ResNet, trainable: bool) -> None:
    """Switch the training of the stem's bias on or off (with a frozen stem and the bias off, the first stage needs
    no input gradient, the dearest backward pass of the net)."""
    if model.stem_conv.bias is None:
        raise ValueError("the stem has no bias to train (its spec has stem_norm = true)")
    model.stem_conv.bias.requires_grad_(trainable)
