"""Spec -> nn.Module. Nothing else decides the architecture."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BasicBlock
from .spec import ModelSpec


class ResNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, spec.stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(spec.stem_width),
            nn.ReLU(inplace=True),
        )
        stages, width = [], spec.stem_width
        for out_width, blocks, stride in zip(spec.stage_widths, spec.stage_blocks, spec.stage_strides):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(width, out_width, stride if b == 0 else 1, spec.shortcut))
                width = out_width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        head: list[nn.Module] = []
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
