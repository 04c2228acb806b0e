"""Spec -> nn.Module. Nothing else decides the architecture."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BasicBlock, ConvPoolEntry
from .spec import ModelSpec


def make_stem(spec: ModelSpec, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(groups * spec.in_channels, groups * spec.stem_width, 3, padding=1, bias=False, groups=groups),
        nn.BatchNorm2d(groups * spec.stem_width),
        nn.ReLU(inplace=True),
    )


def make_stages(spec: ModelSpec, groups: int = 1) -> nn.Sequential:
    """The stages of ``spec``; ``groups=K``: K independent copies side by side (see ``blocks``)."""
    stages, width = [], spec.stem_width
    for out_width, blocks, stride in zip(spec.stage_widths, spec.stage_blocks, spec.stage_strides):
        layers: list[nn.Module] = []
        if spec.stage_entry == "conv-pool":
            layers.append(ConvPoolEntry(width, out_width, stride, groups))
            width, stride = out_width, 1
        for _ in range(blocks):
            layers.append(BasicBlock(width, out_width, stride, spec.shortcut, groups))
            width, stride = out_width, 1
        stages.append(nn.Sequential(*layers))
    return nn.Sequential(*stages)


class ResNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = make_stem(spec)
        self.stages = make_stages(spec)
        head: list[nn.Module] = []
        width = spec.stage_widths[-1]
        for hidden in spec.head_hidden:
            head += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        head.append(nn.Linear(width, spec.num_classes))
        self.head = nn.Sequential(*head)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # Global average pooling: kuangliu's avg_pool2d(out, 4) on a 4x4 map, but valid for any final size.
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


def build_model(spec: ModelSpec) -> ResNet:
    return ResNet(spec)
