"""Muon for convolution filters, Nesterov SGD for everything else, as one optimiser (one state_dict, one schedule).

Muon (Jordan et al. 2024) replaces a filter bank's momentum by the nearest semi-orthogonal matrix (all singular
values 1), computed with a few Newton-Schulz iterations, so every direction of the update moves at the same rate.
As in airbench94's Muon recipe, the filters are also rescaled to a fixed norm (sqrt(out channels)) before each
step: with BatchNorm after every convolution the scale of the filters carries no information, and keeping it fixed
keeps the effective step size fixed.

Each group's lr is a 0-d tensor on its tensors' device, not a float: the schedule writes into it (``set_lr``), so a
step captured once as a CUDA graph (train/step.py) reads the current lr at every replay instead of the one it was
captured with. The steps themselves use only tensor arithmetic, with no read back to the host.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..models import ResNet

# Quintic Newton-Schulz coefficients of Jordan et al.: chosen for the fastest growth of small singular values, not
# for exact convergence (the result has singular values in roughly [0.7, 1.2], which Muon does not mind).
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T for the 2-D ``g`` = U S V^T, by ``steps`` Newton-Schulz iterations in bfloat16."""
    if g.dim() != 2:
        raise ValueError(f"orthogonalize needs a matrix, got shape {tuple(g.shape)}")
    a, b, c = _NS_COEFFS
    x = g.to(torch.bfloat16)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):  # x <- a x + (b s + c s^2) x, s = x x^T: two fused multiply-adds, each rounded once
        s = x @ x.T
        x = torch.addmm(x, torch.addmm(s, s, s, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Param groups with ``muon=True`` take Muon steps (no weight decay: the norm is fixed instead); the others take
    Nesterov/heavy-ball SGD steps with (coupled) weight decay, like ``torch.optim.SGD``."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, muon: bool = False, ns_steps: int = 5) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, muon=muon,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:  # noqa: D102 - torch's; the group's lr becomes a tensor
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", float(group["lr"]))  # the peak as given, not its float32 rounding
        self._lr_to_tensor(group)

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102 - torch's; saved lrs come back as tensors
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self._lr_to_tensor(group)

    @staticmethod
    def _lr_to_tensor(group: dict) -> None:
        # float32, as a float lr is used in a float32 step: the updates are bit-identical to those of a float lr
        device = group["params"][0].device if group["params"] else None
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["muon"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if mom:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                    buf.mul_(mom).add_(g)
                    g = g.add(buf, alpha=mom) if nesterov else buf
                if group["muon"]:
                    p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
                    update = orthogonalize(g.reshape(p.shape[0], -1), group["ns_steps"]).view(p.shape)
                    p.addcmul_(update, lr, value=-1)
                else:
                    p.addcmul_(g, lr, value=-1)
        return loss


def muon_param_groups(model: ResNet, *, lr: float, momentum: float, nesterov: bool, bias_lr: float,
                      head_lr: float, aux_momentum: float, weight_decay: float) -> list[dict]:
    """Trainable convolution filters (4-D) -> Muon at ``lr``; the classifier's weight -> SGD at ``head_lr``; every
    other trainable tensor (BatchNorm and stem biases, dense-head layers) -> SGD at ``bias_lr``. ``weight_decay`` is
    the decay per step at the peak lr: group g gets ``weight_decay / lr_g`` (as airbench sets it)."""
    filters, head, rest = [], [], []
    classifier = model.classifier.weight
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.dim() == 4:
            filters.append(p)
        elif p is classifier:
            head.append(p)
        else:
            rest.append(p)
    groups = [dict(params=filters, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0, muon=True)]
    for params, group_lr in ((rest, bias_lr), (head, head_lr)):
        if params:
            groups.append(dict(params=params, lr=group_lr, momentum=aux_momentum, nesterov=aux_momentum > 0,
                               weight_decay=weight_decay / group_lr, muon=False))
    return groups

