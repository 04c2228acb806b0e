"""Residual building blocks (the CIFAR ResNet of He et al. 2016, as in kuangliu/pytorch-cifar)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .conv import Conv3x3

ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def batch_norm(channels: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


class IdentityShortcut(nn.Module):
    """Parameter-free shortcut ("option A"): average-pool to the new resolution, zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int, bn: dict | None = None) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "identity" and out_channels >= in_channels:
        return IdentityShortcut(in_channels, out_channels, stride)
    if kind == "identity":  # narrowing: zero-padding cannot drop channels, project instead
        kind = "conv1x1"
    kernel = {"conv1x1": 1, "conv3x3": 3}[kind]
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        batch_norm(out_channels, **(bn or {})),
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN, plus the shortcut, then act (ReLU unless ``activation`` says otherwise)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str, activation: str = "relu",
                 bn: dict | None = None) -> None:
        super().__init__()
        bn = bn or {}
        self.conv1 = Conv3x3(in_channels, out_channels, stride)
        self.bn1 = batch_norm(out_channels, **bn)
        self.conv2 = Conv3x3(out_channels, out_channels)
        self.bn2 = batch_norm(out_channels, **bn)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, bn)
        self.act = ACTIVATION_FNS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class SingleBlock(nn.Module):
    """conv3x3-BN-act plus the shortcut: the cheapest residual block, one convolution per block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str, activation: str = "relu",
                 bn: dict | None = None) -> None:
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels, stride)
        self.bn = batch_norm(out_channels, **(bn or {}))
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, bn)
        self.act = ACTIVATION_FNS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) + self.shortcut(x)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "single": SingleBlock}


class ConvPoolEntry(nn.Module):
    """The start of a ResNet-9-style stage: conv3x3 to the new width, max-pool by the stride, BN, act. Pooling
    after the convolution keeps all of the convolution's outputs in play, where a strided convolution drops 3 in 4."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str = "relu",
                 bn: dict | None = None) -> None:
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)
        self.pool = nn.MaxPool2d(stride) if stride > 1 else nn.Identity()
        self.bn = batch_norm(out_channels, **(bn or {}))
        self.act = ACTIVATION_FNS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pool(self.conv(x))))
