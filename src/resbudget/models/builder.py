"""Spec -> nn.Module. Nothing else decides the architecture."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BLOCKS, ConvPoolEntry, batch_norm
from .spec import ModelSpec, stage_sizes, stem_padded, stem_size

ACTIVATION_MODULES = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


def bn_args(spec: ModelSpec) -> dict:
    return {"eps": spec.bn_eps, "momentum": spec.bn_momentum}


def make_stem(spec: ModelSpec) -> nn.Sequential:
    """conv(stem_kernel) [+ BN] + act."""
    k = spec.stem_kernel
    conv = nn.Conv2d(spec.in_channels, spec.stem_width, k, padding=k // 2 if stem_padded(spec) else 0,
                     bias=not spec.stem_norm)
    norm = [batch_norm(spec.stem_width, **bn_args(spec))] if spec.stem_norm else []
    return nn.Sequential(conv, *norm, ACTIVATION_MODULES[spec.activation]())


def make_stages(spec: ModelSpec) -> nn.Sequential:
    stages, width = [], spec.stem_width
    sizes_in = [stem_size(spec), *stage_sizes(spec)]
    for out_width, blocks, stride, size_in in zip(spec.stage_widths, spec.stage_blocks, spec.stage_strides, sizes_in):
        layers: list[nn.Module] = []
        if spec.stage_entry == "conv-pool":
            layers.append(ConvPoolEntry(width, out_width, stride, spec.activation, bn_args(spec)))
            width, stride = out_width, 1
        for _ in range(blocks):
            block = BLOCKS[spec.block](width, out_width, stride, spec.shortcut, spec.activation, bn_args(spec))
            if size_in == 1 and stride > 1:
                unstride_(block)
            layers.append(block)
            width, stride = out_width, 1
        stages.append(nn.Sequential(*layers))
    return nn.Sequential(*stages)


def unstride_(block: nn.Module) -> None:
    """Stride 1 for the convolutions of a block whose input map is 1x1. With padding, a strided convolution of a 1x1
    map gives the same 1x1 output as an unstrided one, so the net is the same function with the same parameters.
    The reason is numeric: oneDNN's bf16 weight gradient of a stride-2 3x3 convolution over a 1x1 map leaves
    uninitialised memory in the taps that see only padding (found on AMX and AVX-512 BF16 CPUs), and one SGD step
    with it turns the weights into inf or NaN, or not, by what that memory held. The block keeps the shortcut the
    spec's stride gives it (a projection where the stride asks for one), so the parameter count is the spec's."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)


class ResNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = make_stem(spec)
        self.stages = make_stages(spec)
        head: list[nn.Module] = []
        width = spec.stage_widths[-1]
        for hidden in spec.head_hidden:
            head += [nn.Linear(width, hidden), ACTIVATION_MODULES[spec.activation]()]
            width = hidden
        head.append(nn.Linear(width, spec.num_classes))
        self.head = nn.Sequential(*head)
        if spec.logit_scale != 1.0:
            unit_std_(head[-1].weight)

    @property
    def stem_conv(self) -> nn.Conv2d:
        """The first convolution (the one whitening initialises)."""
        return self.stem[0]

    @property
    def classifier(self) -> nn.Linear:
        """The last linear layer, which maps features to class logits."""
        return self.head[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_logits(self.head(global_pool(self.features(x), self.spec)), self.spec)


def global_pool(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(N, C, H, W) -> (N, C). Average: kuangliu's avg_pool2d(out, 4) on a 4x4 map, but valid for any final size."""
    pooled = F.adaptive_max_pool2d(x, 1) if spec.global_pool == "max" else F.adaptive_avg_pool2d(x, 1)
    return pooled.flatten(1)


def scale_logits(logits: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    return logits * spec.logit_scale if spec.logit_scale != 1.0 else logits


@torch.no_grad()
def unit_std_(weight: torch.Tensor) -> None:
    """Classifier weights at unit standard deviation: with logits scaled down (airbench: by 1/width) the default
    initialisation would start the net with near-constant outputs."""
    weight.mul_(1.0 / weight.std())


def build_model(spec: ModelSpec) -> ResNet:
    return ResNet(spec)
