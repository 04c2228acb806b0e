"""The optimiser a config names, over a net's trainable tensors, and the schedule's lr applied to it."""

from __future__ import annotations

import torch

from ..models import ResNet
from .config import Config
from .muon import MuonSGD, muon_param_groups


def make_optimizer(config: Config, model: ResNet) -> torch.optim.Optimizer:
    """The optimiser of ``config`` over ``model``'s trainable tensors. Every param group records its peak lr as
    ``initial_lr``; the schedule scales all of them by the same factor (``set_lr``)."""
    o = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "muon":
        groups = muon_param_groups(model, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, bias_lr=o.bias_lr,
                                   head_lr=o.head_lr, aux_momentum=o.aux_momentum, weight_decay=o.weight_decay)
        optimizer: torch.optim.Optimizer = MuonSGD(groups, lr=o.lr)
    elif o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                    weight_decay=o.weight_decay)
    elif o.name == "adam":
        optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # MuonSGD's groups have it: their lr is a tensor
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float, base_lr: float) -> None:
    """The schedule's ``lr`` for a peak of ``base_lr``, applied to every group in proportion to its own peak (written
    into a tensor lr in place: a captured step reads it there)."""
    for group in optimizer.param_groups:
        value = group["initial_lr"] * lr / base_lr
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
