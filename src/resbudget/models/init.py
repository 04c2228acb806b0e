"""Data-dependent initialisation: the first convolution as a whitening filter of the training images' patches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_whitening(images: torch.Tensor, kernel_size: int, eps: float = 5e-4) -> torch.Tensor:
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
def whiten_conv_(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> nn.Conv2d:
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
