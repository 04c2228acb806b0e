"""K members of one spec as one network, so small members use the hardware well.

Every convolution runs with ``groups=K`` over K stacked inputs (the plain blocks with ``groups=K``), every
BatchNorm over K*C channels (per-channel statistics are per-member statistics), and each dense layer as a batched
matmul. Member k owns channel block k of
every layer, so the K networks never mix: trained with the sum of the members' losses, each gets exactly the gradient
it would get alone. ``from_members`` / ``to_members`` convert to and from K plain ResNets.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import ModelSpec, ResNet, build_model
from ..models.builder import ACTIVATION_MODULES, global_pool, make_stages, make_stem, scale_logits, unit_std_


class GroupedLinear(nn.Module):
    """K independent linear layers: (N, K, in) -> (N, K, out)."""

    def __init__(self, k: int, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, fan_out, fan_in))
        self.bias = nn.Parameter(torch.empty(k, fan_out))
        for i in range(k):  # the same initialisation as K nn.Linear layers
            layer = nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                self.weight[i].copy_(layer.weight)
                self.bias[i].copy_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nki,koi->nko", x, self.weight) + self.bias


class GroupedResNet(nn.Module):
    """Input (N, K*3, H, W): member k's images in channels 3k..3k+2. Output (N, K, classes)."""

    def __init__(self, spec: ModelSpec, k: int) -> None:
        super().__init__()
        self.spec, self.k = spec, k
        self.stem = make_stem(spec, groups=k)
        self.stages = make_stages(spec, groups=k)
        width = spec.stage_widths[-1]
        head: list[nn.Module] = []
        for hidden in spec.head_hidden:
            head += [GroupedLinear(k, width, hidden), ACTIVATION_MODULES[spec.activation]()]
            width = hidden
        head.append(GroupedLinear(k, width, spec.num_classes))
        self.head = nn.Sequential(*head)
        if spec.logit_scale != 1.0:
            for i in range(k):  # per member, as K plain nets would start
                unit_std_(head[-1].weight[i])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = global_pool(self.stages(self.stem(x)), self.spec)
        return scale_logits(self.head(x.reshape(x.shape[0], self.k, -1)), self.spec)

    @classmethod
    def from_members(cls, members: list[ResNet]) -> "GroupedResNet":
        spec = members[0].spec
        if any(m.spec != spec for m in members):
            raise ValueError("grouped training needs members of one spec; train different specs one after another")
        grouped = cls(spec, len(members))
        states = [m.state_dict() for m in members]
        merged = {}
        for name, tensor in grouped.state_dict().items():
            parts = [s[name] for s in states]
            if name.endswith("num_batches_tracked"):
                merged[name] = parts[0]
            elif tensor.dim() in (2, 3):  # GroupedLinear: one slice per member
                merged[name] = torch.stack(parts)
            else:  # conv and BatchNorm: member k owns block k of the output channels
                merged[name] = torch.cat(parts)
        grouped.load_state_dict(merged)
        return grouped

    def member_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.k)]
        for name, tensor in self.state_dict().items():
            for i in range(self.k):
                if name.endswith("num_batches_tracked"):
                    out[i][name] = tensor.clone()
                elif tensor.dim() in (2, 3):
                    out[i][name] = tensor[i].clone()
                else:
                    out[i][name] = tensor.chunk(self.k)[i].clone()
        return out

    def to_members(self) -> list[ResNet]:
        members = []
        for state in self.member_state_dicts():
            model = build_model(self.spec)
            model.load_state_dict(state)
            members.append(model)
        return members
